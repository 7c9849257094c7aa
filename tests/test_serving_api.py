"""The recommendations API on a real online store (Redis and SQLite alike): exclusion,
filters, k items, cold start, personalised=false, auth roles, tenant isolation, JSON errors,
no personal data in the store or logs."""
import json
import logging
from urllib.parse import quote

import numpy as np
import pytest
from fastapi.testclient import TestClient

from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.filters import PoiTable
from wenlv.serving.materialize import materialize
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore, UserRecord
from wenlv.serving.state import ServingState
from wenlv.bench.serving_fixtures import synthetic_bundle, token_for
from wenlv.privacy.tokens import VISITOR_TOKEN_PATTERN
from tests.support.stores import make_store

PHONE = "13800138000"


@pytest.fixture(scope="module")
def bundle():
    return synthetic_bundle(n_pois=80, n_users=60, factors=8, seed=5, visits_per_user=4, version="3")


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def env(request, tmp_path, bundle):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    raw = make_store(request.param, tmp_path, url)
    materialize(bundle, "3", raw, progress=False)
    store = ResilientStore(raw)
    model = ServingModel(bundle, "3", store, index_cache=None)
    keys = KeyStore(tmp_path / "keys.sqlite")
    key = {name: keys.create(role, tenant) for name, role, tenant in [
        ("app", "visitor-app", "hz"), ("marketer", "marketer", "hz"), ("analyst", "analyst", "hz"),
        ("other_analyst", "analyst", "sx"), ("admin", "admin", "hz")]}
    client = TestClient(create_app(ServingState(store, model), keys))
    yield client, key, model, raw
    client.app.state.serving.rec_log.close()  # its last flush must land before the cleanup
    raw.delete_prefix(raw.prefix)


def get(client, key, token, **params):
    return client.get(f"/v1/visitors/{token}/recommendations", params=params, headers={"Authorization": f"Bearer {key}"})


def visited_of(bundle, token):
    return set(bundle.history.loc[bundle.history.token == token, "poi_id"])


def test_known_visitor_gets_personal_scores_without_visited_pois(env, bundle):
    client, key, model, _ = env
    token = bundle.users.token[7]
    body = get(client, key["app"], token, k=10).json()
    assert body["strategy"] == "als" and body["personalized"] and not body["degraded"]
    assert body["model_version"] == "3" and len(body["recommendation_id"]) == 32
    ids = [it["poi_id"] for it in body["items"]]
    assert len(ids) == 10 and not set(ids) & visited_of(bundle, token)
    rows = model.table.indices(ids)
    expected = bundle.poi_factors[rows] @ bundle.user_factors[7]
    np.testing.assert_allclose([it["score"] for it in body["items"]], expected, rtol=1e-4)
    best_other = np.delete(bundle.poi_factors @ bundle.user_factors[7],
                           np.r_[rows, model.table.indices(list(visited_of(bundle, token)))]).max()
    assert min(expected) >= best_other - 1e-5  # the true top 10 among unvisited POIs
    names = {bundle.pois.name[i] for i in model.table.indices(list(visited_of(bundle, token)))}
    for it in body["items"]:
        assert it["reason"].startswith("similar to ") and it["reason"][11:].split(",")[0] in names


def test_the_online_store_vector_wins_over_the_bundle(env, bundle):
    client, key, model, raw = env
    token = bundle.users.token[2]
    flipped = -bundle.user_factors[2]
    raw.put_users("3", [(token, UserRecord(flipped, [], {}))])
    items = get(client, key["app"], token, k=5).json()["items"]
    want = np.argsort(-(bundle.poi_factors @ flipped))[:5]
    assert [it["poi_id"] for it in items] == list(bundle.pois.poi_id[want])


def test_exclude_visited_false_may_return_visited(env, bundle):
    client, key, *_ = env
    token = bundle.users.token[9]
    ids = {it["poi_id"] for it in get(client, key["app"], token, k=80, exclude_visited="false").json()["items"]}
    assert len(ids) == 80 and visited_of(bundle, token) <= ids


@pytest.mark.parametrize("params", [
    {"category": "museum"},
    {"city": "shaoxing"},
    {"near": "30.25,120.17", "radius_km": 4},
    {"open_now": "true", "at": "23:30"},
    {"category": "restaurant", "near": "30.0,120.58", "radius_km": 12, "open_now": "true", "at": "12:00"},
])
def test_filters_are_honoured_and_k_items_come_back_when_k_are_eligible(env, bundle, params):
    client, key, model, _ = env
    token = bundle.users.token[11]
    table = PoiTable(bundle.pois)
    from wenlv.serving.filters import Filters
    near = tuple(map(float, params["near"].split(","))) if "near" in params else None
    minute = int(params["at"][:2]) * 60 + int(params["at"][3:]) if "at" in params else None
    f = Filters(category=params.get("category"), city=params.get("city"), near=near, radius_km=params.get("radius_km"),
                open_at_minute=minute)
    eligible = table.mask(f, table.indices(list(visited_of(bundle, token))))
    eligible_ids = set(bundle.pois.poi_id[eligible])
    assert len(eligible_ids) > 0
    for k in (1, 5, 100):
        items = get(client, key["app"], token, k=k, **params).json()["items"]
        assert len(items) == min(k, len(eligible_ids))
        assert {it["poi_id"] for it in items} <= eligible_ids
    # the same filters for a brand-new visitor: popularity in context
    items = get(client, key["app"], token_for(1, "new"), k=100, **params).json()["items"]
    assert {it["poi_id"] for it in items} == set(bundle.pois.poi_id[table.mask(f)])


def test_unknown_token_gets_popularity_in_context(env, bundle):
    client, key, *_ = env
    body = get(client, key["app"], "feedbeef" * 4, k=5).json()
    assert body["strategy"] == "popularity" and body["personalized"] is False
    want = bundle.pois.sort_values("popularity", ascending=False, kind="stable").poi_id[:5]
    assert [it["poi_id"] for it in body["items"]] == list(want)
    assert all(it["reason"].startswith("popular ") for it in body["items"])


def test_personalized_false_uses_nothing_about_the_visitor(env, bundle):
    client, key, *_ = env
    known = get(client, key["app"], bundle.users.token[1], k=8, personalized="false").json()
    unknown = get(client, key["app"], token_for(2, "else"), k=8, personalized="false").json()
    assert known["personalized"] is False and known["strategy"] == "popularity"
    assert [i["poi_id"] for i in known["items"]] == [i["poi_id"] for i in unknown["items"]]


def test_cold_start_tower_from_side_features(tmp_path, bundle):
    torch = pytest.importorskip("torch")
    features = ["home_distance_km", "trip_days", "age_band=25-34"]
    towers = tmp_path / "towers"
    towers.mkdir()
    torch.manual_seed(0)
    layer = torch.nn.Linear(len(features), bundle.factors)
    torch.jit.script(layer).save(str(towers / "user_tower.pt"))
    (towers / "spec.json").write_text(json.dumps({"user_tower": "user_tower.pt", "user_features": features}))
    with_tower = synthetic_bundle(n_pois=80, n_users=60, factors=8, seed=5, visits_per_user=4, version="3")
    with_tower.towers_dir = towers
    raw = make_store("sqlite", tmp_path)
    newcomer = token_for(999, "new")
    raw.put_users("3", [(newcomer, UserRecord(None, [], {"home_distance_km": 300.0, "trip_days": 2.0, "age_band": "25-34"}))])
    store = ResilientStore(raw)
    keys = KeyStore(tmp_path / "keys.sqlite")
    key = keys.create("visitor-app", "hz")
    client = TestClient(create_app(ServingState(store, ServingModel(with_tower, "3", store, index_cache=None)), keys))
    body = get(client, key, newcomer, k=5).json()
    assert body["strategy"] == "cold_start_tower" and body["personalized"] is True
    with torch.no_grad():
        vec = layer(torch.tensor([[300.0, 2.0, 1.0]])).numpy()[0]
    want = np.argsort(-(with_tower.poi_factors @ vec))[:5]
    assert [it["poi_id"] for it in body["items"]] == list(with_tower.pois.poi_id[want])
    assert get(client, key, token_for(3, "noside"), k=5).json()["strategy"] == "popularity"


def test_auth_roles_and_json_errors(env, bundle):
    client, key, *_ = env
    token = bundle.users.token[0]
    no_key = client.get(f"/v1/visitors/{token}/recommendations")
    assert no_key.status_code == 401 and no_key.json()["error"] == "unauthorized"
    assert no_key.headers["www-authenticate"] == "Bearer"
    assert get(client, "wlv_nope_nope", token).status_code == 401
    forbidden = get(client, key["marketer"], token)
    assert forbidden.status_code == 403 and "marketer" in forbidden.json()["message"]
    assert get(client, key["analyst"], token).status_code == 403
    assert get(client, key["admin"], token).status_code == 200
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert client.get(path).status_code == 200, path
    assert "wenlv_http_requests_total" in client.get("/metrics").text


def test_a_tenant_never_sees_another_tenants_recommendations(env, bundle):
    client, key, _, raw = env
    served = get(client, key["app"], bundle.users.token[4], k=3).json()
    rid = served["recommendation_id"]
    mine = client.get(f"/v1/recommendations/{rid}", headers={"Authorization": f"Bearer {key['analyst']}"})
    assert mine.status_code == 200
    assert mine.json()["poi_ids"] == [it["poi_id"] for it in served["items"]] and "token" not in mine.json()
    theirs = client.get(f"/v1/recommendations/{rid}", headers={"Authorization": f"Bearer {key['other_analyst']}"})
    assert theirs.status_code == 404 and theirs.json()["error"] == "not_found"
    rec_log = client.app.state.serving.rec_log
    rec_log.flush()  # from the buffer to the online store: the same answers
    assert rec_log.pending == 0 and raw.get_recommendation("hz", rid)["poi_ids"] == mine.json()["poi_ids"]
    assert raw.get_recommendation("sx", rid) is None
    assert client.get(f"/v1/recommendations/{rid}", headers={"Authorization": f"Bearer {key['analyst']}"}).status_code == 200
    assert client.get(f"/v1/recommendations/{rid}", headers={"Authorization": f"Bearer {key['other_analyst']}"}).status_code == 404


@pytest.mark.parametrize("params, needle", [
    ({"near": "north"}, "near must be"), ({"near": "95,10"}, "out of range"), ({"radius_km": 3}, "needs near"),
    ({"at": "10:00"}, "open_now"), ({"k": 0}, "k"), ({"k": "many"}, "k"), ({"category": "zoo"}, "category"),
    ({"open_now": "true", "at": "25:00"}, "at"),
])
def test_malformed_input_is_a_clear_4xx(env, params, needle):
    client, key, *_ = env
    r = get(client, key["app"], token_for(4, "new"), **params)
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and needle in r.json()["message"]


PHONE_SPELLINGS = [PHONE, "+86" + PHONE, "158-6365-3206", "86-158-6365-3206", "86_15863653206", "15863653206",
                   "158 6365 3206", "0086" + PHONE, "A" * 32, "feedbeef" * 4 + "\n"]


def digits(text: str) -> str:
    return "".join(c for c in text if c.isdigit())


def test_phone_numbers_in_any_spelling_are_refused_and_never_reach_the_store_or_logs(env, bundle, caplog):
    """Regression (issue 13.5): `158-6365-3206` and friends passed as tokens and were stored for 7 days."""
    client, key, _, raw = env
    caplog.set_level(logging.DEBUG)
    auth = {"Authorization": f"Bearer {key['app']}"}
    itinerary = {"city": "hangzhou", "start_date": "2026-05-01", "start_location": {"lat": 30.25, "lon": 120.17}}
    for spelling in PHONE_SPELLINGS:
        r = client.get(f"/v1/visitors/{quote(spelling, safe='')}/recommendations", headers=auth)
        assert r.status_code == 422, (spelling, r.status_code)
        assert "32 lowercase hex" in r.json()["message"] and "phone" in r.json()["message"]
        assert spelling not in r.text
        r = client.post("/v1/itineraries", json={**itinerary, "token": spelling}, headers=auth)
        assert r.status_code == 422 and "32 lowercase hex" in r.json()["message"], spelling
        assert spelling not in r.text
    assert get(client, key["app"], bundle.users.token[0]).status_code == 200  # a real token still works
    client.app.state.serving.rec_log.flush()
    ours = [rec.getMessage() for rec in caplog.records if not rec.name.startswith("httpx")]  # httpx is the test's client
    for spelling in PHONE_SPELLINGS[:-3]:
        assert not any(spelling in m or digits(spelling) in digits(m) for m in ours), spelling
        for k in raw.scan_keys(raw.prefix):
            assert spelling not in k and spelling.encode() not in raw.get(k)


def test_the_token_pattern_is_in_the_openapi_schema(env):
    client, *_ = env
    spec = client.get("/openapi.json").json()
    params = spec["paths"]["/v1/visitors/{token}/recommendations"]["get"]["parameters"]
    assert next(p for p in params if p["name"] == "token")["schema"]["pattern"] == VISITOR_TOKEN_PATTERN
    body = spec["components"]["schemas"]["ItineraryRequest"]["properties"]["token"]
    assert VISITOR_TOKEN_PATTERN in json.dumps(body)


def test_logs_name_the_route_template_never_the_token(env, bundle, caplog, monkeypatch):
    """Regression (issue 13.5): the 500 log line carried the request path, and with it the visitor's token."""
    client, key, model, _ = env
    caplog.set_level(logging.DEBUG)
    token = bundle.users.token[5]
    assert get(client, key["app"], token).status_code == 200
    assert get(client, key["app"], token, k=0).status_code == 422

    def fails(self, token, **kwargs):  # an unexpected failure whose text quotes the request, as real ones can
        raise RuntimeError(f"cannot score {token}")

    monkeypatch.setattr(type(model), "recommend", fails)
    r = get(client, key["app"], token)
    assert r.status_code == 500 and r.json()["error"] == "internal_error" and token not in r.text
    records = [rec for rec in caplog.records if not rec.name.startswith("httpx")]
    text = "\n".join(rec.getMessage() + (logging.Formatter().formatException(rec.exc_info) if rec.exc_info else "")
                     for rec in records)
    assert token not in text
    template = "/v1/visitors/{token}/recommendations"
    assert f"unhandled RuntimeError on GET {template}" in text
    access = [rec.getMessage() for rec in records if rec.name == "wenlv.serving.access"]
    assert [a.split()[2] for a in access] == ["200", "422", "500"] and all(template in a for a in access)


def test_poi_scores_for_itineraries(env, bundle):
    _, _, model, _ = env
    scores, personal, strategy = model.poi_scores(bundle.users.token[3], personalized=True)
    assert personal and strategy == "als" and scores.shape == (len(bundle.pois),)
    np.testing.assert_allclose(scores, bundle.poi_factors @ bundle.user_factors[3], rtol=1e-5)
    scores, personal, strategy = model.poi_scores(bundle.users.token[3], personalized=False)
    assert not personal and strategy == "popularity" and scores.argmax() == bundle.pois.popularity.argmax()


def test_readyz_shows_where_the_store_is_to_admin_keys_only(env, tmp_path):
    """Regression (issue 13, smaller points): /readyz told anyone the store's file path or Redis host."""
    client, key, _, raw = env
    where = raw.describe()
    assert where != raw.backend  # sqlite:/path or redis://host:port/db
    anonymous = client.get("/readyz").json()
    assert anonymous["store"] == raw.backend and where not in json.dumps(anonymous)
    for name in ("app", "marketer", "analyst"):
        seen = client.get("/readyz", headers={"Authorization": f"Bearer {key[name]}"}).json()
        assert seen["store"] == raw.backend, name
    assert client.get("/readyz", headers={"Authorization": f"Bearer {key['admin']}"}).json()["store"] == where


@pytest.mark.parametrize("scheme, status", [("Bearer", 200), ("bearer", 200), ("BEARER", 200), ("Basic", 401),
                                            ("Token", 401), ("", 401)])
def test_the_bearer_scheme_is_case_insensitive_and_nothing_else_is_accepted(env, bundle, scheme, status):
    client, key, *_ = env
    header = f"{scheme} {key['app']}".strip()
    r = client.get(f"/v1/visitors/{bundle.users.token[0]}/recommendations", headers={"Authorization": header})
    assert r.status_code == status, (scheme, r.text[:200])
    if status == 401:
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
