"""Served lists kept in the ledger (not only the store's 7-day cache), and the recommendation
surface's holdout: a stable random share of visitors gets the non-personalised list, its arm
recorded and shown."""
from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from wenlv.db.schema import served_lists
from wenlv.ledger.served import NOT_A_TOKEN, QUEUE_FULL, SHUTDOWN, ServedListWriter, served_row
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.holdout import surface_arm
from wenlv.serving.materialize import materialize
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore
from wenlv.serving.state import ServingState
from wenlv.settings import get_settings, reset_settings
from wenlv.bench.serving_fixtures import synthetic_bundle, token_for
from tests.support.campaign_db import postgres_engine, sqlite_engine
from tests.support.stores import make_store


def rows_in(engine) -> dict[str, dict]:
    with engine.connect() as c:
        return {r.recommendation_id: r._asdict() for r in c.execute(select(served_lists))}


def row(i: int, token: str | None = None) -> dict:
    return served_row("hz", f"{i:032x}", token or token_for(i), "3", "treatment", ["P1", "P2"], time.time())


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    ctx = (sqlite_engine(tmp_path / "served.sqlite") if request.param == "sqlite"
           else postgres_engine(request.getfixturevalue("postgres_url"), prefix="wenlv_served"))
    with ctx as engine:
        yield engine


def test_writer_stores_each_list_once_and_close_drains_the_queue(engine):
    writer = ServedListWriter(lambda: engine, interval_s=5.0, batch=7)  # the thread sleeps: close() must drain
    for i in range(40):
        assert writer.add(row(i))
    writer.add(row(3))  # the same list again (a retry) is stored once
    writer.close()
    stored = rows_in(engine)
    assert len(stored) == 40 and writer.written == 41 and writer.pending == 0
    assert stored[f"{5:032x}"]["poi_ids"] == ["P1", "P2"] and stored[f"{5:032x}"]["arm"] == "treatment"


def test_a_full_queue_drops_and_counts_and_nothing_is_lost_silently(engine):
    drops = []
    up = {"db": False}

    def make():
        if not up["db"]:
            raise ConnectionError("database away")
        return engine

    writer = ServedListWriter(make, max_pending=10, batch=4, interval_s=0.01, on_drop=lambda r, n: drops.append((r, n)))
    kept = [i for i in range(30) if writer.add(row(i))]
    assert not writer.add(row(99, token="13800138000"))  # not a token: never stored, counted
    time.sleep(0.1)
    assert len(kept) < 30 and writer.dropped[QUEUE_FULL] == 30 - len(kept)
    assert writer.dropped[NOT_A_TOKEN] == 1
    up["db"] = True
    writer.close()
    assert len(rows_in(engine)) == len(kept) and writer.dropped[SHUTDOWN] == 0
    assert sum(n for r, n in drops if r == QUEUE_FULL) == 30 - len(kept)


def test_close_counts_what_cannot_be_written():
    def away():
        raise ConnectionError("database away")

    writer = ServedListWriter(away, interval_s=0.01)
    for i in range(5):
        writer.add(row(i))
    writer.close(timeout_s=0.5)
    assert writer.dropped[SHUTDOWN] == 5 and writer.pending == 0
    assert not writer.add(row(6)) and writer.dropped[SHUTDOWN] == 6


@pytest.fixture
def served_app(tmp_path, engine, monkeypatch):
    monkeypatch.setenv("WENLV_RECOMMENDATION_HOLDOUT", "0.3")
    monkeypatch.setenv("WENLV_HOLDOUT_KEY", "k1")
    reset_settings()
    bundle = synthetic_bundle(n_pois=40, n_users=60, factors=4, seed=2, visits_per_user=3, version="7")
    raw = make_store("sqlite", tmp_path)
    materialize(bundle, "7", raw, progress=False)
    store = ResilientStore(raw)
    keys = KeyStore(tmp_path / "keys.sqlite", pepper=b"p")
    key = keys.create("visitor-app", "hz")

    def app():
        return create_app(ServingState(store, ServingModel(bundle, "7", store, index_cache=None)), keys, db=engine)

    yield app, key, bundle, engine


def test_served_lists_reach_the_ledger_with_their_arm_and_the_holdout_gets_the_popularity_list(served_app):
    app, key, bundle, engine = served_app
    tokens = list(bundle.users.token[:60])
    answers = {}
    with TestClient(app()) as client:  # leaving the block runs the shutdown: the writer drains
        for token in tokens:
            r = client.get(f"/v1/visitors/{token}/recommendations", params={"k": 5},
                           headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
            answers[token] = r.json()
        metrics = client.get("/metrics").text
    holdout = [t for t, a in answers.items() if a["arm"] == "holdout"]
    assert 5 <= len(holdout) <= 30  # 30% of 60, give or take chance
    for token, a in answers.items():
        assert a["arm"] == surface_arm(token, get_settings())
        if a["arm"] == "holdout":
            assert a["strategy"] == "popularity" and not a["personalized"]
        else:
            assert a["strategy"] == "als" and a["personalized"]
    stored = rows_in(engine)
    assert len(stored) == 60
    for token, a in answers.items():
        kept = stored[a["recommendation_id"]]
        assert (kept["tenant"], kept["token"], kept["model_version"], kept["arm"]) == ("hz", token, "7", a["arm"])
        assert kept["poi_ids"] == [it["poi_id"] for it in a["items"]]
    assert "# TYPE wenlv_served_lists_dropped" in metrics

    # a restart (a new app, same key) puts every visitor in the same arm
    with TestClient(app()) as client:
        for token in tokens[:20]:
            r = client.get(f"/v1/visitors/{token}/recommendations", headers={"Authorization": f"Bearer {key}"})
            assert r.json()["arm"] == answers[token]["arm"]


def test_the_arm_depends_on_the_key_and_the_fraction_only(monkeypatch):
    tokens = [token_for(i) for i in range(2000)]
    monkeypatch.setenv("WENLV_HOLDOUT_KEY", "k1")
    monkeypatch.setenv("WENLV_RECOMMENDATION_HOLDOUT", "0.05")
    reset_settings()
    first = [surface_arm(t) for t in tokens]
    share = first.count("holdout") / len(tokens)
    assert 0.03 < share < 0.07
    assert [surface_arm(t) for t in tokens] == first
    monkeypatch.setenv("WENLV_HOLDOUT_KEY", "k2")
    reset_settings()
    assert [surface_arm(t) for t in tokens] != first  # another key, another sample
    monkeypatch.setenv("WENLV_RECOMMENDATION_HOLDOUT", "0")
    reset_settings()
    assert {surface_arm(t) for t in tokens} == {"treatment"}
