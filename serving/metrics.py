"""Prometheus metrics (one registry per app: tests build many apps in one process), and the
outermost middleware that counts, times and logs every request by its route template.

Logs and metrics name a request by its route *template* (`/v1/visitors/{token}/recommendations`),
never its path: a path carries the visitor's token. The same middleware is the last resort
for an unhandled exception: it logs the exception's type and the template (exception text may
quote request data) and answers a JSON 500, so nothing further up logs a traceback.
"""
from __future__ import annotations

import logging
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from wenlv.serving.guard import send_json

access_log = logging.getLogger("wenlv.serving.access")
log = logging.getLogger(__name__)
UNMATCHED = "unmatched"


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("wenlv_http_requests_total", "HTTP requests", ["route", "method", "status"], registry=self.registry)
        self.latency = Histogram("wenlv_http_request_seconds", "HTTP request latency", ["route"], registry=self.registry,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 1.0))
        self.recommendations = Counter("wenlv_recommendations_total", "recommendation lists served",
                                       ["strategy", "degraded"], registry=self.registry)
        self.model_info = Gauge("wenlv_model_info", "current model version (1 = serving)", ["version"], registry=self.registry)
        self.swaps = Counter("wenlv_model_swaps_total", "model versions swapped in", registry=self.registry)
        self.served_lists_dropped = Counter("wenlv_served_lists_dropped_total", "served lists not kept in the ledger",
                                            ["reason"], registry=self.registry)
        self.rate_limited = Counter("wenlv_rate_limited_total", "requests refused 429 by a rate limit (per key or "
                                    "per tenant), by the key's role", ["role"], registry=self.registry)
        self.store_up = Gauge("wenlv_online_store_available", "1 when the online store answers", registry=self.registry)
        self._recommendation_children: dict = {}

    def recommendation_counter(self, strategy: str, degraded: bool):
        """The counter child for one (strategy, degraded), resolved once."""
        key = (strategy, degraded)
        child = self._recommendation_children.get(key)
        if child is None:
            child = self._recommendation_children[key] = self.recommendations.labels(strategy, str(degraded).lower())
        return child


def route_template(scope) -> str:
    """The matched route's template (no token, no id), or "unmatched"."""
    route = scope.get("route")
    return getattr(route, "path", UNMATCHED)


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): count, time and log every request; answer 500 to
    anything unhandled."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics
        self._latency: dict = {}   # route -> histogram child: labels() resolved once, not per request
        self._requests: dict = {}  # (route, method, status) -> counter child

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message):
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the last resort: log without request data, answer 500
            log.error("unhandled %s on %s %s", type(exc).__name__, scope.get("method", ""), route_template(scope))
            status = 500
            if not response_started:
                await send_json(send, 500, {"error": "internal_error", "message": "internal error; it has been logged"})
        finally:
            name = route_template(scope)
            elapsed = time.perf_counter() - started
            latency = self._latency.get(name)
            if latency is None:
                latency = self._latency[name] = self.metrics.latency.labels(name)
            latency.observe(elapsed)
            key = (name, scope.get("method", ""), status)
            counter = self._requests.get(key)
            if counter is None:
                counter = self._requests[key] = self.metrics.requests.labels(name, key[1], str(status))
            counter.inc()
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("%s %s %d %.1f ms", scope.get("method", ""), name, status, elapsed * 1000)
