"""Prometheus metrics, one registry per app (tests build many apps in one process)."""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
        self.store_up = Gauge("wenlv_online_store_available", "1 when the online store answers", registry=self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware): count and time every request."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "unmatched")
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)
            self.metrics.requests.labels(name, scope.get("method", ""), str(status["code"])).inc()
