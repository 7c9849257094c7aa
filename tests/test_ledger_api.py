"""POST /v1/events on the real app and database: who may post, per-event reasons, duplicates acknowledged,
tenant separation, the batch limit, and retried and interleaved batches from concurrent clients."""
from __future__ import annotations

import threading

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from wenlv.db.schema import events
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.state import ServingState
from wenlv.settings import reset_settings
from tests.support.campaign_db import postgres_engine, sqlite_engine
from tests.test_marketing_api import BODY

TOKEN = "cd" * 16


def event(i, **over) -> dict:
    e = {"event_id": f"ev-{i}", "kind": "booking", "token": TOKEN, "poi_id": "P7", "amount_cny": "88.00",
         "occurred_at": "2026-05-01T10:00:00+08:00", "recommendation_id": "a" * 32}
    e.update(over)
    return e


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def app(request, tmp_path):
    ctx = (sqlite_engine(tmp_path / "ledger.sqlite") if request.param == "sqlite"
           else postgres_engine(request.getfixturevalue("postgres_url"), prefix="wenlv_evapi"))
    with ctx as engine:
        keys = KeyStore(tmp_path / "keys.sqlite", pepper=b"p")
        key = {(role, tenant): keys.create(role, tenant) for role in ("visitor-app", "marketer", "analyst", "admin")
               for tenant in ("hz", "sx")}
        with TestClient(create_app(ServingState(), keys, db=engine)) as client:
            yield client, key, engine


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def stored(engine, tenant=None) -> list[str]:
    query = select(events.c.event_id)
    if tenant:
        query = query.where(events.c.tenant == tenant)
    with engine.connect() as c:
        return sorted(c.execute(query).scalars())


def test_visitor_app_posts_bad_events_get_reasons_good_ones_are_kept(app):
    client, key, engine = app
    batch = [event(0), event(1, token="13812345678"), event(2, kind="click", amount_cny="3"), {"event_id": "ev-3"},
             "not an event", event(5, occurred_at="yesterday"), event(6, kind="impression", amount_cny=None)]
    r = client.post("/v1/events", json={"events": batch}, headers=auth(key[("visitor-app", "hz")]))
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["accepted"], body["duplicates"]) == (2, 0)
    assert [(x["index"], x["event_id"]) for x in body["rejected"]] == [(1, "ev-1"), (2, "ev-2"), (3, "ev-3"),
                                                                       (4, None), (5, "ev-5")]
    reasons = {x["index"]: x["reason"] for x in body["rejected"]}
    assert "token" in reasons[1] and "13812345678" not in reasons[1]
    assert "amount_cny" in reasons[2] and "kind" in reasons[3] and "occurred_at" in reasons[5]
    assert stored(engine) == ["ev-0", "ev-6"]


def test_only_visitor_app_and_admin_may_post(app):
    client, key, _ = app
    for role, status in (("visitor-app", 200), ("admin", 200), ("marketer", 403), ("analyst", 403)):
        r = client.post("/v1/events", json={"events": [event(role)]}, headers=auth(key[(role, "hz")]))
        assert r.status_code == status, (role, r.text)
    assert client.post("/v1/events", json={"events": [event(9)]}).status_code == 401


def test_a_retry_is_acknowledged_and_stored_once_per_tenant(app):
    client, key, engine = app
    visitor = auth(key[("visitor-app", "hz")])
    first = client.post("/v1/events", json={"events": [event(i) for i in range(5)]}, headers=visitor).json()
    again = client.post("/v1/events", json={"events": [event(i) for i in range(3, 8)] + [event(7)]}, headers=visitor).json()
    assert (first["accepted"], first["duplicates"]) == (5, 0)
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (3, 3, [])
    other = client.post("/v1/events", json={"events": [event(0)]}, headers=auth(key[("visitor-app", "sx")])).json()
    assert other["accepted"] == 1  # the same id from another tenant is another event
    assert stored(engine, "hz") == sorted(f"ev-{i}" for i in range(8)) and stored(engine, "sx") == ["ev-0"]


def test_a_visitor_key_cannot_attach_events_to_another_tenants_campaign(app):
    client, key, engine = app
    theirs = client.post("/v1/campaigns", json=BODY, headers=auth(key[("marketer", "sx")])).json()["id"]
    mine = client.post("/v1/campaigns", json=BODY, headers=auth(key[("marketer", "hz")])).json()["id"]
    batch = [event(1, campaign_id=theirs, recommendation_id=None), event(2, campaign_id=mine, recommendation_id=None)]
    body = client.post("/v1/events", json={"events": batch}, headers=auth(key[("visitor-app", "hz")])).json()
    assert body["accepted"] == 1
    assert body["rejected"] == [{"index": 0, "event_id": "ev-1",
                                 "reason": f"campaign_id: no campaign {theirs} for this tenant"}]
    assert stored(engine) == ["ev-2"]


def test_a_batch_above_the_setting_is_refused_with_413(app, monkeypatch):
    client, key, engine = app
    monkeypatch.setenv("WENLV_EVENTS_MAX_BATCH", "3")
    reset_settings()
    r = client.post("/v1/events", json={"events": [event(i) for i in range(4)]}, headers=auth(key[("visitor-app", "hz")]))
    assert r.status_code == 413 and r.json()["error"] == "batch_too_large" and "at most 3" in r.json()["message"]
    assert stored(engine) == []
    r = client.post("/v1/events", json={"events": "nope"}, headers=auth(key[("visitor-app", "hz")]))
    assert r.status_code == 422


def test_concurrent_clients_retrying_overlapping_batches_store_each_event_once(app):
    client, key, engine = app
    visitor = auth(key[("visitor-app", "hz")])
    acknowledged, answers, lock = set(), [], threading.Lock()

    def send(offset):
        for start in range(0, 300, 30):
            batch = [event((start + j + offset) % 300) for j in range(30)]
            for _ in range(2):  # every batch is sent twice, as a client does when an answer is lost
                r = client.post("/v1/events", json={"events": batch}, headers=visitor)
                with lock:
                    answers.append((r.status_code, r.json().get("accepted", 0) + r.json().get("duplicates", 0)))
            with lock:
                acknowledged.update(e["event_id"] for e in batch)

    threads = [threading.Thread(target=send, args=(k * 11,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == [(200, 30)] * 80
    ids = stored(engine)
    assert len(ids) == len(set(ids)) == 300 and set(ids) == acknowledged
    with engine.connect() as c:
        assert c.execute(select(func.count()).select_from(events)).scalar() == 300
