"""POST /v1/campaigns/{id}/audience on the real app and database: audiences computed from the served model
(affinity, lookalike) and from the configured propensity scores (destination); refusals with their reasons."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import update

from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.db.schema import audience_members
from wenlv.marketing import audience, served, targets
from wenlv.marketing import campaigns as store
from wenlv.serving.model import ServingModel
from wenlv.serving.state import ServingState
from tests.support.campaign_api import TENANTS, auth, campaign_app
from tests.support.campaign_db import DATABASES
from tests.test_marketing_audience import tokens

BASE = {"name": "autumn", "channel": "sms", "audience_size": 120, "holdout_fraction": 0.2,
        "starts_on": "2026-12-10", "ends_on": "2026-12-31"}


@pytest.fixture(scope="module")
def served_inputs(tmp_path_factory):
    """A bundle (the served model), its feature blocks (consent) and a destination scores file."""
    root = tmp_path_factory.mktemp("served")
    bundle = synthetic_bundle(n_pois=30, n_users=500, factors=8, seed=9, version="4")
    users = bundle.users.token.to_numpy()
    rng = np.random.default_rng(0)
    sharing, internet = rng.random(len(users)) < 0.7, rng.random(len(users)) < 0.5
    (root / "features" / "carrier").mkdir(parents=True)
    pd.DataFrame({"token": users[sharing]}).to_parquet(root / "features" / "carrier" / "user_features.parquet")
    pd.DataFrame({"token": users, "in_internet": internet}).to_parquet(root / "features" / "carrier" / "users.parquet")
    cities = rng.choice(np.array(["Hangzhou", "Shanghai", "Suzhou"], dtype=object), len(users))
    (root / "features_city" / "carrier").mkdir(parents=True)  # blocks whose carrier features carry a home city
    pd.DataFrame({"token": users[sharing], "home_city": cities[sharing]}).to_parquet(
        root / "features_city" / "carrier" / "user_features.parquet")
    pd.DataFrame({"token": users, "in_internet": internet}).to_parquet(
        root / "features_city" / "carrier" / "users.parquet")
    people = tokens(800, "dest")
    destination = targets.from_propensity(people, rng.normal(size=800), rng.random(800) < 0.6,
                                          rng.choice(np.array(["Hangzhou", "Shanghai"], dtype=object), 800), "propensity@x")
    served.save_scores(root / "scores.parquet", destination, {"scored_as_of": "2026-11-30"})
    return bundle, root, sharing, destination, cities


@pytest.fixture(params=DATABASES)
def app(request, tmp_path, monkeypatch, served_inputs):
    bundle, root, _, _, _ = served_inputs
    env = {"WENLV_CAMPAIGN_FEATURES": str(root / "features"), "WENLV_CAMPAIGN_SCORES": str(root / "scores.parquet"),
           "WENLV_EXPORT_SECRET": "s"}
    state = ServingState(model=ServingModel(bundle, "4", None, index_cache=None))
    with campaign_app(request, tmp_path, monkeypatch, env, state) as (client, key, engine):
        for tenant in TENANTS:
            store.set_min_audience_size(engine, tenant, 50)
        yield client, key, engine, state


def create(client, key, role="marketer", tenant="hz", **over) -> dict:
    made = client.post("/v1/campaigns", json=BASE | over, headers=auth(key[(role, tenant)]))
    assert made.status_code == 201, made.text
    return made.json()


def test_affinity_audience_from_the_served_model_is_the_top_n_among_the_consented(app, served_inputs):
    client, key, engine, _ = app
    bundle, _, sharing, _, _ = served_inputs
    pois = bundle.pois.poi_id.astype(str).tolist()[:3]
    campaign = create(client, key, target_kind="pois", poi_ids=pois)
    answer = client.post(f"/v1/campaigns/{campaign['id']}/audience", headers=auth(key[("marketer", "hz")]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["status"] == "ready" and body["audience_size"] == 120 == sum(body["arms"].values())
    assert body["candidates"] == 500 and body["consented"] == int(sharing.sum())
    assert body["consent_coverage"] == pytest.approx(sharing.mean(), abs=1e-4)
    assert body["model_version"] == "4" and body["target"] == {"target_pois": 3}
    scores = np.where(sharing, bundle.user_factors @ bundle.poi_factors[:3].mean(axis=0), -np.inf)
    expected = list(bundle.users.token.to_numpy()[np.argsort(-scores, kind="stable")[:120]])
    members = audience.members(engine, campaign["id"])
    assert [m["token"] for m in members] == expected
    assert body["arms"]["holdout"] == sum(m["arm"] == "holdout" for m in members) > 0
    got = client.get(f"/v1/campaigns/{campaign['id']}", headers=auth(key[("admin", "hz")])).json()
    assert got["status"] == "ready" and got["arms"] == body["arms"]
    # recomputation: a member's arm is kept even when the hash would now say otherwise
    moved = members[0]["token"]
    flipped = "treatment" if members[0]["arm"] == "holdout" else "holdout"
    with engine.begin() as c:
        c.execute(audience_members_update(campaign["id"], moved, flipped))
    again = client.post(f"/v1/campaigns/{campaign['id']}/audience", headers=auth(key[("admin", "hz")]))
    assert again.status_code == 200, again.text
    after = {m["token"]: m["arm"] for m in audience.members(engine, campaign["id"])}
    assert after[moved] == flipped
    assert {t: a for t, a in after.items() if t != moved} == {m["token"]: m["arm"] for m in members[1:]}
    export = client.get(f"/v1/campaigns/{campaign['id']}/audience", headers=auth(key[("marketer", "hz")]))
    assert export.status_code == 200 and export.json()["count"] == again.json()["arms"]["treatment"]


def audience_members_update(campaign_id, token, arm):
    return update(audience_members).where(audience_members.c.campaign_id == campaign_id,
                                          audience_members.c.token == token).values(arm=arm)


def test_lookalike_and_destination_audiences(app, served_inputs):
    client, key, engine, _ = app
    bundle, _, _, destination, _ = served_inputs
    seed = list(bundle.users.token[:110])
    look = create(client, key, target_kind="lookalike", seed_tokens=seed, audience_size=100)
    body = client.post(f"/v1/campaigns/{look['id']}/audience", headers=auth(key[("marketer", "hz")])).json()
    assert body["audience_size"] == 100 and body["target"] == {"seed_found": 110, "seed_given": 110}
    assert not {m["token"] for m in audience.members(engine, look["id"])} & set(seed)
    dest = create(client, key, target_kind="destination", channel="ads", region="shanghai", audience_size=100)
    answer = client.post(f"/v1/campaigns/{dest['id']}/audience", headers=auth(key[("marketer", "hz")]))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    city = dict(zip(destination.tokens, destination.home_city))
    ads = dict(zip(destination.tokens, destination.consent["ads"]))
    members = audience.members(engine, dest["id"])
    assert len(members) == 100 and all(city[m["token"]] == "Shanghai" and ads[m["token"]] for m in members)
    eligible = destination.consent["ads"] & (destination.home_city == "Shanghai")
    top = np.argsort(-np.where(eligible, destination.vectors[:, 0], -np.inf), kind="stable")[:100]
    assert [m["token"] for m in members] == list(destination.tokens[top])
    assert body["scoring"]["model_version"] == "propensity@x" and body["scoring"]["scored_as_of"] == "2026-11-30"
    assert body["in_region"] == int(eligible.sum())


def test_refusals_name_their_rule_and_leave_nothing_behind(app, served_inputs):
    client, key, engine, _ = app
    bundle, _, sharing, _, _ = served_inputs
    m = auth(key[("marketer", "hz")])
    pois = bundle.pois.poi_id.astype(str).tolist()[:2]
    campaign = create(client, key, target_kind="pois", poi_ids=pois)
    store.set_min_audience_size(engine, "hz", 200)  # 120 asked, so fewer than 200 treated
    small = client.post(f"/v1/campaigns/{campaign['id']}/audience", headers=m)
    assert small.status_code == 422 and small.json()["error"] == "min_size"
    assert "the minimum is 200" in small.json()["message"]
    assert audience.members(engine, campaign["id"]) == [] and store.get(engine, "hz", campaign["id"])["status"] == "draft"
    store.set_min_audience_size(engine, "hz", int(sharing.sum()) + 1)
    coverage = client.post(f"/v1/campaigns/{campaign['id']}/audience", headers=m)
    assert coverage.status_code == 422 and coverage.json()["error"] == "consent_coverage"
    assert f"only {int(sharing.sum())} of 500 candidates consented to sms" in coverage.json()["message"]
    store.set_min_audience_size(engine, "hz", 50)
    strangers = create(client, key, target_kind="lookalike", seed_tokens=list(tokens(100, "nobody")), audience_size=60)
    seed = client.post(f"/v1/campaigns/{strangers['id']}/audience", headers=m)
    assert seed.status_code == 422 and seed.json()["error"] == "seed_size"
    assert "only 0 of 100 seed tokens are known" in seed.json()["message"]
    unknown = create(client, key, target_kind="pois", poi_ids=["NOPE-1"])
    bad = client.post(f"/v1/campaigns/{unknown['id']}/audience", headers=m)
    assert bad.status_code == 422 and "POIs not in the model: NOPE-1" in bad.json()["message"]


def test_missing_server_inputs_are_named(app, monkeypatch, served_inputs):
    client, key, engine, state = app
    bundle, _, _, _, _ = served_inputs
    from wenlv.settings import reset_settings

    m = auth(key[("marketer", "hz")])
    dest = create(client, key, target_kind="destination")
    pois = create(client, key, target_kind="pois", poi_ids=bundle.pois.poi_id.astype(str).tolist()[:2])
    monkeypatch.delenv("WENLV_CAMPAIGN_SCORES")
    monkeypatch.delenv("WENLV_CAMPAIGN_FEATURES")
    reset_settings()
    no_scores = client.post(f"/v1/campaigns/{dest['id']}/audience", headers=m)
    assert no_scores.status_code == 409 and no_scores.json()["error"] == "not_available"
    assert "WENLV_CAMPAIGN_SCORES" in no_scores.json()["message"] and "wenlv campaign scores" in no_scores.json()["message"]
    no_consent = client.post(f"/v1/campaigns/{pois['id']}/audience", headers=m)
    assert no_consent.status_code == 409 and "WENLV_CAMPAIGN_FEATURES is not set" in no_consent.json()["message"]
    monkeypatch.setenv("WENLV_CAMPAIGN_SCORES", str(served_inputs[1] / "nowhere.parquet"))
    reset_settings()
    gone = client.post(f"/v1/campaigns/{dest['id']}/audience", headers=m)
    assert gone.status_code == 409 and "nowhere.parquet" in gone.json()["message"]
    uplift = create(client, key, target_kind="destination", uplift_from=dest["id"])
    assert client.post(f"/v1/campaigns/{uplift['id']}/audience", headers=m).status_code == 409
    state._model = None  # no model loaded: affinity cannot be scored
    assert client.post(f"/v1/campaigns/{pois['id']}/audience", headers=m).status_code == 503
    assert store.get(engine, "hz", pois["id"])["status"] == "draft"


@pytest.mark.parametrize("role", ["visitor-app", "analyst"])
def test_only_marketers_and_admins_of_the_tenant_compute(app, role):
    client, key, _, _ = app
    campaign = create(client, key, target_kind="destination")
    path = f"/v1/campaigns/{campaign['id']}/audience"
    assert client.post(path, headers=auth(key[(role, "hz")])).status_code == 403
    assert client.post(path).status_code == 401
    for other in ("marketer", "admin"):
        response = client.post(path, headers=auth(key[(other, "sx")]))
        assert response.status_code == 404 and response.json()["message"] == f"campaign {campaign['id']} not found"
    assert client.post("/v1/campaigns/999999/audience", headers=auth(key[("marketer", "sx")])).json()["error"] == "not_found"


def test_a_region_filters_bundle_audiences_when_the_blocks_carry_a_home_city_else_is_refused(app, monkeypatch,
                                                                                               served_inputs):
    client, key, engine, _ = app
    bundle, root, sharing, _, cities = served_inputs
    from wenlv.settings import reset_settings

    m = auth(key[("marketer", "hz")])
    pois = bundle.pois.poi_id.astype(str).tolist()[:2]
    campaign = create(client, key, target_kind="pois", poi_ids=pois, region="suzhou", audience_size=60)
    refused = client.post(f"/v1/campaigns/{campaign['id']}/audience", headers=m)  # blocks without a home city
    assert refused.status_code == 422 and refused.json()["error"] == "region"
    assert "region 'suzhou' cannot be honoured" in refused.json()["message"]
    assert audience.members(engine, campaign["id"]) == []
    monkeypatch.setenv("WENLV_CAMPAIGN_FEATURES", str(root / "features_city"))
    reset_settings()
    store.set_min_audience_size(engine, "hz", 10)  # about 110 consenting people live in Suzhou
    answer = client.post(f"/v1/campaigns/{campaign['id']}/audience", headers=m)
    assert answer.status_code == 200, answer.text
    eligible = sharing & (cities == "Suzhou")
    assert answer.json()["in_region"] == int(eligible.sum())
    scores = np.where(eligible, bundle.user_factors @ bundle.poi_factors[:2].mean(axis=0), -np.inf)
    expected = list(bundle.users.token.to_numpy()[np.argsort(-scores, kind="stable")[:60]])
    assert [m["token"] for m in audience.members(engine, campaign["id"])] == expected
    seed = list(bundle.users.token[:110])
    look = create(client, key, target_kind="lookalike", seed_tokens=seed, audience_size=50, region="Suzhou")
    answer = client.post(f"/v1/campaigns/{look['id']}/audience", headers=m)
    assert answer.status_code == 200, answer.text
    city = dict(zip(bundle.users.token, cities))
    assert {city[t["token"]] for t in audience.members(engine, look["id"])} == {"Suzhou"}
