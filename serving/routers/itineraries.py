"""POST /v1/itineraries: a multi-day plan over the current model's POIs.

Scores come from the visitor's factors when a token is given and `personalized` is true;
otherwise from popularity (PIPL art. 24: nothing about the person is used). Stated
interests (categories) lift those categories either way. The plan itself is solved by
itinerary.planner; a request no plan can satisfy is answered 422 with the reason.
"""
from __future__ import annotations

import datetime as dt
import logging
import re
import time
import uuid
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator, model_validator

from wenlv.itinerary.planner import PACE_STOPS, InfeasibleRequest, PlanRequest, hhmm_to_minutes, plan
from wenlv.serving.auth import Principal, require_role
from wenlv.serving.online_store import StoreUnavailable
from wenlv.serving.schemas import ERROR_RESPONSES, TOKEN_DESCRIPTION, TOKEN_PATTERN, Category, ErrorResponse
from wenlv.serving.state import ServingModel, get_model
from wenlv.settings import get_settings

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1", tags=["itineraries"])

_HHMM = r"^([01]\d|2[0-3]):[0-5]\d$|^24:00$"
INTEREST_LIFT = 0.5  # added to scores scaled to [0, 1] for a stated interest


class Location(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class ItineraryRequest(BaseModel):
    token: str | None = Field(None, pattern=TOKEN_PATTERN, description=TOKEN_DESCRIPTION)
    interests: list[Category] = Field(default_factory=list, max_length=7, description="categories the visitor asks for")
    city: str = Field(min_length=1, max_length=64)
    start_date: dt.date
    days: int = Field(1, ge=1, le=7)
    daily_hours: tuple[str, str] = Field(("09:00", "21:00"), description="start and end of each day, local HH:MM")
    start_location: Location = Field(description="hotel or starting point; each day starts and ends here")
    end_location: Location | None = Field(None, description="where each day ends (default: start_location)")
    travel_mode: Literal["walk", "transit", "drive"] = "transit"
    pace: Literal["relaxed", "moderate", "packed"] | int = Field("moderate", description="sights per day: a name or 1-10")
    budget_cny: float | None = Field(None, ge=0, le=1e7, description="total spend on tickets and meals for the trip")
    must_include: list[str] = Field(default_factory=list, max_length=20)
    exclude: list[str] = Field(default_factory=list, max_length=500)
    personalized: bool = Field(True, description="false: use nothing about the visitor (PIPL art. 24)")
    meals: bool = Field(True, description="plan lunch (11:00-13:30) and dinner (17:30-20:00) at restaurants")
    seed: int = Field(0, ge=0, le=2**31 - 1)

    @field_validator("daily_hours")
    @classmethod
    def _hours(cls, value: tuple[str, str]) -> tuple[str, str]:
        for v in value:
            if not re.match(_HHMM, v):
                raise ValueError(f"daily_hours must be HH:MM, got {v[:10]!r}")
        if hhmm_to_minutes(value[1]) <= hhmm_to_minutes(value[0]):
            raise ValueError("daily_hours end must be after start")
        return value

    @field_validator("start_date")
    @classmethod
    def _date(cls, value: dt.date) -> dt.date:
        if not dt.date(2000, 1, 1) <= value <= dt.date(2100, 12, 31):
            raise ValueError("start_date must be between 2000-01-01 and 2100-12-31")
        return value

    @field_validator("pace")
    @classmethod
    def _pace(cls, value):
        if isinstance(value, int) and not 1 <= value <= 10:
            raise ValueError("pace as a number must be 1-10 sights per day")
        return value

    @model_validator(mode="after")
    def _ids(self):
        for name in ("must_include", "exclude"):
            for v in getattr(self, name):
                if not 0 < len(v) <= 64:
                    raise ValueError(f"{name}: POI ids are 1-64 characters")
        return self


class Stop(BaseModel):
    poi_id: str
    name: str
    category: str
    kind: Literal["visit", "meal"]
    arrive: str = Field(description="HH:MM arrival")
    start: str = Field(description="HH:MM start of the visit (after any wait for opening)")
    depart: str = Field(description="HH:MM departure")
    travel_minutes: int = Field(description="travel from the previous stop (or the start location)")
    cost: float = Field(description="CNY")
    score: float


class DayTotals(BaseModel):
    stops: int
    sights: int
    meals: int
    cost_cny: float
    travel_minutes: int
    score: float


class Day(BaseModel):
    day: int
    date: dt.date
    stops: list[Stop]
    return_travel_minutes: int
    end_arrive: str
    totals: DayTotals


class ItineraryResponse(BaseModel):
    recommendation_id: str
    model_version: str
    personalized: bool
    strategy: str
    city: str
    days: list[Day]
    totals: DayTotals
    solver: dict


def _infeasible(exc: InfeasibleRequest) -> JSONResponse:
    return JSONResponse({"error": exc.code, "message": exc.reason, "details": [exc.detail] if exc.detail else None},
                        status_code=422)


def _scores(model: ServingModel, body: ItineraryRequest, rows: np.ndarray) -> tuple[np.ndarray, bool, str]:
    if body.token is not None and body.personalized:
        scores, personal, strategy = model.poi_scores(body.token, True)
    else:
        scores, personal, strategy = model.poi_scores(body.token or "anonymous", False)
    scores = np.asarray(scores, dtype=float)[rows]
    if body.interests and len(scores):
        lo, hi = scores.min(), scores.max()
        scaled = (scores - lo) / (hi - lo) if hi > lo else np.ones_like(scores)
        cats = model.table.categories[rows]
        scores = scaled + INTEREST_LIFT * np.isin(cats, list(body.interests))
    return scores, personal, strategy


@router.post(
    "/itineraries",
    response_model=ItineraryResponse,
    summary="a multi-day itinerary for a visitor",
    description="One route per day from the start location and back, within opening hours, visit durations, "
                "travel times, the budget and the pace, with lunch and dinner at restaurants. Answers 422 with "
                "the reason when no plan can satisfy the request (nothing open, budget too small, a must-include "
                "that cannot fit).",
    responses={**ERROR_RESPONSES, 503: {"model": ErrorResponse,
                                        "description": "every solver slot is taken (see Retry-After)"}},
)
async def create_itinerary(
    request: Request,
    body: ItineraryRequest,
    principal: Principal = Depends(require_role("visitor-app")),
    model: ServingModel = Depends(get_model),
):
    rows = model.table.rows_in_city(body.city)
    if len(rows) == 0:
        known = sorted(set(model.table.cities.tolist()))[:20]
        return _infeasible(InfeasibleRequest("unknown_city", f"no POIs in city {body.city[:64]!r}; known: {known}",
                                             {"city": body.city[:64]}))
    scores, personal, strategy = _scores(model, body, rows)
    city_pois = model.bundle.pois.iloc[rows].reset_index(drop=True)
    pace = PACE_STOPS[body.pace] if isinstance(body.pace, str) else int(body.pace)
    end = body.end_location or body.start_location
    req = PlanRequest(
        pois=city_pois, scores=scores, days=body.days, day_start=hhmm_to_minutes(body.daily_hours[0]),
        day_end=hhmm_to_minutes(body.daily_hours[1]), start=(body.start_location.lat, body.start_location.lon),
        end=(end.lat, end.lon), travel_mode=body.travel_mode, max_stops=pace, budget=body.budget_cny,
        must_include=list(body.must_include), exclude=list(body.exclude), meals=body.meals, seed=body.seed,
        time_limit=get_settings().itinerary_time_limit_s,
    )
    try:
        result = await request.app.state.solver.solve(req)  # in a worker process: the event loop stays free
    except InfeasibleRequest as exc:
        return _infeasible(exc)
    request.app.state.metrics.solver_seconds.observe(result["solver"]["seconds"])
    for d in result["days"]:
        d["date"] = body.start_date + dt.timedelta(days=d["day"] - 1)
    rec_id = uuid.uuid4().hex
    state = request.app.state.serving
    if state.store is not None:
        payload = {"recommendation_id": rec_id, "model_version": model.version, "strategy": strategy,
                   "personalized": personal, "poi_ids": [s["poi_id"] for d in result["days"] for s in d["stops"]],
                   "created_at": time.time()}
        if body.token is not None:
            payload["token"] = body.token
        try:
            state.store.put_recommendation(principal.tenant, rec_id, payload)
        except StoreUnavailable:
            log.warning("itinerary %s not stored: online store unavailable", rec_id)
    return ItineraryResponse(recommendation_id=rec_id, model_version=model.version, personalized=personal,
                             strategy=strategy, city=body.city, days=result["days"], totals=result["totals"],
                             solver=result["solver"])
