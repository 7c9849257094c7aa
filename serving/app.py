"""The FastAPI app factory: routers under /v1, JSON errors, metrics, model lifecycle.

`create_app(state, keys)` wires a ready `ServingState` (model + online store) and a
`KeyStore`; `serving.cli` builds those from a bundle directory or the MLflow champion.
Middleware, outermost first: metrics and the access log (`serving.metrics`), then the door
(`serving.guard`: key, body size and body deadline) before FastAPI reads anything.
"""
from __future__ import annotations

import gc
import threading
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from wenlv.serving.auth import ROLES, ApiError, KeyStore
from wenlv.serving.guard import RequestGuard
from wenlv.serving.metrics import Metrics, MetricsMiddleware
from wenlv.serving.ratelimit import RateLimiter
from wenlv.serving.routers import analytics, campaigns, dashboard, events, health, itineraries, recommendations
from wenlv.serving.schemas import TOKEN_MESSAGE
from wenlv.serving.solver_pool import SolverPool
from wenlv.serving.state import ServingState
from wenlv.settings import get_settings

DESCRIPTION = """Wenlv serving API: POI recommendations for visitors, itineraries, and campaigns for marketers.

Every route under `/v1` needs `Authorization: Bearer <API key>`; a key has a role
(visitor-app, marketer, analyst, admin) and a tenant. Errors are JSON
`{"error": code, "message": text}`."""


def create_app(state: ServingState, keys: KeyStore, *, lifecycle=None, db=None) -> FastAPI:
    """The app over `state` (current model + store); `lifecycle` (a ChampionFollower) is started and stopped with it;
    `db` is the campaign database engine (default: made from the settings on first use)."""
    settings = get_settings()
    solver = SolverPool(settings.itinerary_workers, settings.itinerary_queue)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if lifecycle is not None:
            lifecycle.start()
        threading.Thread(target=solver.warm, name="solver-warm-up", daemon=True).start()  # readiness does not wait
        # What start-up built (modules, model, app) goes to the permanent generation, so a full collection
        # no longer walks it: under load each uvicorn worker otherwise paused 0.8-1.8 s in a gen-2 collection
        # in its first seconds (bench events, GC callbacks), and none with the freeze. Undone at shutdown.
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            if lifecycle is not None:
                lifecycle.stop()
            solver.close()
            if state.rec_log is not None:
                state.rec_log.close()

    # No OpenTelemetry (Prometheus is the service's telemetry): FastAPI would otherwise look for providers per request.
    app = FastAPI(title="Wenlv", version="1.0", description=DESCRIPTION, lifespan=lifespan,
                  telemetry={"tracing": False, "metrics": False, "logs": False})
    metrics = Metrics()
    app.state.serving, app.state.keys, app.state.metrics, app.state.db = state, keys, metrics, db
    if state.model is not None:
        metrics.model_info.labels(state.model.version).set(1)
    app.state.solver = solver
    limiter = RateLimiter(settings.rate_limit_key, settings.rate_limit_tenant, settings.rate_limit_burst_s, ROLES,
                          on_refused=lambda role: metrics.rate_limited.labels(role).inc())
    app.add_middleware(RequestGuard, keys=keys, max_body_bytes=settings.max_body_bytes,
                       body_timeout_s=settings.body_timeout_s, limiter=limiter if limiter.limited_roles else None)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: refusals are counted too
    _install_error_handlers(app)

    recommendations.add_hot_route(app.router)  # matched before any included router
    for module in (recommendations, itineraries, campaigns, events, analytics, dashboard, health):
        app.include_router(module.router)
    return app


def _error(status: int, code: str, message: str, details=None, headers=None) -> JSONResponse:
    body = {"error": code, "message": message}
    if details is not None:
        body["details"] = details
    return JSONResponse(body, status_code=status, headers=headers)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def api_error(_request: Request, exc: ApiError):
        return _error(exc.status, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, exc: RequestValidationError):
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": _message(e), "type": str(e.get("type", ""))}
                   for e in exc.errors()]
        where = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
        return _error(422, "invalid_request", f"invalid request: {where}", details)

    @app.exception_handler(DataError)
    async def unstorable(_request: Request, exc: DataError):
        # e.g. a NUL character, which PostgreSQL text cannot hold; the transaction was rolled back, nothing stored
        return _error(422, "invalid_request", "invalid request: a value the database cannot store "
                                              "(e.g. a NUL character in a text field); nothing was stored")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                413: "payload_too_large"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))
    # Anything else is answered 500 (and logged without request data) by MetricsMiddleware.


def _message(error: dict) -> str:
    """A validation error's text; a token that is not one gets the token rule (pydantic would quote the regex)."""
    loc = error.get("loc", ())
    if error.get("type") == "string_pattern_mismatch" and loc and loc[-1] == "token":
        return TOKEN_MESSAGE
    return str(error.get("msg", ""))
