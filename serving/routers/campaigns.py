"""Campaigns for marketers: create, list, read, compute the audience, export the treatment group's pseudonyms.

Role marketer (admin too), and only the caller's own tenant: another tenant's campaign
answers 404, exactly like a missing one. The audience is computed here from what the server
holds (`marketing.served`: the served champion's user factors, the configured propensity
scores); routes are plain functions, so FastAPI runs them — database work included — in its
thread pool, off the event loop.
"""
from __future__ import annotations

from datetime import date, datetime, timezone
from typing import Literal

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Engine

from wenlv.errors import WenlvError
from wenlv.marketing import audience, export, served
from wenlv.marketing import campaigns as store
from wenlv.marketing.refusals import AudienceRefused
from wenlv.marketing.campaigns import CampaignSpec
from wenlv.serving.auth import ApiError, Principal, require_role
from wenlv.serving.database import get_db
from wenlv.serving.schemas import ERROR_RESPONSES
from wenlv.settings import get_settings

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


class AudienceResult(BaseModel):
    campaign_id: int
    status: str = Field(description="ready: the audience is stored and can be exported")
    arms: dict[str, int] = Field(description="members per arm (treatment, holdout); the holdout is never contacted")
    audience_size: int
    prospect_share: float = Field(description="share of the audience with no tourism history")
    candidates: int = Field(description="people the target could score")
    consented: int = Field(description="candidates with consent for the channel")
    consent_coverage: float = Field(description="consented / candidates")
    in_region: int = Field(description="consented candidates in the region (all of them without one), seeds excluded")
    capped: int = Field(description="people at the tenant's frequency cap around the campaign's start")
    eligible: int = Field(description="candidates left after consent, region and caps")
    model_version: str | None
    target: dict = Field(description="target POIs found, or the lookalike seed given and found in the model")
    scoring: dict = Field(description="where the scores came from (model version, scores file)")


REFUSED = {422: {"description": "refused: `error` names the rule (min_size, consent_coverage, seed_size, region); "
                                "a refused recomputation leaves the earlier audience in place"},
           409: {"description": "an input the server needs is missing (propensity scores, consent blocks), named"},
           503: {"description": "affinity and lookalike targets: no model version is loaded yet"}}
SUMMARY_KEYS = {"campaign_id", "audience_size", "prospect_share", "candidates", "consented", "consent_coverage",
                "in_region", "capped", "eligible", "model_version", "scoring", "treatment_size", "holdout_size"}


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


@router.post("/campaigns/{campaign_id}/audience", response_model=AudienceResult,
             summary="compute (or recompute) the campaign's audience",
             description="Scores the candidates (affinity and lookalike: the served model's user factors; destination: "
                         "the configured propensity scores), keeps consenting people in the region below their "
                         "frequency cap, takes the top N, draws the holdout (members keep their arm across "
                         "recomputations) and plans the treatment group's contacts.",
             responses={**ERROR_RESPONSES, **NOT_FOUND, **REFUSED})
def compute_audience(request: Request, campaign_id: int = Path(..., ge=1, le=2**31 - 1),
                     principal: Principal = Depends(marketer), engine: Engine = Depends(get_db)) -> AudienceResult:
    campaign = _own(engine, principal, campaign_id)
    model = request.app.state.serving.model  # read once: one model version for the whole computation
    if campaign["target_kind"] != "destination" and model is None:
        raise ApiError(503, "not_ready", "no model version is loaded yet")
    settings = get_settings()
    try:
        summary = served.compute(engine, campaign, bundle=model.bundle if model is not None else None,
                                 version=model.version if model is not None else None,
                                 features_dir=settings.campaign_features, scores_path=settings.campaign_scores)
    except served.Unavailable as exc:
        raise ApiError(409, "not_available", str(exc))
    except AudienceRefused as exc:
        raise ApiError(422, exc.reason, str(exc))
    except WenlvError as exc:  # the target itself: POIs not in the model, an unknown category
        raise ApiError(422, "bad_target", str(exc))
    return AudienceResult(**{k: v for k, v in summary.items() if k in SUMMARY_KEYS - {"treatment_size", "holdout_size"}},
                          status="ready", arms={"treatment": summary["treatment_size"], "holdout": summary["holdout_size"]},
                          target={k: v for k, v in summary.items() if k not in SUMMARY_KEYS})


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
