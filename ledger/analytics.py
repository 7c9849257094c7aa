"""What analysts see: revenue, incremental revenue with intervals, returns by source, assets, recent events.

One place assembles these payloads for the API (`serving.routers.analytics`), the dashboard
that calls it, and the HTML report, so all three show the same numbers. Amounts are CNY
floats rounded to 2 dp. Filters: the campaign filter narrows campaigns, observed revenue and
returns; the model-version filter narrows campaigns scored by it, surfaces, observed revenue
and returns; the source filter narrows returns by source (revenue itself has no source);
the date range narrows every event counted.
"""
from __future__ import annotations

from datetime import date

from sqlalchemy import Engine, func, select

from wenlv.db.schema import SOURCES, attributed_returns, events
from wenlv.ledger import assets, attribution
from wenlv.ledger.attribution import finite_or_none, rounded_ci

ASSET_FIELDS = ("id", "name", "source", "cost_cny", "capitalised_cny", "expensed_cny", "amortised_cny", "carrying_cny",
                "attributed_returns_cny", "roi", "value")


def revenue(engine: Engine, tenant: str, *, campaign_id: int | None = None, model_version: str | None = None,
            source: str | None = None, date_from: date | None = None, date_to: date | None = None,
            options: attribution.Options | None = None) -> dict:
    options = options or attribution.Options.from_settings(date_from=date_from, date_to=date_to)
    touch = attribution.last_touch(engine, tenant, options)
    camps = [c for c in attribution.campaign_effects(engine, tenant, options, campaign_id)
             if model_version is None or c.model_version == model_version]
    surfaces = [] if campaign_id is not None else attribution.surface_effects(engine, tenant, options, model_version)
    return {
        "daily": attribution.daily_revenue(engine, tenant, options, campaign_id, model_version),
        "campaigns": [_campaign(c, touch["campaigns"].get(c.campaign_id, 0.0)) for c in camps],
        "model_versions": [_surface(s, touch["model_versions"].get(s.model_version, 0.0)) for s in surfaces],
        "returns_by_source": returns_by_source(engine, tenant, campaign_id=campaign_id, model_version=model_version,
                                               source=source, date_from=options.date_from, date_to=options.date_to),
        "attribution": {"window_days": options.window_days, "interval": options.method,
                        "last_touch": "associative: credits the latest exposure within the window, "
                                      "including people who would have come anyway"},
    }


def _campaign(c: attribution.CampaignResult, last_touch: float) -> dict:
    r, v = c.revenue, c.visits
    return {"campaign_id": c.campaign_id, "name": c.name, "model_version": c.model_version,
            "treated": r.treated, "holdout": r.holdout,
            "treated_mean_cny": finite_or_none(r.treated_mean), "holdout_mean_cny": finite_or_none(r.holdout_mean),
            "incremental_revenue_cny": finite_or_none(r.incremental), "ci95": rounded_ci(r.ci95),
            "incremental_visits": finite_or_none(v.incremental), "visits_ci95": rounded_ci(v.ci95),
            "last_touch_revenue_cny": round(last_touch, 2), "method": r.method}


def _surface(s: attribution.SurfaceResult, last_touch: float) -> dict:
    r = s.revenue
    return {"model_version": s.model_version, "treated": r.treated, "holdout": r.holdout,
            "incremental_revenue_cny": finite_or_none(r.incremental), "ci95": rounded_ci(r.ci95),
            "incremental_visits": finite_or_none(s.visits.incremental), "visits_ci95": rounded_ci(s.visits.ci95),
            "last_touch_revenue_cny": round(last_touch, 2), "method": r.method}


def returns_by_source(engine: Engine, tenant: str, *, campaign_id=None, model_version=None, source=None,
                      date_from=None, date_to=None) -> dict[str, float]:
    """Stored attributed returns per data source (`wenlv ledger attribute` / `publish` compute them)."""
    query = (select(attributed_returns.c.source, func.sum(attributed_returns.c.amount_cny))
             .where(attributed_returns.c.tenant == tenant).group_by(attributed_returns.c.source))
    for column, value in ((attributed_returns.c.campaign_id, campaign_id),
                          (attributed_returns.c.model_version, model_version),
                          (attributed_returns.c.source, source)):
        if value is not None:
            query = query.where(column == value)
    if date_from is not None:
        query = query.where(attributed_returns.c.day >= date_from)
    if date_to is not None:
        query = query.where(attributed_returns.c.day <= date_to)
    with engine.connect() as c:
        found = {s: float(v or 0) for s, v in c.execute(query).all()}
    return {s: round(found.get(s, 0.0), 2) for s in SOURCES}


def asset_list(engine: Engine, tenant: str, as_of: date | None = None) -> dict:
    return {"assets": [_asset(a) for a in assets.register(engine, tenant, as_of=as_of)]}


def asset_detail(engine: Engine, tenant: str, asset_id: int, as_of: date | None = None) -> dict | None:
    found = assets.register(engine, tenant, as_of=as_of, asset_id=asset_id, detail=True)
    if not found:
        return None
    return {**_asset(found[0]), "holding": found[0]["holding"], "useful_life_months": found[0]["useful_life_months"],
            "available_on": found[0]["available_on"], "as_of": found[0]["as_of"],
            "cost_lines": found[0]["cost_lines"], "returns": found[0]["returns"]}


def _asset(a: dict) -> dict:
    return {k: a[k] for k in ASSET_FIELDS}


def recent_events(engine: Engine, tenant: str, limit: int = 50) -> dict:
    """The latest events (newest first), without tokens."""
    query = (select(events.c.event_id, events.c.kind, events.c.poi_id, events.c.amount_cny, events.c.occurred_at,
                    events.c.campaign_id, events.c.recommendation_id)
             .where(events.c.tenant == tenant)
             .order_by(events.c.occurred_at.desc(), events.c.event_id.desc()).limit(limit))
    with engine.connect() as c:
        rows = c.execute(query).mappings().all()
    ts = attribution.utc_iso
    return {"events": [{"event_id": r["event_id"], "kind": r["kind"], "poi_id": r["poi_id"],
                        "amount_cny": None if r["amount_cny"] is None else round(float(r["amount_cny"]), 2),
                        "ts": ts(r["occurred_at"]), "campaign_id": r["campaign_id"],
                        "recommendation_id": r["recommendation_id"]} for r in rows]}
