"""Campaign routes on the real app and database: roles, tenant isolation on every route, exports that
hold only the treatment group's partner pseudonyms (no phone, no cross-party token, no holdout)."""
from __future__ import annotations

import csv
import io
import re

import numpy as np
import pytest

from wenlv.marketing import audience, export, targets
from wenlv.marketing import campaigns as store
from tests.support.campaign_api import auth, campaign_app
from tests.support.campaign_db import DATABASES
from tests.test_marketing_audience import make_candidates

PHONE_LIKE = re.compile(r"^\+?(?:86)?1\d{10}$")
PSEUDONYM = re.compile(r"^[0-9a-f]{64}$")
BODY = {"name": "west lake winter", "target_kind": "destination", "channel": "sms", "audience_size": 300,
        "holdout_fraction": 0.2, "starts_on": "2026-12-10", "ends_on": "2026-12-31"}
SECRET = b"test-export-secret"


@pytest.fixture(params=DATABASES)
def app(request, tmp_path, monkeypatch):
    with campaign_app(request, tmp_path, monkeypatch, {"WENLV_EXPORT_SECRET": SECRET.decode()}) as made:
        yield made


def ready_campaign(client, key, engine, tenant="hz", min_size=50):
    made = client.post("/v1/campaigns", json=BODY, headers=auth(key[("marketer", tenant)]))
    assert made.status_code == 201, made.text
    campaign = store.get(engine, tenant, made.json()["id"])
    store.set_min_audience_size(engine, tenant, min_size)  # the default 1,000 is more than this toy audience
    candidates = make_candidates(1000, 11, consent_share=1.0)
    audience.compute(engine, campaign, candidates, targets.Query(np.ones(4, dtype=np.float32)), min_size=min_size)
    return campaign, candidates


def test_marketer_creates_lists_and_reads_own_campaigns(app):
    client, key, _ = app
    made = client.post("/v1/campaigns", json=BODY, headers=auth(key[("marketer", "hz")]))
    assert made.status_code == 201 and made.json()["status"] == "draft" and made.json()["partner"] == "carrier"
    assert "holdout_seed" not in made.json()
    cid = made.json()["id"]
    listed = client.get("/v1/campaigns", headers=auth(key[("marketer", "hz")])).json()
    assert [c["id"] for c in listed] == [cid]
    got = client.get(f"/v1/campaigns/{cid}", headers=auth(key[("admin", "hz")]))
    assert got.status_code == 200 and got.json()["arms"] == {"treatment": 0, "holdout": 0}


@pytest.mark.parametrize("role", ["visitor-app", "analyst"])
def test_other_roles_may_call_no_campaign_route(app, role):
    client, key, engine = app
    campaign, _ = ready_campaign(client, key, engine)
    for method, path in [("post", "/v1/campaigns"), ("get", "/v1/campaigns"), ("get", f"/v1/campaigns/{campaign['id']}"),
                         ("get", f"/v1/campaigns/{campaign['id']}/audience?format=csv")]:
        response = getattr(client, method)(path, headers=auth(key[(role, "hz")]), **({"json": BODY} if method == "post" else {}))
        assert response.status_code == 403, (role, path)
        assert response.json()["error"] == "forbidden"
    assert client.get("/v1/campaigns").status_code == 401


@pytest.mark.parametrize("role", ["marketer", "admin"])
def test_another_tenant_sees_nothing_on_any_route(app, role):
    client, key, engine = app
    campaign, _ = ready_campaign(client, key, engine, tenant="hz")
    other = auth(key[(role, "sx")])
    assert client.get("/v1/campaigns", headers=other).json() == []
    for path in (f"/v1/campaigns/{campaign['id']}", f"/v1/campaigns/{campaign['id']}/audience",
                 f"/v1/campaigns/{campaign['id']}/audience?format=csv"):
        response = client.get(path, headers=other)
        assert response.status_code == 404 and response.json()["message"] == f"campaign {campaign['id']} not found"
    missing = client.get("/v1/campaigns/999999", headers=other)
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"  # same answer as a missing one


def test_export_holds_only_treatment_pseudonyms(app):
    client, key, engine = app
    campaign, candidates = ready_campaign(client, key, engine)
    members = audience.members(engine, campaign["id"])
    treated = [m["token"] for m in members if m["arm"] == "treatment"]
    held_out = [m["token"] for m in members if m["arm"] == "holdout"]
    assert len(held_out) > 20
    response = client.get(f"/v1/campaigns/{campaign['id']}/audience?format=csv", headers=auth(key[("marketer", "hz")]))
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    text = response.text
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(treated) and [int(r["rank"]) for r in rows] == sorted(int(r["rank"]) for r in rows)
    assert list(rows[0]) == ["pseudonym", "rank"]
    assert all(PSEUDONYM.match(r["pseudonym"]) and not PHONE_LIKE.match(r["pseudonym"]) for r in rows)
    assert not any(t in text for t in candidates.tokens)  # no cross-party token at all, so no holdout token either
    key_for_carrier = export.partner_key(SECRET, "carrier", campaign["id"])
    resolved = export.resolve(key_for_carrier, candidates.tokens, [r["pseudonym"] for r in rows])
    assert sorted(resolved.values()) == sorted(treated)             # the delivering partner resolves all of them
    assert not set(resolved.values()) & set(held_out)
    wrong = export.resolve(export.partner_key(SECRET, "internet", campaign["id"]), candidates.tokens,
                           [r["pseudonym"] for r in rows])
    assert wrong == {}                                               # another partner cannot
    as_json = client.get(f"/v1/campaigns/{campaign['id']}/audience", headers=auth(key[("marketer", "hz")])).json()
    assert as_json["count"] == len(treated) and as_json["partner"] == "carrier"
    assert [m["pseudonym"] for m in as_json["members"]] == [r["pseudonym"] for r in rows]


def test_export_is_refused_without_an_audience_or_below_the_minimum(app):
    client, key, engine = app
    made = client.post("/v1/campaigns", json=BODY, headers=auth(key[("marketer", "hz")])).json()
    draft = client.get(f"/v1/campaigns/{made['id']}/audience", headers=auth(key[("marketer", "hz")]))
    assert draft.status_code == 409 and "has no audience yet" in draft.json()["message"]
    campaign, _ = ready_campaign(client, key, engine)
    store.set_min_audience_size(engine, "hz", 5000)
    small = client.get(f"/v1/campaigns/{campaign['id']}/audience", headers=auth(key[("marketer", "hz")]))
    assert small.status_code == 409
    assert re.search(r"too small to export: \d+ treated people, the minimum for tenant hz is 5000", small.json()["message"])


def test_bad_campaigns_are_refused_naming_the_field(app):
    client, key, _ = app
    m = auth(key[("marketer", "hz")])
    cases = [({**BODY, "channel": "fax"}, "channel"), ({**BODY, "ends_on": "2026-12-01"}, "before starts_on"),
             ({**BODY, "holdout_fraction": 1.0}, "holdout_fraction"),
             ({**BODY, "target_kind": "pois"}, "poi_ids is required"),
             ({**BODY, "target_kind": "lookalike", "seed_tokens": ["ab" * 16] * 150}, "at least 100 distinct tokens, got 1")]
    for body, expected in cases:
        response = client.post("/v1/campaigns", json=body, headers=m)
        assert response.status_code == 422 and expected in response.json()["message"], (expected, response.text)
    assert client.get("/v1/campaigns", headers=m).json() == []
