"""Campaigns for marketers: create, list, read, and export the treatment group's partner pseudonyms.

Role marketer (admin too), and only the caller's own tenant: another tenant's campaign
answers 404, exactly like a missing one. The audience itself is computed offline
(`wenlv campaign audience`), where the data and the models live.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Literal

from fastapi import APIRouter, Body, Depends, Path, Query
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Engine

from wenlv.marketing import audience, export
from wenlv.marketing import campaigns as store
from wenlv.marketing.audience import AudienceRefused
from wenlv.marketing.campaigns import CampaignSpec
from wenlv.serving.auth import ApiError, Principal, require_role
from wenlv.serving.database import get_db
from wenlv.serving.schemas import ERROR_RESPONSES

router = APIRouter(prefix="/v1", tags=["campaigns"])
marketer = require_role("marketer")
NOT_FOUND = {404: {"description": "no such campaign for this tenant"}}


class Campaign(BaseModel):
    id: int
    tenant: str
    name: str
    target_kind: str
    target: dict = Field(description="poi_ids, category, or the lookalike seed's size (the seed itself is not echoed)")
    channel: str
    partner: str = Field(description="who delivers and alone can resolve the export: carrier (sms) or internet (ads)")
    region: str | None
    audience_size: int
    min_score: float | None
    holdout_fraction: float
    cap_contacts: int
    cap_days: int
    starts_on: date
    ends_on: date
    status: str = Field(description="draft (no audience yet), ready (audience computed)")
    model_version: str | None
    created_at: datetime
    arms: dict[str, int] | None = Field(None, description="audience members per arm (treatment, holdout)")

    @field_validator("created_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        """Stored in UTC, but SQLite gives it back without a zone: state it, as the schema's date-time requires."""
        return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _own(engine: Engine, principal: Principal, campaign_id: int) -> dict:
    found = store.get(engine, principal.tenant, campaign_id)
    if found is None:
        raise ApiError(404, "not_found", f"campaign {campaign_id} not found")
    return found


@router.post("/campaigns", status_code=201, response_model=Campaign, summary="create a campaign (draft)",
             responses=ERROR_RESPONSES)
def create_campaign(spec: CampaignSpec = Body(...), principal: Principal = Depends(marketer),
                    engine: Engine = Depends(get_db)) -> Campaign:
    return Campaign(**store.public(store.create(engine, principal.tenant, spec)))


@router.get("/campaigns", response_model=list[Campaign], summary="the tenant's campaigns", responses=ERROR_RESPONSES)
def list_campaigns(principal: Principal = Depends(marketer), engine: Engine = Depends(get_db)) -> list[Campaign]:
    return [Campaign(**store.public(c)) for c in store.list_for(engine, principal.tenant)]


@router.get("/campaigns/{campaign_id}", response_model=Campaign, summary="one campaign with its arm sizes",
            responses={**ERROR_RESPONSES, **NOT_FOUND})
def get_campaign(campaign_id: int = Path(..., ge=1, le=2**31 - 1), principal: Principal = Depends(marketer),
                 engine: Engine = Depends(get_db)) -> Campaign:
    found = _own(engine, principal, campaign_id)
    return Campaign(**store.public(found), arms=audience.arm_counts(engine, campaign_id))


@router.get("/campaigns/{campaign_id}/audience", summary="the treatment group as the delivering partner's pseudonyms",
            description="One per-partner, per-campaign pseudonym per treated person, in rank order — never the "
                        "cross-party token, never a phone number, never a holdout member. Refused (409) while no "
                        "audience is computed or when it is below the tenant's minimum size.",
            responses={**ERROR_RESPONSES, **NOT_FOUND, 409: {"description": "no audience, or below the minimum size"}})
def export_audience(campaign_id: int = Path(..., ge=1, le=2**31 - 1),
                    format: Literal["csv", "json"] = Query("json", description="csv (pseudonym,rank) or json"),
                    principal: Principal = Depends(marketer), engine: Engine = Depends(get_db)):
    _own(engine, principal, campaign_id)
    try:
        campaign, rows = export.export_rows(engine, principal.tenant, campaign_id)
    except AudienceRefused as exc:
        raise ApiError(409, "audience_refused", str(exc))
    partner = store.PARTNER_OF_CHANNEL[campaign["channel"]]
    if format == "csv":
        return PlainTextResponse(export.to_csv(rows), media_type="text/csv", headers={
            "Content-Disposition": f'attachment; filename="campaign-{campaign_id}-{partner}.csv"'})
    return JSONResponse({"campaign_id": campaign_id, "partner": partner, "count": len(rows), "members": rows})
