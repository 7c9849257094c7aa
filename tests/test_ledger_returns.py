"""Returns by data source: the Shapley split stored with a version, shares that sum to the whole in fen."""
from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest
from sqlalchemy import select

from wenlv.db.schema import attributed_returns
from wenlv.errors import WenlvError
from wenlv.ledger import attribution, returns
from wenlv.ledger.events import record_events
from wenlv.training import registry, tracking
from tests.support.campaign_db import sqlite_engine
from tests.test_ledger_attribution import T, _ev, _seed_campaign
from tests.support.versions import register_toy_version


def test_split_by_hand():
    assert returns.split_fen("100.00", {"tourism": 0.5, "carrier": 0.3, "internet": 0.2}) == {
        "tourism": Decimal("50.00"), "carrier": Decimal("30.00"), "internet": Decimal("20.00")}
    third = returns.split_fen("0.02", {"a": 1, "b": 1, "c": 1})
    assert sorted(third.values()) == [Decimal("0.00"), Decimal("0.01"), Decimal("0.01")]
    # a source that made the model worse gets a negative share; the others more than their naive share
    assert returns.split_fen("10.00", {"tourism": 0.3, "carrier": 0.1, "internet": -0.2}) == {
        "tourism": Decimal("15.00"), "carrier": Decimal("5.00"), "internet": Decimal("-10.00")}
    with pytest.raises(WenlvError, match="sum to zero"):
        returns.split_fen("1.00", {"a": 0.1, "b": -0.1})


def test_shares_sum_to_the_whole_exactly():
    rng = np.random.default_rng(5)
    for _ in range(2000):
        amount = Decimal(int(rng.integers(-10**9, 10**9))) / 100
        weights = dict(zip(("tourism", "carrier", "internet"), rng.normal(0.1, 0.1, 3)))
        if abs(sum(weights.values())) < 1e-6:
            continue
        parts = returns.split_fen(amount, weights)
        assert sum(parts.values()) == amount
        exact = {k: float(amount) * w / sum(weights.values()) for k, w in weights.items()}
        assert all(abs(float(parts[k]) - exact[k]) < 0.01 + 1e-6 * abs(exact[k]) for k in parts)


def test_weights_from_a_registered_version(tmp_path):
    uri = tracking.store_for_dir(tmp_path / "mlflow")[0]
    version = register_toy_version(tmp_path, uri, {"ndcg@10": 0.30, "shapley_carrier": 0.06,
                                                        "shapley_internet": 0.04, "shapley_total_lift": 0.10})
    weights = returns.version_weights(str(version), uri)
    assert weights == pytest.approx({"tourism": 0.20, "carrier": 0.06, "internet": 0.04})
    assert returns.version_weights("999", uri) is None and returns.version_weights("propensity@2026-05-01", uri) is None


def test_attribute_stores_daily_returns_by_source(tmp_path):
    with sqlite_engine(tmp_path / "r.sqlite") as engine:
        cid = _seed_campaign(engine)
        record_events(engine, "hz", [_ev("a", T[0], "100.00", "2026-05-01T10:00:00+08:00", campaign_id=cid),
                                     _ev("b", T[1], "60.01", "2026-05-02T10:00:00+08:00", campaign_id=cid),
                                     _ev("e", T[6], "30.00", "2026-05-02T10:00:00+08:00")])
        opts = attribution.Options(window_days=7, method="delta")
        split = {"3": {"tourism": 0.2, "carrier": 0.07, "internet": 0.03}}
        out = returns.attribute(engine, "hz", opts, split)
        assert out["split_by"] == {f"campaign {cid}": "3"} and out["unsplit"] == []
        (effect,) = attribution.campaign_effects(engine, "hz", opts)
        assert Decimal(str(out["total"])) == sum(Decimal(str(round(v, 2))) for v in effect.daily.values())
        assert out["by_source"]["carrier"] == pytest.approx(out["total"] * 0.07 / 0.3, abs=0.02)
        again = returns.attribute(engine, "hz", opts, split)  # recomputed, not added twice
        with engine.connect() as c:
            stored = c.execute(select(attributed_returns.c.amount_cny)).scalars().all()
        assert len(stored) == again["rows"] == 6 and sum(stored) == Decimal(str(out["total"]))
        assert returns.attribute(engine, "hz", opts, {})["unsplit"] == [f"campaign {cid}"]
