"""Attribution: the interval covers the simulator's true incremental revenue; the DB path adds up by hand."""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import insert

from wenlv.db.schema import audience_members, campaigns, contacts, served_lists
from wenlv.ledger import attribution
from wenlv.ledger.estimators import incremental
from wenlv.ledger.events import record_events
from tests.support.campaign_db import sqlite_engine

SIMS = 300


def _population(n, seed):
    """A fixed world, as the synthetic truth is: who comes anyway, what they spend, how they respond."""
    rng = np.random.default_rng(seed)
    natural = rng.random(n) < 0.15
    spend = np.where(natural, rng.lognormal(5.5, 0.8, n), 0.0)
    response = rng.uniform(0.0, 0.25, n)
    return natural, spend, response


def _deliver(natural, spend, response, rng, holdout_fraction=0.1):
    """simulate.py's mechanism: a random holdout; treated non-natural people convert with their response."""
    treated = rng.random(len(natural)) >= holdout_fraction
    extra = treated & ~natural & (rng.random(len(natural)) < response)
    revenue = spend.copy()
    revenue[extra] = rng.choice(spend[natural], size=int(extra.sum()))
    return treated, revenue, float(revenue[extra].sum())


@pytest.mark.parametrize("method", ["bootstrap", "delta"])
def test_interval_covers_the_true_incremental_revenue(method):
    natural, spend, response = _population(1500, seed=11)
    covered, widths, errors = 0, [], []
    for sim in range(SIMS):
        rng = np.random.default_rng(1000 + sim)
        treated, revenue, truth = _deliver(natural, spend, response, rng)
        effect = incremental(revenue[treated], revenue[~treated], method=method, reps=500, seed=sim)
        lo, hi = effect.ci95
        covered += lo <= truth <= hi
        widths.append(hi - lo)
        errors.append(effect.incremental - truth)
    coverage = covered / SIMS
    print(f"{method}: coverage {coverage:.3f} over {SIMS} seeded simulations, median width {np.median(widths):.0f} CNY")
    assert coverage >= 0.90
    # Calibrated, not covering by being wide: the width is about 2 × 1.96 × the estimator's real spread.
    assert 0.8 < np.median(widths) / (2 * 1.96 * np.std(errors)) < 1.25


def test_estimator_matches_the_formula():
    t, h = np.array([0, 100, 50, 0.0]), np.array([0, 40.0])
    e = incremental(t, h, method="delta")
    assert e.incremental == pytest.approx((37.5 - 20) * 4)
    se = 4 * np.sqrt(t.var(ddof=1) / 4 + h.var(ddof=1) / 2)
    assert e.ci95 == pytest.approx((70 - 1.959964 * se, 70 + 1.959964 * se), rel=1e-6)
    assert incremental(t, [], method="delta").incremental is None
    assert incremental(t, [5.0], method="bootstrap").ci95 is None


T = [f"{i:064x}" for i in range(1, 9)]  # 6 treated, 2 holdout


def _seed_campaign(engine, tenant="hz", starts=date(2026, 5, 1), ends=date(2026, 5, 3)):
    now = datetime(2026, 4, 30, tzinfo=timezone.utc)
    with engine.begin() as c:
        cid = c.execute(insert(campaigns).values(
            tenant=tenant, name="may", target_kind="destination", target={}, channel="sms", audience_size=8,
            holdout_fraction=0.25, starts_on=starts, ends_on=ends, status="ready", model_version="3",
            holdout_seed="s", created_at=now)).inserted_primary_key[0]
        c.execute(insert(audience_members), [
            {"campaign_id": cid, "token": t, "arm": "holdout" if i >= 6 else "treatment", "score": 1.0, "rank": i,
             "is_prospect": True, "computed_at": now} for i, t in enumerate(T)])
        c.execute(insert(contacts), [{"tenant": tenant, "token": t, "campaign_id": cid, "channel": "sms",
                                      "contacted_at": datetime(2026, 5, 1, 1, tzinfo=timezone.utc)} for t in T[:6]])
    return cid


def _ev(eid, token, amount, at, **kw):
    return {"event_id": eid, "kind": "booking", "token": token, "amount_cny": amount, "occurred_at": at, **kw}


def test_campaign_attribution_from_the_ledger(tmp_path):
    with sqlite_engine(tmp_path / "a.sqlite") as engine:
        cid = _seed_campaign(engine)
        record_events(engine, "hz", [
            _ev("a", T[0], "100.00", "2026-05-01T10:00:00+08:00", campaign_id=cid),
            _ev("b", T[1], "60.00", "2026-05-02T10:00:00+08:00", campaign_id=cid),
            _ev("c", T[1], "40.00", "2026-05-09T10:00:00+08:00", campaign_id=cid),   # 6 days after the end: counts
            _ev("d", T[2], "999.00", "2026-05-20T10:00:00+08:00", campaign_id=cid),  # outside the window
            _ev("e", T[6], "30.00", "2026-05-02T10:00:00+08:00"),                   # holdout
            {"event_id": "f", "kind": "visit", "token": T[0], "occurred_at": "2026-05-01T11:00:00+08:00"},
        ])
        record_events(engine, "other", [_ev("x", T[7], "500.00", "2026-05-02T10:00:00+08:00")])  # another tenant
        opts = attribution.Options(window_days=7, method="delta")
        (result,) = attribution.campaign_effects(engine, "hz", opts)
        assert result.revenue.treated == 6 and result.revenue.holdout == 2
        assert result.revenue.incremental == pytest.approx((200 / 6 - 30 / 2) * 6)   # 110
        assert result.visits.incremental == pytest.approx((1 / 6 - 0) * 6)
        assert sum(result.daily.values()) == pytest.approx(result.revenue.incremental)
        assert result.daily[date(2026, 5, 2)] == pytest.approx(60 - 3 * 30)
        assert attribution.campaign_effects(engine, "other", opts) == []
        narrowed = attribution.Options(window_days=7, method="delta", date_to=date(2026, 5, 1))
        (first_day,) = attribution.campaign_effects(engine, "hz", narrowed)
        assert first_day.revenue.incremental == pytest.approx(100.0)
        touch = attribution.last_touch(engine, "hz", opts)
        assert touch["campaigns"] == {cid: pytest.approx(160.0)}  # "c" is 8 days after its contact, "d" 19
        rows = attribution.daily_revenue(engine, "hz", opts)
        assert sum(r["revenue_cny"] for r in rows) == pytest.approx(100 + 60 + 40 + 999 + 30)
        assert {r["campaign_id"] for r in rows} == {cid, None}


def test_recommendation_surface_by_model_version(tmp_path):
    at = datetime(2026, 5, 1, 2, tzinfo=timezone.utc)
    with sqlite_engine(tmp_path / "s.sqlite") as engine:
        with engine.begin() as c:
            c.execute(insert(served_lists), [
                {"recommendation_id": f"r{i}", "tenant": "hz", "token": t, "model_version": "4",
                 "arm": "holdout" if i >= 6 else "treatment", "poi_ids": ["P1"], "served_at": at}
                for i, t in enumerate(T)])
        record_events(engine, "hz", [
            _ev("a", T[0], "80.00", "2026-05-02T10:00:00+08:00", recommendation_id="r0"),
            _ev("b", T[3], "40.00", "2026-05-03T10:00:00+08:00"),
            _ev("c", T[7], "20.00", "2026-05-02T10:00:00+08:00", recommendation_id="r7"),
            _ev("d", T[0], "500.00", "2026-04-30T10:00:00+08:00"),       # before the list: not its outcome
            _ev("e", T[1], "700.00", "2026-05-09T10:00:00+08:00", recommendation_id="r1"),  # after the window
        ])
        opts = attribution.Options(window_days=7, method="bootstrap", reps=200)
        (result,) = attribution.surface_effects(engine, "hz", opts)
        assert result.model_version == "4"
        assert result.revenue.incremental == pytest.approx((120 / 6 - 20 / 2) * 6)
        lo, hi = result.revenue.ci95
        assert lo <= hi
        touch = attribution.last_touch(engine, "hz", opts)
        assert touch["model_versions"] == {"4": pytest.approx(80.0)}  # the holdout list's 20 is not the model's
        assert attribution.surface_effects(engine, "other", opts) == []
