"""GET /v1/visitors/{token}/recommendations and the lookup of a served list."""
from __future__ import annotations

import logging
import re
import time
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import QueryParams

from wenlv.serving.answer_json import answer_bytes
from wenlv.serving.auth import OPENAPI_SECURITY, PRINCIPAL, ApiError, Principal, allowed_roles, authorize, require_role
from wenlv.serving.database import served_lists_writer
from wenlv.serving.direct_route import DirectRoute
from wenlv.serving.filters import Filters, now_minute
from wenlv.serving.holdout import TREATMENT, surface_arm
from wenlv.serving.schemas import (ERROR_RESPONSES, TOKEN_DESCRIPTION, TOKEN_PATTERN, Category, RecommendationResponse,
                                   StoredRecommendation)
from wenlv.serving.state import current_model

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["recommendations"])
VISITOR_APP = allowed_roles("visitor-app")

_NEAR = re.compile(r"^\s*(-?\d{1,3}(?:\.\d+)?)\s*,\s*(-?\d{1,3}(?:\.\d+)?)\s*$")
_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$"

class RecommendationQuery(BaseModel):
    """The query of a recommendation request, validated as one model: FastAPI's per-parameter work for nine
    separate query parameters was the largest share of the route's CPU. Frozen: parsed queries are shared."""

    model_config = ConfigDict(frozen=True)

    k: int = Field(10, ge=1, le=100, description="how many POIs")
    exclude_visited: bool = Field(True, description="leave out POIs the visitor has visited")
    personalized: bool = Field(True, description="false: a non-personalised list on the visitor's request")
    category: Category | None = Field(None, description="only POIs of this category")
    city: str | None = Field(None, max_length=64, description="only POIs in this city")
    near: str | None = Field(None, examples=["30.25,120.17"], json_schema_extra={"pattern": _NEAR.pattern},  # the route's own message
                             description="`lat,lon` in degrees (lat in [-90, 90], lon in [-180, 180], else 422): "
                                         "only POIs within radius_km of it")
    radius_km: float | None = Field(None, gt=0, le=500, description="radius around `near` (default 5 km); "
                                                                    "only with `near` (else 422)")
    open_now: bool = Field(False, description="only POIs open now (Asia/Shanghai), or at `at`")
    at: str | None = Field(None, pattern=_HHMM, description="local time HH:MM for open_now (default: now); "
                                                            "only with open_now=true (else 422)")

    def filters(self) -> Filters:
        """The POI filters, or ApiError 422 naming what does not fit together."""
        point = None
        if self.near is not None:
            m = _NEAR.match(self.near)
            if not m:
                raise ApiError(422, "invalid_request", f"near must be 'lat,lon' in degrees, got {self.near[:40]!r}")
            lat, lon = float(m.group(1)), float(m.group(2))
            if not (-90 <= lat <= 90 and -180 <= lon <= 180):
                raise ApiError(422, "invalid_request",
                               f"near is out of range: lat {lat} must be in [-90, 90], lon {lon} in [-180, 180]")
            point = (lat, lon)
        elif self.radius_km is not None:
            raise ApiError(422, "invalid_request", "radius_km needs near=lat,lon")
        minute = None
        if self.open_now:
            minute = int(self.at[:2]) * 60 + int(self.at[3:]) if self.at else now_minute()
        elif self.at is not None:
            raise ApiError(422, "invalid_request", "at only applies with open_now=true")
        if point is None and minute is None and self.category is None and self.city is None:
            return NO_FILTERS
        return Filters(category=self.category, city=self.city, near=point, radius_km=self.radius_km,
                       open_at_minute=minute)


NO_FILTERS = Filters()


def parse_query(request: Request) -> RecommendationQuery:
    """The query string as a RecommendationQuery in one pydantic call; errors as FastAPI's 422."""
    return _parsed(request.scope["query_string"])


@lru_cache(maxsize=512)  # apps send a handful of distinct query strings: parse each once (an error is not cached)
def _parsed(query_string: bytes) -> RecommendationQuery:
    try:
        return RecommendationQuery.model_validate(dict(QueryParams(query_string)))
    except ValidationError as exc:
        raise RequestValidationError([{**e, "loc": ("query", *e["loc"])} for e in exc.errors(include_url=False)]) from None


def query_parameters_openapi(model: type[BaseModel]) -> list[dict]:
    """The model's fields as OpenAPI query parameters (the route parses the query itself, so FastAPI cannot see them)."""
    schema = model.model_json_schema()
    params = []
    for name, prop in schema["properties"].items():
        prop = dict(prop)
        description = prop.pop("description", None)
        examples = prop.pop("examples", None)
        param = {"name": name, "in": "query", "required": False, "schema": prop}
        if description:
            param["description"] = description
        if examples:
            param["example"] = examples[0]
        params.append(param)
    return params


async def recommendations(
    request: Request,
    token: Annotated[str, Path(pattern=TOKEN_PATTERN, description=TOKEN_DESCRIPTION)],
) -> RecommendationResponse:
    # The hot route (a DirectRoute: FastAPI validates the token and calls this, no dependency solving): the key, the
    # query and the model by plain calls, not dependencies and per-parameter validation (those were over half of the
    # route's CPU, measured with cProfile); the same rules and errors.
    principal = authorize(request.scope.get(PRINCIPAL), VISITOR_APP)
    query = parse_query(request)
    model = current_model(request)
    arm = surface_arm(token)  # the holdout gets the non-personalised list, whatever it asked for
    rec = model.recommend(token, k=query.k, filters=query.filters(), exclude_visited=query.exclude_visited,
                          personalized=query.personalized and arm == TREATMENT)
    degraded = rec.degraded
    state = request.app.state.serving
    if state.rec_log is not None:  # written off the request path, in batches, to the store and the ledger
        poi_ids = model.table.poi_ids
        state.rec_log.attach_ledger(lambda: served_lists_writer(request.app))
        state.rec_log.add(principal.tenant, rec.recommendation_id, {
            "recommendation_id": rec.recommendation_id, "model_version": model.version, "strategy": rec.strategy,
            "personalized": rec.personalized, "poi_ids": [str(poi_ids[i]) for i in rec.ids.tolist()], "token": token,
            "arm": arm, "created_at": time.time()})
    request.app.state.metrics.recommendation_counter(rec.strategy, degraded).inc()
    # Bytes from the model's per-POI JSON pieces (serving.answer_json): the response model documents the shape;
    # re-validating it per request cost ~0.3 ms, building and encoding the item dicts ~60 µs.
    return Response(answer_bytes(model.item_json, rec.ids, rec.scores, rec.reasons, {
        "model_version": model.version, "recommendation_id": rec.recommendation_id, "degraded": degraded,
        "personalized": rec.personalized, "strategy": rec.strategy, "arm": arm}), media_type="application/json")


@router.get(
    "/recommendations/{recommendation_id}",
    response_model=StoredRecommendation,
    summary="a list served earlier, for the tenant that asked for it",
    responses={**ERROR_RESPONSES, 404: {"description": "unknown id, expired, or another tenant's"},
               503: {"description": "the online store is unavailable"}},
)
def stored_recommendation(
    request: Request,
    recommendation_id: str = Path(..., pattern=r"^[0-9a-f]{32}$"),
    principal: Principal = Depends(require_role("visitor-app", "marketer", "analyst")),
) -> StoredRecommendation:
    state = request.app.state.serving
    if state.rec_log is None:
        raise ApiError(404, "not_found", f"recommendation {recommendation_id} not found")
    try:
        found = state.rec_log.get(principal.tenant, recommendation_id)
    except Exception:  # noqa: BLE001 - the store is down: say so, as a 503
        raise ApiError(503, "store_unavailable", "the online store is unavailable; try again shortly", {"Retry-After": "1"})
    if found is None:  # another tenant's id is indistinguishable from an unknown one
        raise ApiError(404, "not_found", f"recommendation {recommendation_id} not found")
    return StoredRecommendation(**{k: v for k, v in found.items() if k != "token"})


def add_hot_route(app_router: APIRouter) -> None:
    """Add GET /v1/visitors/{token}/recommendations to the app's own router, ahead of the included ones: FastAPI
    matches a route of an included router twice per request (and /healthz's router after every other one)."""
    app_router.add_api_route(
        router.prefix + "/visitors/{token}/recommendations",
        recommendations,
        methods=["GET"],
        route_class_override=DirectRoute,  # no dependency solving: the hot route checks the key and query itself
        tags=router.tags,
        response_model=RecommendationResponse,
        summary="top-k POIs for a visitor",
        description="Personalised from the visitor's factors when known; a new token gets cold-start results "
                    "(side-feature tower, else popularity in context). `personalized=false` returns a list that uses "
                    "nothing about the visitor (PIPL art. 24); visit exclusion then does not apply.",
        responses=ERROR_RESPONSES,
        openapi_extra={"parameters": query_parameters_openapi(RecommendationQuery), "security": OPENAPI_SECURITY},
    )
