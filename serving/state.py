"""Application state shared by routers: the current model (one reference, swapped
atomically), the online store, the API keys and the metrics registry.

Routers get the model with the `get_model` dependency: it reads the reference once, so
one request works against one version from start to end.
"""
from __future__ import annotations

import threading

from fastapi import Request

from wenlv.serving.auth import ApiError
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore
from wenlv.serving.reclog import RecommendationLog

__all__ = ["ServingState", "ServingModel", "current_model", "get_model", "get_state"]


class ServingState:
    def __init__(self, store: ResilientStore | None = None, model: ServingModel | None = None):
        self.store = store
        self.rec_log = RecommendationLog(store.store, reader=store) if store is not None else None
        self._model = model
        self._swap_lock = threading.Lock()
        self.swaps = 0
        self.load_error: str | None = None  # why the last version the lifecycle tried is not served (readyz)
        self.load_failures: dict[str, int] = {}  # reason -> versions refused at load (wenlv_model_load_failures_total)

    @property
    def model(self) -> ServingModel | None:
        return self._model

    def count_load_failure(self, reason: str) -> None:
        with self._swap_lock:
            self.load_failures[reason] = self.load_failures.get(reason, 0) + 1

    def swap(self, model: ServingModel) -> ServingModel | None:
        """Make `model` current; returns the previous one. The model must be fully built."""
        with self._swap_lock:
            previous, self._model = self._model, model
            self.swaps += 1
        return previous


async def get_state(request: Request) -> ServingState:
    return request.app.state.serving


def current_model(request: Request) -> ServingModel:
    """The current model version (503 while none is loaded); read once per request."""
    model = request.app.state.serving.model
    if model is None:
        raise ApiError(503, "not_ready", "no model version is loaded yet")
    return model


async def get_model(request: Request) -> ServingModel:
    """Dependency: `current_model`."""
    return current_model(request)
