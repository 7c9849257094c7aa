"""Analytics for analysts: revenue and incremental revenue with intervals, the data-asset register, recent events.

Roles analyst and admin (adding cost lines: admin only); the tenant comes from the key, and
another tenant's asset answers 404 exactly like a missing one. The payloads are assembled in
`ledger.analytics` (the dashboard and `wenlv ledger report` show the same numbers).
"""
from __future__ import annotations

from datetime import date
from typing import Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from wenlv.db.schema import ID_MAX, SOURCES
from wenlv.errors import WenlvError
from wenlv.ledger import analytics, assets
from wenlv.serving.auth import ApiError, Principal, require_role
from wenlv.serving.routers.campaigns import get_db
from wenlv.serving.schemas import ERROR_RESPONSES

router = APIRouter(prefix="/v1", tags=["analytics"])
analyst = require_role("analyst")
admin = require_role()
NOT_FOUND = {404: {"description": "no such asset for this tenant"}}


class CostLines(BaseModel):
    lines: list[dict] = Field(min_length=1, max_length=1000,
                              description="cost lines: category, phase (research|development), amount_cny, "
                                          "incurred_on (YYYY-MM-DD), note")


@router.get("/analytics/revenue", summary="revenue by day; incremental revenue with 95% intervals by campaign and "
                                          "model version; last-touch (associative); returns by data source",
            responses=ERROR_RESPONSES)
def revenue(campaign_id: int | None = Query(None, ge=1, le=ID_MAX, description="only this campaign"),
            model_version: str | None = Query(None, min_length=1, max_length=32, description="only this model version"),
            source: Literal[SOURCES] | None = Query(None, description="returns of this data source only"),  # type: ignore[valid-type]
            date_from: date | None = Query(None, description="first day counted (YYYY-MM-DD, UTC)"),
            date_to: date | None = Query(None, description="last day counted (YYYY-MM-DD, UTC)"),
            principal: Principal = Depends(analyst), engine: Engine = Depends(get_db)) -> dict:
    if date_from and date_to and date_from > date_to:
        raise ApiError(422, "invalid_request", f"date_from {date_from} is after date_to {date_to}")
    return analytics.revenue(engine, principal.tenant, campaign_id=campaign_id, model_version=model_version,
                             source=source, date_from=date_from, date_to=date_to)


@router.get("/assets", summary="the data-asset register: cost, amortisation, returns, ROI, cost and income values",
            responses=ERROR_RESPONSES)
def list_assets(as_of: date | None = Query(None, description="valuation date (default: today)"),
                principal: Principal = Depends(analyst), engine: Engine = Depends(get_db)) -> dict:
    return analytics.asset_list(engine, principal.tenant, as_of)


@router.get("/assets/{asset_id}", summary="one asset with its cost lines and attributed returns",
            responses={**ERROR_RESPONSES, **NOT_FOUND})
def get_asset(asset_id: int = Path(ge=1, le=ID_MAX), as_of: date | None = Query(None, description="valuation date (default: today)"),
              principal: Principal = Depends(analyst), engine: Engine = Depends(get_db)) -> dict:
    found = analytics.asset_detail(engine, principal.tenant, asset_id, as_of)
    if found is None:
        raise ApiError(404, "not_found", f"asset {asset_id} not found")
    return found


@router.post("/assets/{asset_id}/cost-lines", status_code=201, summary="add cost lines to an asset (admin)",
             responses={**ERROR_RESPONSES, **NOT_FOUND})
def add_cost_lines(asset_id: int = Path(ge=1, le=ID_MAX), body: CostLines = Body(...), principal: Principal = Depends(admin),
                   engine: Engine = Depends(get_db)) -> dict:
    try:
        added = assets.add_cost_lines(engine, principal.tenant, asset_id, body.lines)
    except assets.AssetNotFound:
        raise ApiError(404, "not_found", f"asset {asset_id} not found") from None
    except WenlvError as exc:
        raise ApiError(422, "invalid_request", str(exc)) from None
    return {"added": added, "asset": analytics.asset_detail(engine, principal.tenant, asset_id)}


@router.get("/analytics/events", summary="the latest events, newest first (no visitor tokens)",
            responses=ERROR_RESPONSES)
def recent_events(limit: int = Query(50, ge=1, le=500, description="how many"),
                  principal: Principal = Depends(analyst), engine: Engine = Depends(get_db)) -> dict:
    return analytics.recent_events(engine, principal.tenant, limit)
