"""Request and response models of the /v1 API (OpenAPI is generated from these)."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from wenlv.features.contracts import POI_CATEGORIES
from wenlv.privacy.tokens import VISITOR_TOKEN_PATTERN

Category = Literal[POI_CATEGORIES]  # type: ignore[valid-type]
TOKEN_PATTERN = VISITOR_TOKEN_PATTERN  # THE token format (privacy/tokens.py): a phone number in any spelling fails it
TOKEN_DESCRIPTION = "pseudonymous visitor token: 32 lowercase hex digits (never a phone number)"
TOKEN_MESSAGE = "the visitor token must be 32 lowercase hex digits (the pseudonymous token, never a phone number)"
Strategy = Literal["als", "cold_start_tower", "popularity"]


class ErrorResponse(BaseModel):
    """Every error, 4xx and 5xx alike."""

    error: str = Field(description="machine-readable code, e.g. unauthorized, forbidden, invalid_request, not_found")
    message: str = Field(description="what was wrong, for a human")
    details: list[dict] | None = Field(default=None, description="per-field problems of an invalid request")


ERROR_RESPONSES = {
    400: {"model": ErrorResponse, "description": "the body is not parseable JSON"},
    401: {"model": ErrorResponse, "description": "missing or unknown API key"},
    403: {"model": ErrorResponse, "description": "the key's role may not call this route"},
    422: {"model": ErrorResponse, "description": "invalid request parameters"},
    429: {"model": ErrorResponse, "description": "over the key's or the tenant's rate limit: retry after the "
                                                 "`Retry-After` header's seconds",
          "headers": {"Retry-After": {"description": "whole seconds to wait", "schema": {"type": "integer"}}}},
}


class RecommendedPoi(BaseModel):
    poi_id: str
    name: str
    category: str
    city: str
    score: float = Field(description="model score (inner product), or normalised popularity when not personalised")
    reason: str = Field(description="why this POI, e.g. the visited POI it resembles most")


class RecommendationResponse(BaseModel):
    items: list[RecommendedPoi]
    model_version: str
    recommendation_id: str = Field(description="quote it in events (impression, click, booking) for attribution")
    degraded: bool = Field(description="the online store was unavailable: answered from the in-process model and popularity")
    personalized: bool = Field(description="whether the list uses anything about this visitor")
    strategy: Strategy = Field(description="als: own factors; cold_start_tower: from side features; popularity: not personal")
    arm: Literal["treatment", "holdout"] = Field(description="holdout: this visitor is in the recommendation surface's "
                                                             "random holdout and gets the non-personalised list")


class StoredRecommendation(BaseModel):
    recommendation_id: str
    model_version: str
    strategy: Strategy
    personalized: bool
    poi_ids: list[str]
    created_at: float
    arm: Literal["treatment", "holdout"] = "treatment"


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    model_version: str | None
    store: str = Field(description="the online store's kind (redis, sqlite); with an admin key also its file or host")
    store_available: bool
    load_error: str | None = Field(None, description="why the champion version last tried is not served (a refused "
                                                     "or failed load; the version shown keeps serving)")
