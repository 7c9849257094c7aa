"""Returns in MLflow (SQLite store): on the earning version's run, and one run per data asset."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pytest
from sqlalchemy import insert

from wenlv.db.schema import attributed_returns
from wenlv.ledger import assets, publish
from wenlv.ledger.cli import EXAMPLE_CSV
from wenlv.training import registry, tracking
from tests.support.campaign_db import sqlite_engine
from tests.support.versions import register_toy_version


def _row(tenant, source, amount, version):
    return {"tenant": tenant, "day": date(2026, 5, 2), "campaign_id": None, "model_version": version,
            "source": source, "amount_cny": Decimal(amount), "computed_at": datetime.now(timezone.utc)}


def test_publish_logs_on_version_runs_and_asset_runs(tmp_path):
    uri = tracking.store_for_dir(tmp_path / "mlflow")[0]
    version = str(register_toy_version(tmp_path, uri, {"ndcg@10": 0.3}))
    with sqlite_engine(tmp_path / "p.sqlite") as engine:
        assets.load_csv(engine, "hz", EXAMPLE_CSV)
        with engine.begin() as c:
            c.execute(insert(attributed_returns), [_row("hz", "tourism", "600.00", version),
                                                   _row("hz", "carrier", "300.00", version),
                                                   _row("sx", "internet", "100.00", version),
                                                   _row("hz", "tourism", "50.00", "propensity@2026-05-01")])
        out = publish.publish(engine, uri, as_of=date(2026, 7, 1))
        assert out["skipped_versions"] == ["propensity@2026-05-01"]
        run_id = tracking.client(uri).get_model_version(registry.MODEL_NAME, version).run_id
        metrics = tracking.client(uri).get_run(run_id).data.metrics
        assert metrics["attributed_returns_cny"] == 1000.0
        assert (metrics["attributed_returns_tourism_cny"], metrics["attributed_returns_carrier_cny"],
                metrics["attributed_returns_internet_cny"]) == (600.0, 300.0, 100.0)
        assert len(out["assets"]) == 3
        again = publish.publish(engine, uri, as_of=date(2026, 8, 1))
        assert {k: v["run_id"] for k, v in again["assets"].items()} == {k: v["run_id"] for k, v in out["assets"].items()}
        c = tracking.client(uri)
        tourism = next(v for v in again["assets"].values() if v["attributed_returns_cny"] == 650.0)
        run = c.get_run(tourism["run_id"])
        assert run.data.metrics["value_cost_cny"] == run.data.metrics["carrying_cny"] == pytest.approx(595000 * 47 / 60)
        history = c.get_metric_history(tourism["run_id"], "carrying_cny")
        assert sorted(m.step for m in history) == [date(2026, 7, 1).toordinal(), date(2026, 8, 1).toordinal()]
        assert run.data.tags["wenlv.source"] == "tourism"
