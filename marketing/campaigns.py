"""Campaigns: validated specifications stored in the campaign database, always scoped to a tenant.

Every read takes the caller's tenant: another tenant's campaign is indistinguishable from
a missing one (None), so no route can reveal that it exists.
"""
from __future__ import annotations

import secrets
from datetime import date, datetime, timezone
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from sqlalchemy import Engine, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from wenlv.db.schema import CHANNELS, campaigns, tenant_settings
from wenlv.settings import get_settings
from wenlv.privacy.tokens import PSI_TOKEN_RE as TOKEN_RE

MIN_SEED = 100
PARTNER_OF_CHANNEL = {"sms": "carrier", "ads": "internet"}  # who delivers, and so who resolves the export


class CampaignSpec(BaseModel):
    """What a marketer asks for; bad input is refused field by field with the reason."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    target_kind: Literal["pois", "category", "destination", "lookalike"] = Field(
        description="pois: affinity to these POIs; category: to a category; destination: will visit at all; "
                    "lookalike: people like a seed list")
    poi_ids: list[str] | None = Field(None, max_length=500, description="target POIs (target_kind=pois)")
    category: str | None = Field(None, max_length=64, description="target category (target_kind=category)")
    seed_tokens: list[str] | None = Field(None, max_length=100_000,
                                          description=f"seed tokens, at least {MIN_SEED} (target_kind=lookalike)")
    uplift_from: int | None = Field(None, ge=1, description="destination only: rank by predicted uplift, learnt from "
                                                            "this earlier campaign's treatment and holdout")
    channel: Literal[CHANNELS] = Field(description="sms: delivered by the carrier; ads: by the internet platform")  # type: ignore[valid-type]
    region: str | None = Field(None, max_length=64, description="home city; unset: everywhere. Affinity and "
                                "lookalike audiences need a home city in the feature blocks, else they are refused")
    audience_size: int = Field(gt=0, le=10_000_000, description="at most this many people (treatment + holdout)")
    min_score: float | None = Field(None, description="leave out people scored below this")
    holdout_fraction: float = Field(0.1, ge=0.0, lt=1.0, description="random share kept uncontacted")
    cap_contacts: int = Field(3, ge=1, le=100, description="frequency cap: at most this many contacts ...")
    cap_days: int = Field(7, ge=1, le=365, description="... within any this many days, over all the tenant's campaigns")
    starts_on: date
    ends_on: date

    @field_validator("seed_tokens")
    @classmethod
    def _tokens(cls, value):
        if value is None:
            return value
        bad = [i for i, t in enumerate(value) if not TOKEN_RE.fullmatch(t)]
        if bad:
            raise ValueError(f"seed_tokens[{bad[0]}] is not a pseudonymous token (lowercase hex); "
                             f"{len(bad)} bad in all — never send phone numbers")
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _target(self) -> "CampaignSpec":
        if self.ends_on < self.starts_on:
            raise ValueError(f"ends_on {self.ends_on} is before starts_on {self.starts_on}")
        needs = {"pois": "poi_ids", "category": "category", "lookalike": "seed_tokens"}
        for kind, attr in needs.items():
            given = getattr(self, attr)
            if (self.target_kind == kind) != bool(given):
                raise ValueError(f"{attr} is required for target_kind={kind!r} and only for it"
                                 if self.target_kind == kind else f"{attr} does not apply to target_kind={self.target_kind!r}")
        if self.uplift_from is not None and self.target_kind != "destination":
            raise ValueError("uplift_from applies to target_kind='destination' only")
        if self.target_kind == "lookalike" and len(self.seed_tokens) < MIN_SEED:
            raise ValueError(f"a lookalike seed needs at least {MIN_SEED} distinct tokens, got {len(self.seed_tokens)}")
        return self

    def target(self) -> dict:
        if self.target_kind == "pois":
            return {"poi_ids": self.poi_ids}
        if self.target_kind == "category":
            return {"category": self.category}
        if self.target_kind == "lookalike":
            return {"seed_size": len(self.seed_tokens), "seed_tokens": self.seed_tokens}
        return {"uplift_from": self.uplift_from} if self.uplift_from is not None else {}


def create(engine: Engine, tenant: str, spec: CampaignSpec, now: datetime | None = None) -> dict:
    row = {"tenant": tenant, "name": spec.name, "target_kind": spec.target_kind, "target": spec.target(),
           "channel": spec.channel, "region": spec.region, "audience_size": spec.audience_size,
           "min_score": spec.min_score, "holdout_fraction": spec.holdout_fraction, "cap_contacts": spec.cap_contacts,
           "cap_days": spec.cap_days, "starts_on": spec.starts_on, "ends_on": spec.ends_on, "status": "draft",
           "holdout_seed": secrets.token_hex(16), "created_at": now or datetime.now(timezone.utc)}
    with engine.begin() as c:
        new_id = c.execute(insert(campaigns).values(**row).returning(campaigns.c.id)).scalar_one()
    return get(engine, tenant, new_id)


def get(engine: Engine, tenant: str, campaign_id: int) -> dict | None:
    """The tenant's campaign, or None (also when it belongs to another tenant)."""
    with engine.connect() as c:
        row = c.execute(select(campaigns).where(campaigns.c.id == campaign_id, campaigns.c.tenant == tenant)).mappings().first()
    return dict(row) if row is not None else None


def get_any(engine: Engine, campaign_id: int) -> dict | None:
    """By id alone: for operator tools (simulator, CLI), never for a tenant's request."""
    with engine.connect() as c:
        row = c.execute(select(campaigns).where(campaigns.c.id == campaign_id)).mappings().first()
    return dict(row) if row is not None else None


def list_for(engine: Engine, tenant: str) -> list[dict]:
    with engine.connect() as c:
        rows = c.execute(select(campaigns).where(campaigns.c.tenant == tenant).order_by(campaigns.c.id)).mappings()
        return [dict(r) for r in rows]


def set_status(connection, campaign_id: int, status: str, model_version: str | None = None) -> None:
    values = {"status": status} | ({"model_version": model_version} if model_version is not None else {})
    connection.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(**values))


def public(campaign: dict) -> dict:
    """The campaign as the API shows it (seed tokens are counted, not echoed; the holdout seed stays secret)."""
    out = {k: v for k, v in campaign.items() if k != "holdout_seed"}
    out["target"] = {k: v for k, v in campaign["target"].items() if k != "seed_tokens"}
    out["partner"] = PARTNER_OF_CHANNEL[campaign["channel"]]
    return out


def min_audience_size(engine: Engine, tenant: str) -> int:
    """The tenant's own minimum if set, else WENLV_MIN_AUDIENCE_SIZE (default 1,000)."""
    with engine.connect() as c:
        own = c.execute(select(tenant_settings.c.min_audience_size).where(tenant_settings.c.tenant == tenant)).scalar()
    return int(own) if own is not None else get_settings().min_audience_size


def set_min_audience_size(engine: Engine, tenant: str, size: int) -> None:
    if size < 1:
        raise ValueError(f"min_audience_size must be at least 1, got {size}")
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    now = datetime.now(timezone.utc)
    statement = dialect.insert(tenant_settings).values(tenant=tenant, min_audience_size=size, updated_at=now)
    statement = statement.on_conflict_do_update(index_elements=["tenant"], set_={"min_audience_size": size, "updated_at": now})
    with engine.begin() as c:
        c.execute(statement)
