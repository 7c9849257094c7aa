"""The demo's ledger stage on a real simulated campaign (tiny data), without Spark or training: the campaign
is delivered by the simulator into <workdir>/campaigns.sqlite, the version's Shapley split sits in MLflow."""
from __future__ import annotations

from datetime import date

import pytest

from wenlv.db import engine as db_engine
from wenlv.demo import DemoContext
from wenlv.features.generator import generate
from wenlv.ledger import demo_stage
from wenlv.marketing import audience, sources
from wenlv.marketing import campaigns as store
from wenlv.marketing.campaigns import CampaignSpec
from wenlv.marketing.simulate import simulate_delivery
from wenlv.training import registry, tracking
from tests.support.versions import register_toy_version

KEY = b"test-carrier-token-key"


def test_ledger_stage_reports_the_campaign_against_the_truth(tmp_path):
    data = tmp_path / "data"
    generate(data, scale="tiny", seed=3, progress=False)
    candidates, query, _ = sources.destination(data, key=KEY)
    engine = db_engine.make_engine(f"sqlite:///{tmp_path / 'campaigns.sqlite'}")
    db_engine.migrate(engine)
    store.set_min_audience_size(engine, "demo", 20)
    spec = CampaignSpec(name="winter", target_kind="destination", channel="sms", audience_size=400,
                        holdout_fraction=0.25, starts_on=date(2025, 12, 1), ends_on=date(2025, 12, 20))
    campaign = store.create(engine, "demo", spec)
    audience.compute(engine, campaign, candidates, query)
    delivered = simulate_delivery(engine, campaign["id"], data, seed=1, key=KEY)
    engine.dispose()
    uri = tracking.store_for_dir(tmp_path / "mlflow")[0]
    version = register_toy_version(tmp_path, uri, {"ndcg@10": 0.30, "shapley_carrier": 0.06,
                                                        "shapley_internet": 0.04, "shapley_total_lift": 0.10})
    ctx = DemoContext(workdir=tmp_path, progress=False)
    ctx.results["campaign"] = {"campaign_id": campaign["id"], **delivered}
    ctx.results["train"] = {"model_version": version, "_paths": {"tracking_uri": uri}}

    out = demo_stage.run(ctx)
    assert out["events"] == delivered["events_written"] > 0
    assert out["true_incremental_revenue_cny"] == delivered["true_incremental_revenue_cny"]
    low, high = out["ci95"]
    assert low <= out["incremental_revenue_cny"] <= high
    assert out["treated"] == delivered["treated"] and out["holdout"] == delivered["holdout"]
    by_source = out["returns_by_source"]
    assert sum(by_source.values()) == pytest.approx(out["incremental_revenue_cny"], abs=0.5)
    assert by_source["carrier"] == pytest.approx(sum(by_source.values()) * 0.06 / 0.30, abs=0.05)
    assert out["returns_split_by_version"] == str(version)
    assert out["asset_value_cny"]["cost"] > 0 and out["asset_value_cny"]["income"] >= 0
    assert out["mlflow_asset_runs"] == 3 and out["report"].endswith("report.html")
    # the campaign's scorer (the propensity) is not a registered version: its returns reach the asset runs only
    assert out["mlflow_versions_logged"] == [] and out["mlflow_versions_skipped"][0].startswith("propensity@")
    c = tracking.client(uri)
    runs = c.search_runs([c.get_experiment_by_name("wenlv-data-assets").experiment_id])
    assert sum(r.data.metrics["attributed_returns_cny"] for r in runs) == pytest.approx(sum(by_source.values()), abs=0.05)
    print({k: out[k] for k in ("incremental_revenue_cny", "ci95", "true_incremental_revenue_cny",
                               "last_touch_revenue_cny", "asset_value_cny")})
