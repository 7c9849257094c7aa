"""The FastAPI app factory: routers under /v1, JSON errors, metrics, model lifecycle.

`create_app(state, keys)` wires a ready `ServingState` (model + online store) and a
`KeyStore`; `serving.cli` builds those from a bundle directory or the MLflow champion.
The itinerary router (`serving.routers.itineraries`) is included when it exists.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from wenlv.serving.auth import ApiError, KeyStore
from wenlv.serving.guard import RequestGuard
from wenlv.serving.metrics import Metrics, MetricsMiddleware
from wenlv.serving.state import ServingState
from wenlv.settings import get_settings

log = logging.getLogger(__name__)


DESCRIPTION = """Wenlv serving API: POI recommendations for visitors, itineraries, and campaigns for marketers.

Every route under `/v1` needs `Authorization: Bearer <API key>`; a key has a role
(visitor-app, marketer, analyst, admin) and a tenant. Errors are JSON
`{"error": code, "message": text}`."""


def create_app(state: ServingState, keys: KeyStore, *, lifecycle=None, db=None) -> FastAPI:
    """The app over `state` (current model + store); `lifecycle` (a ChampionFollower) is started and stopped with it;
    `db` is the campaign database engine (default: made from the settings on first use)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if lifecycle is not None:
            lifecycle.start()
        try:
            yield
        finally:
            if lifecycle is not None:
                lifecycle.stop()
            if state.rec_log is not None:
                state.rec_log.close()

    app = FastAPI(title="Wenlv", version="1.0", description=DESCRIPTION, lifespan=lifespan)
    metrics = Metrics()
    app.state.serving, app.state.keys, app.state.metrics, app.state.db = state, keys, metrics, db
    if state.model is not None:
        metrics.model_info.labels(state.model.version).set(1)
    settings = get_settings()
    app.add_middleware(RequestGuard, keys=keys, max_body_bytes=settings.max_body_bytes,
                       body_timeout_s=settings.body_timeout_s)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: refusals are counted too
    _install_error_handlers(app)

    from wenlv.serving.routers import campaigns, events, health, itineraries, recommendations
    from wenlv.serving.routers import dashboard  # the analyst page and its login

    for module in (health, recommendations, itineraries, campaigns, events):
        app.include_router(module.router)
    from wenlv.serving.routers import analytics  # the analysts' routes (ledger)
    app.include_router(analytics.router)
    app.include_router(dashboard.router)
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
        details = [{"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
                   for e in exc.errors()]
        where = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details[:5])
        return _error(422, "invalid_request", f"invalid request: {where}", details)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 408: "request_timeout",
                413: "payload_too_large"}.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        # Log the type and route only: exception text may quote request data.
        log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
        return _error(500, "internal_error", "internal error; it has been logged")
