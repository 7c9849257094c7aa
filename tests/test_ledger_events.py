"""Recording events: one by one validation, idempotent storage, on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
from datetime import date, datetime, timezone

import pytest
from sqlalchemy import func, insert, select

from wenlv.db.schema import campaigns, events, served_lists
from wenlv.ledger.events import BatchTooLarge, record_events
from tests.support.campaign_db import DATABASES, database_engine

TOKEN = "ab" * 32


def _event(i, **over):
    e = {"event_id": f"e{i}", "kind": "booking", "token": TOKEN, "poi_id": "P1", "amount_cny": "120.50",
         "occurred_at": "2026-05-01T10:00:00+08:00", "recommendation_id": "r" * 32}
    e.update(over)
    return e


@pytest.fixture(params=DATABASES)
def engine(request, tmp_path):
    with database_engine(request, tmp_path / "ledger.sqlite", prefix="wenlv_ev") as engine:
        yield engine


def _count(engine) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(events)).scalar()


def test_bad_events_are_rejected_one_by_one_and_good_ones_kept(engine):
    batch = [_event(1), _event(2, token="158-6365-3206"), _event(3, kind="purchase"),
             _event(4, kind="click", amount_cny="5"), _event(5, occurred_at="2026-05-01T10:00:00"), _event(6)]
    result = record_events(engine, "t1", batch)
    assert result.accepted == ["e1", "e6"]
    reasons = {r[1]: r[2] for r in result.rejected}
    assert set(reasons) == {"e2", "e3", "e4", "e5"}
    assert "token" in reasons["e2"] and "kind" in reasons["e3"] and "amount_cny" in reasons["e4"]
    assert "time zone" in reasons["e5"]
    assert _count(engine) == 2


def test_retried_and_repeated_ids_are_stored_once(engine):
    first = record_events(engine, "t1", [_event(i) for i in range(10)])
    again = record_events(engine, "t1", [_event(i) for i in range(5, 15)] + [_event(14)])
    assert len(first.accepted) == 10
    assert again.accepted == [f"e{i}" for i in range(10, 15)]
    assert sorted(again.duplicates) == sorted([f"e{i}" for i in range(5, 10)] + ["e14"])
    assert _count(engine) == 15
    other = record_events(engine, "t2", [_event(1)])  # ids are per tenant
    assert other.accepted == ["e1"]


def test_interleaved_concurrent_batches_store_each_id_once(engine):
    def send(offset):
        for start in range(0, 200, 20):
            record_events(engine, "t1", [_event((start + j + offset) % 200) for j in range(20)])
    threads = [threading.Thread(target=send, args=(k * 7,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert _count(engine) == 200


def _campaign(engine, tenant: str) -> int:
    row = {"tenant": tenant, "name": f"c-{tenant}", "target_kind": "destination", "target": {}, "channel": "sms",
           "audience_size": 10, "starts_on": date(2026, 5, 1), "ends_on": date(2026, 5, 9), "holdout_seed": "s",
           "created_at": datetime.now(timezone.utc)}
    with engine.begin() as c:
        return c.execute(insert(campaigns).values(**row).returning(campaigns.c.id)).scalar_one()


def test_an_event_cannot_be_attached_to_another_tenants_campaign(engine):
    mine, theirs = _campaign(engine, "t1"), _campaign(engine, "t2")
    batch = [_event(1, campaign_id=mine, recommendation_id=None), _event(2, campaign_id=theirs, recommendation_id=None),
             _event(3, campaign_id=theirs + 100, recommendation_id=None), _event(4)]
    result = record_events(engine, "t1", batch)
    assert result.accepted == ["e1", "e4"]
    assert [(i, eid) for i, eid, _ in result.rejected] == [(1, "e2"), (2, "e3")]
    # another tenant's campaign reads exactly like a missing one
    assert result.rejected[0][2].replace(str(theirs), "N") == result.rejected[1][2].replace(str(theirs + 100), "N")
    with engine.connect() as c:
        assert c.execute(select(events.c.campaign_id).where(events.c.campaign_id.is_not(None))).scalars().all() == [mine]


def test_a_batch_above_the_limit_is_refused_whole(engine):
    with pytest.raises(BatchTooLarge, match="at most 5"):
        record_events(engine, "t1", [_event(i) for i in range(6)], max_batch=5)
    assert _count(engine) == 0


def test_out_of_range_times_and_control_characters_are_rejected_not_a_server_error(engine):
    # Both used to escape validation: the time as an OverflowError, the NUL as a PostgreSQL error failing the batch.
    batch = [_event(1, occurred_at="9999-12-31T23:59:59-14:00"), _event(2, poi_id="P\x001"),
             _event(3, recommendation_id="r\x07x"), _event(4), _event(5, campaign_id=2**40, recommendation_id=None)]
    result = record_events(engine, "t1", batch)
    assert result.accepted == ["e4"]
    reasons = {eid: why for _, eid, why in result.rejected}
    assert "occurred_at" in reasons["e1"] and "out of range" in reasons["e1"]
    assert "poi_id" in reasons["e2"] and "recommendation_id" in reasons["e3"] and "campaign_id" in reasons["e5"]
    assert _count(engine) == 1


def test_an_unknown_recommendation_id_is_stored_and_flagged_not_rejected(engine):
    """A finance ledger keeps every booking; one whose list the ledger does not hold (not yet written,
    dropped, or another tenant's) is stored and flagged as unattributed for now."""
    served = datetime(2026, 5, 1, 1, tzinfo=timezone.utc)
    with engine.begin() as c:
        c.execute(insert(served_lists), [
            {"recommendation_id": "known", "tenant": "hz", "token": TOKEN, "model_version": "4", "arm": "treatment",
             "poi_ids": ["P1"], "served_at": served},
            {"recommendation_id": "theirs", "tenant": "other", "token": TOKEN, "model_version": "4",
             "arm": "treatment", "poi_ids": ["P1"], "served_at": served}])
    batch = [_event(1, recommendation_id="known"), _event(2, recommendation_id="never-served"),
             _event(3, recommendation_id=None), _event(4, recommendation_id="theirs"), {"event_id": "bad"}]
    result = record_events(engine, "hz", batch)
    assert sorted(result.accepted) == ["e1", "e2", "e3", "e4"] and [r[0] for r in result.rejected] == [4]
    flagged = result.as_dict()["flagged"]
    assert [(f["index"], f["event_id"]) for f in flagged] == [(1, "e2"), (3, "e4")]
    assert flagged[0]["reason"] == flagged[1]["reason"] and "recommendation_id" in flagged[0]["reason"]
    assert _count(engine) == 4  # flagged events are stored
    again = record_events(engine, "hz", batch[:4])
    assert len(again.duplicates) == 4 and again.flagged == [] and _count(engine) == 4
