"""What /metrics tells an operator, each signal triggered for real and read back from a scrape: the model version
serving and its swaps, versions refused at load, served lists dropped, itinerary solve time, the online store's
circuit, and rate-limit refusals (every role's series present from the start)."""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from wenlv.bench.serving_fixtures import synthetic_bundle, token_for
from wenlv.db import engine as db_engine
from wenlv.serving.app import create_app
from wenlv.serving.auth import ROLES, KeyStore
from wenlv.serving.database import served_lists_writer
from wenlv.serving.lifecycle import ChampionFollower
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import RedisStore, ResilientStore, StoreUnavailable
from wenlv.serving.runtime import free_port
from wenlv.serving.state import ServingState
from wenlv.training.digests import BundleIntegrityError
from tests.support.stores import make_store


def scrape(client) -> dict:
    """{(sample name, frozenset(labels)): value} from one GET /metrics."""
    r = client.get("/metrics")
    assert r.status_code == 200
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, frozenset(labels.items())))


@pytest.fixture(scope="module")
def bundles():
    return {v: synthetic_bundle(n_pois=40, n_users=20, factors=8, seed=int(v), version=v) for v in ("1", "2")}


def test_a_champion_swap_and_refused_versions_show_on_metrics(tmp_path, bundles):
    store = ResilientStore(make_store("sqlite", tmp_path))
    champion, broken = ["1"], {}

    def loader():
        if champion[0] in broken:
            raise broken[champion[0]]
        return bundles.get(champion[0], bundles["2"]), champion[0]

    def build(bundle, version):
        if version == "4":
            raise ValueError("user_factors: a value of magnitude 3e+38 exceeds the bound")
        return ServingModel(bundle, version, store, index_cache=None)

    state = ServingState(store)
    follower = ChampionFollower(state, version_source=lambda: champion[0], loader=loader, build=build,
                                materialize_on_swap=False)
    assert follower.check_once()
    with TestClient(create_app(state, KeyStore(tmp_path / "keys.sqlite"))) as client:
        before = scrape(client)
        assert value(before, "wenlv_model_info", version="1") == 1
        assert value(before, "wenlv_model_swaps_total") == 1  # the first load is a swap in too

        champion[0] = "2"
        assert follower.check_once()
        after = scrape(client)
        assert value(after, "wenlv_model_info", version="2") == 1
        assert value(after, "wenlv_model_info", version="1") is None, "the old version must leave the gauge"
        assert value(after, "wenlv_model_swaps_total") == 2

        champion[0], broken["3"] = "3", BundleIntegrityError("poi_factors.npy does not match its recorded sha256")
        assert not follower.check_once()
        champion[0] = "4"
        assert not follower.check_once()
        refused = scrape(client)
        assert value(refused, "wenlv_model_load_failures_total", reason="integrity") == 1
        assert value(refused, "wenlv_model_load_failures_total", reason="build") == 1
        assert value(refused, "wenlv_model_info", version="2") == 1, "a refused version leaves the old one serving"
        assert value(refused, "wenlv_model_swaps_total") == 2
        assert value(scrape(client), "wenlv_model_load_failures_total", reason="integrity") == 1, "counted once"


def _app(tmp_path, bundles, store=None, **kw):
    store = store or ResilientStore(make_store("sqlite", tmp_path))
    model = ServingModel(bundles["1"], "1", store, index_cache=None)
    keys = KeyStore(tmp_path / "keys.sqlite")
    return create_app(ServingState(store, model), keys, **kw), keys


def test_dropped_served_lists_show_on_metrics(tmp_path, bundles):
    app, _ = _app(tmp_path, bundles)
    with TestClient(app) as client:
        assert value(scrape(client), "wenlv_served_lists_dropped_total", reason="not_a_token") == 0
        writer = served_lists_writer(app)
        row = {"token": "not-a-token", "tenant": "hz", "recommendation_id": "r" * 32}
        assert not writer.add(row)
        writer.close()
        assert not writer.add({**row, "token": "a" * 32})
        samples = scrape(client)
    assert value(samples, "wenlv_served_lists_dropped_total", reason="not_a_token") == 1
    assert value(samples, "wenlv_served_lists_dropped_total", reason="shutdown") == 1


def test_itinerary_solve_time_shows_on_metrics(tmp_path, bundles):
    app, keys = _app(tmp_path, bundles)
    key = keys.create("visitor-app", "hz")
    with TestClient(app) as client:
        assert value(scrape(client), "wenlv_itinerary_solve_seconds_count") == 0
        city = bundles["1"].pois.city.iloc[0]
        row = bundles["1"].pois.iloc[0]
        r = client.post("/v1/itineraries", headers={"Authorization": f"Bearer {key}"},
                        json={"city": city, "start_date": "2026-05-01", "days": 1, "pace": 2, "travel_mode": "drive",
                              "start_location": {"lat": float(row.lat), "lon": float(row.lon)}})
        assert r.status_code == 200, r.text
        samples = scrape(client)
    assert value(samples, "wenlv_itinerary_solve_seconds_count") == 1
    assert value(samples, "wenlv_itinerary_solve_seconds_sum") == pytest.approx(r.json()["solver"]["seconds"], abs=1e-3)


def test_the_store_circuit_state_shows_on_metrics(tmp_path, bundles):
    app, _ = _app(tmp_path, bundles)
    with TestClient(app) as client:
        assert value(scrape(client), "wenlv_online_store_circuit_state") == 0  # closed: a working store
    # A backoff long enough that a scrape on a loaded machine still sees the circuit open (0.5 s was not, under load).
    dead = ResilientStore(RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2), first_backoff_s=3.0)
    (tmp_path / "dead").mkdir()
    app, _ = _app(tmp_path / "dead", bundles, store=dead)
    with TestClient(app) as client:
        with pytest.raises(StoreUnavailable):
            dead.ping()
        assert value(scrape(client), "wenlv_online_store_circuit_state") == 2  # open: calls fail fast
        time.sleep(max(0.0, dead._open_until - time.monotonic()) + 0.05)  # the backoff has passed
        assert value(scrape(client), "wenlv_online_store_circuit_state") == 1  # half-open: the next call is a trial


def test_every_role_has_a_rate_limit_series_from_the_start(tmp_path, bundles):
    app, _ = _app(tmp_path, bundles)
    with TestClient(app) as client:
        samples = scrape(client)
    assert {role: value(samples, "wenlv_rate_limited_total", role=role) for role in ROLES} == {r: 0 for r in ROLES}


def test_events_posted_are_counted_by_outcome(tmp_path, bundles):
    engine = db_engine.make_engine(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    db_engine.migrate(engine)
    app, keys = _app(tmp_path, bundles, db=engine)
    key = keys.create("visitor-app", "hz")

    def event(i, **over):
        return {"event_id": f"e{i}", "kind": "click", "token": token_for(i), "poi_id": "P1",
                "occurred_at": "2026-05-01T10:00:00+08:00", "recommendation_id": "r" * 32, **over}

    with TestClient(app) as client:
        for batch in ([event(1), event(2), event(3, kind="purchase")], [event(2), event(4)]):
            r = client.post("/v1/events", json={"events": batch}, headers={"Authorization": f"Bearer {key}"})
            assert r.status_code == 200, r.text
        samples = scrape(client)
    engine.dispose()
    assert {o: value(samples, "wenlv_events_total", outcome=o) for o in ("accepted", "duplicate", "rejected")} == \
        {"accepted": 3, "duplicate": 1, "rejected": 1}


def test_the_dashboard_and_the_operations_doc_name_only_metrics_the_server_exports(tmp_path, bundles):
    """A renamed metric must not leave an empty panel or a dead alert behind."""
    app, _ = _app(tmp_path, bundles)
    with TestClient(app) as client:
        exported = set(re.findall(r"^# HELP ((?:wenlv|process)_[a-z_]+) ", client.get("/metrics").text, re.M))
    docs = Path(__file__).resolve().parents[1] / "docs"
    dashboard = json.loads((docs / "grafana" / "wenlv.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    used = {m for e in exprs for m in re.findall(r"\b(?:wenlv|process)_[a-z_]+", e)}
    used |= set(re.findall(r"\b(?:wenlv|process)_[a-z_]+", (docs / "operations.md").read_text()))
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for m in used}
    assert len(dashboard["panels"]) >= 10 and used
    assert used <= exported, f"not on /metrics: {sorted(used - exported)}"
