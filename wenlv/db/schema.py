"""Every table of the campaign and ledger database, declared once.

The Alembic migrations create exactly these tables (a test compares the migrated
database with this metadata). Tenants are the API keys' tenant names; people appear only
as PSI tokens (never a phone number); money is CNY in NUMERIC(14, 2); times are UTC.

Tables by owner:
- marketing: `tenant_settings`, `campaigns`, `audience_members`, `contacts`
- ledger: `served_lists`, `events`, `data_assets`, `asset_cost_lines`, `attributed_returns`
"""
from __future__ import annotations

from sqlalchemy import (JSON, Boolean, CheckConstraint, Column, Date, DateTime, Float, ForeignKey, Index, Integer,
                        MetaData, Numeric, String, Table, UniqueConstraint)

# Stable constraint names, so migrations can name what they alter on every backend.
metadata = MetaData(naming_convention={
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
})

MONEY = Numeric(14, 2)
TOKEN = String(64)  # a PSI token (see privacy/psi.py); never a phone number
TENANT = String(64)
ID_MAX = 2**31 - 1  # the largest id an INTEGER key holds on every backend: ids in requests are bounded by it
CHANNELS = ("sms", "ads")
TARGET_KINDS = ("pois", "category", "destination", "lookalike")
ARMS = ("treatment", "holdout")
EVENT_KINDS = ("impression", "click", "booking", "visit")
SOURCES = ("tourism", "carrier", "internet")
COST_PHASES = ("research", "development")


def _one_of(column: str, values: tuple[str, ...], name: str) -> CheckConstraint:
    quoted = ", ".join(f"'{v}'" for v in values)
    return CheckConstraint(f"{column} IN ({quoted})", name=name)


# --- marketing ---------------------------------------------------------------------------

tenant_settings = Table(
    "tenant_settings", metadata,
    Column("tenant", TENANT, primary_key=True),
    Column("min_audience_size", Integer, nullable=False, server_default="1000"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

campaigns = Table(
    "campaigns", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", TENANT, nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("target_kind", String(16), nullable=False),
    Column("target", JSON, nullable=False),          # {"poi_ids": [...]} | {"category": ...} | {} | {"seed_size": n}
    Column("channel", String(8), nullable=False),
    Column("region", String(64)),                    # home city filter; NULL = everywhere
    Column("audience_size", Integer, nullable=False),
    Column("min_score", Float),
    Column("holdout_fraction", Float, nullable=False, server_default="0.1"),
    Column("cap_contacts", Integer, nullable=False, server_default="3"),
    Column("cap_days", Integer, nullable=False, server_default="7"),
    Column("starts_on", Date, nullable=False),
    Column("ends_on", Date, nullable=False),
    Column("status", String(16), nullable=False, server_default="draft"),
    Column("model_version", String(32)),             # the champion the audience was scored with
    Column("holdout_seed", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    _one_of("target_kind", TARGET_KINDS, "target_kind"),
    _one_of("channel", CHANNELS, "channel"),
    CheckConstraint("holdout_fraction >= 0 AND holdout_fraction < 1", name="holdout_fraction"),
    CheckConstraint("audience_size > 0", name="audience_size"),
    CheckConstraint("ends_on >= starts_on", name="dates"),
)

audience_members = Table(
    "audience_members", metadata,
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), primary_key=True),
    Column("token", TOKEN, primary_key=True),
    Column("arm", String(16), nullable=False),
    Column("score", Float, nullable=False),
    Column("rank", Integer, nullable=False),
    Column("is_prospect", Boolean, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    _one_of("arm", ARMS, "arm"),
)

contacts = Table(
    "contacts", metadata,   # one row per delivered contact: the frequency cap counts these per tenant
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", TENANT, nullable=False),
    Column("token", TOKEN, nullable=False),
    Column("campaign_id", Integer, ForeignKey("campaigns.id", ondelete="CASCADE"), nullable=False),
    Column("channel", String(8), nullable=False),
    Column("contacted_at", DateTime(timezone=True), nullable=False),
    Index("ix_contacts_tenant_token_time", "tenant", "token", "contacted_at"),
)

# --- ledger ------------------------------------------------------------------------------

served_lists = Table(
    "served_lists", metadata,   # what a recommendation showed, kept for the attribution window
    Column("recommendation_id", String(64), primary_key=True),
    Column("tenant", TENANT, nullable=False),
    Column("token", TOKEN, nullable=False),
    Column("model_version", String(32)),
    Column("arm", String(16), nullable=False),   # treatment: personalised; holdout: the non-personalised list
    Column("poi_ids", JSON, nullable=False),
    Column("served_at", DateTime(timezone=True), nullable=False),
    _one_of("arm", ARMS, "arm"),
    Index("ix_served_lists_tenant_token_time", "tenant", "token", "served_at"),
)

events = Table(
    "events", metadata,
    Column("tenant", TENANT, primary_key=True),
    Column("event_id", String(64), primary_key=True),   # client-chosen: a retried batch is stored once
    Column("kind", String(16), nullable=False),
    Column("token", TOKEN, nullable=False),
    Column("poi_id", String(64)),
    Column("amount_cny", MONEY),
    Column("occurred_at", DateTime(timezone=True), nullable=False),
    Column("recommendation_id", String(64)),
    Column("campaign_id", Integer),
    Column("received_at", DateTime(timezone=True), nullable=False),
    _one_of("kind", EVENT_KINDS, "kind"),
    CheckConstraint("amount_cny IS NULL OR amount_cny >= 0", name="amount"),
    Index("ix_events_tenant_time", "tenant", "occurred_at"),
    Index("ix_events_campaign", "campaign_id"),
    Index("ix_events_tenant_token_time", "tenant", "token", "occurred_at"),
)

data_assets = Table(
    "data_assets", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", TENANT, nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("source", String(16), nullable=False),         # whose data: tourism (own), carrier / internet (licensed)
    Column("holding", String(16), nullable=False),        # 无形资产 (intangible) or 存货 (inventory)
    Column("useful_life_months", Integer, nullable=False),
    Column("available_on", Date, nullable=False),          # amortisation starts here
    Column("description", String(1000)),
    _one_of("source", SOURCES, "source"),
    _one_of("holding", ("intangible", "inventory"), "holding"),
    CheckConstraint("useful_life_months > 0", name="useful_life"),
    UniqueConstraint("tenant", "name"),
)

asset_cost_lines = Table(
    "asset_cost_lines", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("asset_id", Integer, ForeignKey("data_assets.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("category", String(32), nullable=False),        # acquisition, desensitisation, cleaning, labelling, ...
    Column("phase", String(16), nullable=False),           # research: expensed; development: capitalised
    Column("amount_cny", MONEY, nullable=False),
    Column("incurred_on", Date, nullable=False),
    Column("note", String(500)),
    _one_of("phase", COST_PHASES, "phase"),
    CheckConstraint("amount_cny >= 0", name="amount"),
)

attributed_returns = Table(
    "attributed_returns", metadata,   # incremental revenue credited to a model version and a data source
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("tenant", TENANT, nullable=False),
    Column("day", Date, nullable=False),
    Column("campaign_id", Integer),
    Column("model_version", String(32)),
    Column("source", String(16), nullable=False),
    Column("amount_cny", MONEY, nullable=False),
    Column("computed_at", DateTime(timezone=True), nullable=False),
    _one_of("source", SOURCES, "source"),
    Index("ix_attributed_returns_tenant_day", "tenant", "day"),
)
