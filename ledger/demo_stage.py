"""Demo stage `ledger`: the campaign's simulated bookings attributed, split by data source, valued, published.

The campaign stage delivered its audience through the simulator, whose bookings and visits
went into the ledger (`ledger.events.record_events`) in the demo's database
(<workdir>/campaigns.sqlite). Here: incremental revenue with its 95% interval beside the
simulator's true incremental revenue and last-touch revenue; returns split by the trained
version's Shapley values (the demo campaign is scored by the federated propensity, which is
not a registered version, so the demo's trained version is the stated fallback); the shipped
example cost lines as the tenant's data assets, valued as of the end of the attribution
window; returns logged to the demo's MLflow store; the HTML report in <workdir>/ledger_report.
"""
from __future__ import annotations

from datetime import timedelta

from sqlalchemy import func, select

from wenlv.db import engine as db_engine
from wenlv.db.schema import events
from wenlv.ledger import analytics, assets, attribution, publish, report, returns
from wenlv.ledger.cli import EXAMPLE_CSV

TENANT = "demo"


def run(ctx) -> dict:
    campaign = ctx.results["campaign"]
    train = ctx.results.get("train") or {}
    tracking_uri = (train.get("_paths") or {}).get("tracking_uri")
    version = None if train.get("model_version") is None else str(train["model_version"])
    engine = db_engine.make_engine(f"sqlite:///{ctx.workdir / 'campaigns.sqlite'}")
    db_engine.migrate(engine)
    try:
        with engine.connect() as c:
            n_events = c.execute(select(func.count()).select_from(events).where(events.c.tenant == TENANT)).scalar()
        assets.load_csv(engine, TENANT, EXAMPLE_CSV)
        attributed = returns.attribute_from_registry(engine, TENANT, tracking_uri, version)
        options = attribution.Options.from_settings()
        (ours,) = [c for c in attribution.tenant_campaigns(engine, TENANT) if c["id"] == campaign["campaign_id"]]
        as_of = ours["ends_on"] + timedelta(days=options.window_days)
        revenue = analytics.revenue(engine, TENANT, campaign_id=campaign["campaign_id"], options=options)
        (effect,) = revenue["campaigns"]
        register = analytics.asset_list(engine, TENANT, as_of)["assets"]
        published = publish.publish(engine, tracking_uri, as_of=as_of) if tracking_uri else None
        page = report.write(engine, TENANT, ctx.workdir / "ledger_report", as_of=as_of)
    finally:
        engine.dispose()
    truth = campaign["true_incremental_revenue_cny"]
    lo, hi = effect["ci95"] or (None, None)
    covered = lo is not None and lo <= truth <= hi
    interval = f"[{lo:,.2f}, {hi:,.2f}]" if lo is not None else "(none: an arm has fewer than 2 people)"
    ctx.log(f"ledger: incremental revenue {effect['incremental_revenue_cny']} CNY, 95% CI {interval} "
            f"({effect['method']}); true {truth:,.2f} ({'covered' if covered else 'not covered'}); last touch "
            f"{effect['last_touch_revenue_cny']:,.2f} (associative)")
    ctx.log(f"ledger: report {page}; dashboard: `wenlv serve …` then open http://127.0.0.1:8000/dashboard "
            f"with an analyst key of tenant {TENANT!r} (database {ctx.workdir / 'campaigns.sqlite'})")
    return {
        "events": int(n_events),
        "campaign_id": campaign["campaign_id"],
        "treated": effect["treated"], "holdout": effect["holdout"],
        "incremental_revenue_cny": effect["incremental_revenue_cny"],
        "ci95": effect["ci95"],
        "interval": effect["method"],
        "true_incremental_revenue_cny": truth,
        "ci95_covers_truth": covered,
        "incremental_visits": effect["incremental_visits"],
        "visits_ci95": effect["visits_ci95"],
        "true_incremental_visits": campaign.get("true_incremental_visits"),
        "last_touch_revenue_cny": effect["last_touch_revenue_cny"],
        "returns_by_source": revenue["returns_by_source"],
        "returns_split_by_version": attributed["split_by"].get(f"campaign {campaign['campaign_id']}"),
        "asset_value_cny": {"cost": round(sum(a["value"]["cost"] for a in register), 2),
                            "income": round(sum(a["value"]["income"] for a in register), 2)},
        "assets": len(register),
        "valued_as_of": as_of.isoformat(),
        "mlflow_asset_runs": len(published["assets"]) if published else 0,
        # a scorer outside the registry (the propensity) has no run to log on: its returns go to the asset runs only
        "mlflow_versions_logged": sorted(published["versions"]) if published else [],
        "mlflow_versions_skipped": published["skipped_versions"] if published else [],
        "report": str(page),
        "dashboard": "/dashboard",
        "_paths": {"database": str(ctx.workdir / "campaigns.sqlite"), "report": str(page)},
    }
