"""Recording events: one by one validation, idempotent storage, on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
import uuid

import pytest
from sqlalchemy import create_engine, func, select, text

from wenlv.db import engine as db_engine
from wenlv.db.schema import events
from wenlv.ledger.events import record_events

TOKEN = "ab" * 32


def _event(i, **over):
    e = {"event_id": f"e{i}", "kind": "booking", "token": TOKEN, "poi_id": "P1", "amount_cny": "120.50",
         "occurred_at": "2026-05-01T10:00:00+08:00", "campaign_id": 1}
    e.update(over)
    return e


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        engine = db_engine.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
        db_engine.migrate(engine)
        yield engine
        engine.dispose()
        return
    url = request.getfixturevalue("postgres_url")
    schema = f"wenlv_ev_{uuid.uuid4().hex[:8]}"
    admin = create_engine(db_engine.normalise_url(url))
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    engine = db_engine.make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    db_engine.migrate(engine)
    yield engine
    engine.dispose()
    with admin.begin() as c:
        c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


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
