"""Liveness, readiness and metrics: the only routes without an API key."""
from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from wenlv.serving.auth import PRINCIPAL
from wenlv.serving.online_store import StoreUnavailable
from wenlv.serving.schemas import Health, Readiness

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="the process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, summary="a model is loaded (503 until then)",
            responses={503: {"model": Readiness, "description": "no model loaded yet"}})
def readyz(request: Request):
    state = request.app.state.serving
    model = state.model
    store_ok = False
    if state.store is not None:
        try:
            store_ok = bool(state.store.ping())
        except StoreUnavailable:
            store_ok = False
    request.app.state.metrics.store_up.set(1 if store_ok else 0)
    principal = request.scope.get(PRINCIPAL)
    if state.store is None:
        store = "none"
    elif principal is not None and principal.role == "admin":
        store = state.store.describe()  # the file path or Redis host: for operators only
    else:
        store = state.store.backend
    load_error = state.load_error
    if load_error and (principal is None or principal.role != "admin"):
        load_error = "a model version was refused at load (details for admin keys)"
    body = Readiness(status="ready" if model else "not_ready", model_version=model.version if model else None,
                     store=store, store_available=store_ok, load_error=load_error)
    return JSONResponse(body.model_dump(), status_code=200 if model else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    registry = request.app.state.metrics
    registry.refresh(request.app.state.serving)
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
