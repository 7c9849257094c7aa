"""Prometheus metrics (one registry per app: tests build many apps in one process), and the
outermost middleware that counts, times and logs every request by its route template.

Logs and metrics name a request by its route *template* (`/v1/visitors/{token}/recommendations`),
never its path: a path carries the visitor's token. The same middleware is the last resort
for an unhandled exception: it logs the exception's type and the template (exception text may
quote request data) and answers a JSON 500, so nothing further up logs a traceback.
Every request gets an id (the caller's X-Request-ID when it is a short safe string, else a new one), echoed in the
answer's X-Request-ID and carried by every log line written for the request (`serving.logs`).
"""
from __future__ import annotations

import logging
import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from wenlv.ledger.served import NOT_A_TOKEN, QUEUE_FULL, SHUTDOWN
from wenlv.serving.auth import ROLES
from wenlv.serving.guard import send_json
from wenlv.serving.logs import ACCESS_LOGGER, REQUEST_ID_HEADER, accepted_request_id, request_id, traceback_without_data

access_log = logging.getLogger(ACCESS_LOGGER)
log = logging.getLogger(__name__)
UNMATCHED = "unmatched"
LOAD_FAILURE_REASONS = ("integrity", "load", "build")  # see lifecycle.ChampionFollower._failed
CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open fds: leaks show here
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
        self.model_load_failures = Counter("wenlv_model_load_failures_total", "champion versions refused at load",
                                           ["reason"], registry=self.registry)
        self.store_circuit = Gauge("wenlv_online_store_circuit_state",
                                   "online store circuit breaker: 0 closed, 1 half-open (next call is a trial), 2 open",
                                   registry=self.registry)
        self.solver_seconds = Histogram("wenlv_itinerary_solve_seconds", "itinerary solve time in the solver pool",
                                        registry=self.registry, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
        self.events = Counter("wenlv_events_total", "events posted, by outcome: accepted (stored now), duplicate "
                              "(a retry, already stored) or rejected (bad field)", ["outcome"], registry=self.registry)
        self._event_children = {outcome: self.events.labels(outcome) for outcome in ("accepted", "duplicate", "rejected")}
        for reason in (QUEUE_FULL, NOT_A_TOKEN, SHUTDOWN):  # every series exists from the start: rate() needs a 0
            self.served_lists_dropped.labels(reason)
        for role in ROLES:
            self.rate_limited.labels(role)
        for reason in LOAD_FAILURE_REASONS:
            self.model_load_failures.labels(reason)
        self._recommendation_children: dict = {}
        self._counted = {"swaps": 0}  # what of the serving state's counts the counters already hold
        self._refreshing = threading.Lock()  # two scrapes at once (the route runs in the thread pool) count once

    def count_events(self, accepted: int, duplicates: int, rejected: int) -> None:
        for outcome, n in (("accepted", accepted), ("duplicate", duplicates), ("rejected", rejected)):
            if n:
                self._event_children[outcome].inc(n)

    def refresh(self, state) -> None:
        """Bring the state-derived series up to date (called by the /metrics route, so a scrape always shows the
        version serving now, the swaps and refusals of the champion follower and the store's circuit)."""
        with self._refreshing:
            self._refresh(state)

    def _refresh(self, state) -> None:
        version = state.model.version if state.model is not None else None
        shown = self._counted.get("version")
        if version != shown:  # never cleared in between: a scrape running now sees the old or the new version
            if version is not None:
                self.model_info.labels(version).set(1)
            for old in {x.labels["version"] for x in self.model_info.collect()[0].samples} - {version}:
                self.model_info.remove(old)  # the app factory's start-up version included
            self._counted["version"] = version
        swaps = state.swaps
        if swaps > self._counted["swaps"]:
            self.swaps.inc(swaps - self._counted["swaps"])
            self._counted["swaps"] = swaps
        for reason, n in list(state.load_failures.items()):
            seen = self._counted.get(("load", reason), 0)
            if n > seen:
                self.model_load_failures.labels(reason).inc(n - seen)
                self._counted[("load", reason)] = n
        if state.store is not None:
            self.store_circuit.set(CIRCUIT_STATES[state.store.circuit_state])

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
        rid = accepted_request_id(_header(scope, b"x-request-id"))
        rid_header = (REQUEST_ID_HEADER.encode(), rid.encode())
        rid_token = request_id.set(rid)

        async def send_wrapper(message):
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status, response_started = message["status"], True
                message = {**message, "headers": [*message.get("headers", ()), rid_header]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:  # noqa: BLE001 - the last resort: log without request data, answer 500
            log.error("unhandled %s on %s %s (request %s)\n%s", type(exc).__name__, scope.get("method", ""),
                      route_template(scope), rid, traceback_without_data(exc))
            status = 500
            if not response_started:
                await send_json(send, 500, {"error": "internal_error",
                                            "message": f"internal error; it has been logged as request {rid}"},
                                [rid_header])
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
                access_log.info("%s %s %d %.1f ms %s", scope.get("method", ""), name, status, elapsed * 1000, rid)
            request_id.reset(rid_token)


def _header(scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
