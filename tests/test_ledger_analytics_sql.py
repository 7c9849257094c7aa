"""Analytics roll-ups done in the database give what the pandas computation they replaced gave.

`daily_revenue` used to load every outcome event of the tenant into pandas per request;
`reference_daily_revenue` below is that computation, kept verbatim as the reference. On a
seeded dataset (several days crossing UTC midnight in +08:00, campaigns, two model versions,
holdout lists, lists of another tenant, events without amounts, impressions and clicks) both
agree for every filter, on SQLite and PostgreSQL. Last-touch now reads only paid, tagged
events and the treatment lists they name: the same result as filtering everything in pandas.
"""
from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import insert

from wenlv.db.schema import campaigns, served_lists
from wenlv.ledger import attribution
from wenlv.ledger.attribution import OUTCOME_KINDS, Options, _day_start, _outcome_events, _served
from wenlv.ledger.events import record_events
from tests.support.campaign_db import postgres_engine, sqlite_engine


def reference_daily_revenue(engine, tenant, options, campaign_id=None, model_version=None) -> list[dict]:
    """The pandas roll-up before it moved into SQL (wenlv/ledger/attribution.py at f112f3a)."""
    far = (_day_start(date(1970, 1, 1)), _day_start(date(9999, 1, 1)))
    found = _outcome_events(engine, tenant, *options.clip(*far))
    served = _served(engine, tenant)[["recommendation_id", "model_version"]]
    found = found[found.kind.isin(OUTCOME_KINDS)].merge(served, on="recommendation_id", how="left")
    if campaign_id is not None:
        found = found[found.campaign_id == campaign_id]
    if model_version is not None:
        found = found[found.model_version == model_version]
    if found.empty:
        return []
    found["day"] = found.occurred_at.dt.date
    found["booking"] = (found.kind == "booking").astype(int)
    found["visit"] = (found.kind == "visit").astype(int)
    found["campaign_key"] = found.campaign_id.fillna(-1).astype(int)
    found["version_key"] = found.model_version.fillna("")
    grouped = found.groupby(["day", "campaign_key", "version_key"], sort=True).agg(
        revenue=("amount", "sum"), bookings=("booking", "sum"), visits=("visit", "sum")).reset_index()
    return [{"day": r.day.isoformat(), "campaign_id": None if r.campaign_key < 0 else int(r.campaign_key),
             "model_version": r.version_key or None, "revenue_cny": round(float(r.revenue), 2),
             "bookings": int(r.bookings), "visits": int(r.visits)} for r in grouped.itertuples()]


def seed(engine, rng_seed: int = 7) -> list[int]:
    """Campaigns, served lists (two versions, holdout arm, another tenant) and 1,500 events; the campaign ids."""
    rng = np.random.default_rng(rng_seed)
    with engine.begin() as c:
        ids = [c.execute(insert(campaigns).values(
            tenant="hz", name=f"c{i}", target_kind="destination", target={}, channel="sms", audience_size=8,
            starts_on=date(2026, 5, 1), ends_on=date(2026, 5, 7), status="ready", model_version=str(4 + i % 2),
            holdout_seed="s", created_at=datetime(2026, 4, 30, tzinfo=timezone.utc))).inserted_primary_key[0]
               for i in range(3)]
        at = datetime(2026, 5, 1, 1, tzinfo=timezone.utc)
        c.execute(insert(served_lists), [
            {"recommendation_id": f"r{i}", "tenant": "hz" if i < 180 else "other", "token": f"{i % 60:032x}",
             "model_version": None if i % 17 == 0 else ("4" if i % 3 else "5"),
             "arm": "holdout" if i % 11 == 0 else "treatment", "poi_ids": ["P1"],
             "served_at": at + timedelta(hours=int(i))} for i in range(200)])
    kinds = np.array(["impression", "click", "booking", "visit"])
    batch = []
    for n in range(1500):
        kind = str(rng.choice(kinds, p=[0.4, 0.2, 0.25, 0.15]))
        paid = kind in ("booking", "visit") and rng.random() < 0.9
        when = datetime(2026, 5, 1, tzinfo=timezone.utc) + timedelta(minutes=int(rng.integers(0, 14 * 24 * 60)))
        tag = rng.random()
        batch.append({"event_id": f"e{n}", "kind": kind, "token": f"{int(rng.integers(0, 80)):032x}",
                      "poi_id": "P1", "amount_cny": f"{rng.uniform(1, 900):.2f}" if paid else None,
                      "occurred_at": when.astimezone(timezone(timedelta(hours=8))).isoformat(),
                      "campaign_id": ids[int(rng.integers(0, 3))] if tag < 0.3 else None,
                      "recommendation_id": f"r{int(rng.integers(0, 220))}" if 0.2 < tag < 0.8 else None})
    for start in range(0, len(batch), 500):
        result = record_events(engine, "hz", batch[start:start + 500])
        assert not result.rejected, result.rejected
    return ids


def check_same_results(engine) -> None:
    ids = seed(engine)
    cases = [{}, {"campaign_id": ids[1]}, {"model_version": "4"}, {"model_version": "5", "campaign_id": ids[0]},
             {"model_version": "nope"}]
    for window, date_from, date_to in ((7, None, None), (3, date(2026, 5, 4), date(2026, 5, 9)),
                                       (7, date(2026, 5, 20), None)):
        options = Options(window_days=window, date_from=date_from, date_to=date_to)
        for filters in cases:
            new = attribution.daily_revenue(engine, "hz", options, **filters)
            assert new == reference_daily_revenue(engine, "hz", options, **filters), (window, date_from, filters)
        assert attribution.daily_revenue(engine, "other", options) == []
    full = attribution.daily_revenue(engine, "hz", Options())
    assert len(full) > 30 and sum(r["bookings"] + r["visits"] for r in full) > 500  # the dataset is not trivial

    far = (_day_start(date(1970, 1, 1)), _day_start(date(9999, 1, 1)))
    everything = _outcome_events(engine, "hz", *far)
    paid = everything[(everything.amount > 0)
                      & (everything.campaign_id.notna() | everything.recommendation_id.notna())]
    touch = attribution.last_touch(engine, "hz", Options())
    assert touch["campaigns"] and touch["model_versions"]
    assert sum(touch["campaigns"].values()) + sum(touch["model_versions"].values()) <= paid.amount.sum() + 1e-6
    pd.testing.assert_frame_equal(  # what last_touch now reads is what it used to keep after filtering
        _outcome_events(engine, "hz", *far, *attribution.paid_and_tagged()).reset_index(drop=True),
        paid.reset_index(drop=True), check_dtype=False)


def test_daily_revenue_in_sql_equals_the_pandas_roll_up_on_sqlite(tmp_path):
    with sqlite_engine(tmp_path / "a.sqlite") as engine:
        check_same_results(engine)


@pytest.mark.postgres
def test_daily_revenue_in_sql_equals_the_pandas_roll_up_on_postgresql(postgres_url):
    with postgres_engine(postgres_url, prefix="wenlv_analytics") as engine:
        check_same_results(engine)
