"""The access matrix of docs/api-access.md, checked route by route against `/openapi.json` (issue 18.3).

Every operation of the OpenAPI document is called with a key of every role, without a key, and with
a key of a foreign tenant, and must answer what the matrix says. A route without a row in the matrix,
or a row without a route, fails `test_every_route_has_a_matrix_row`. Tenant "hz" owns the seeded
campaign, event, asset and served list; tenant "sx" is the foreign one.
"""
from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from wenlv.ledger import assets
from wenlv.ledger.cli import EXAMPLE_CSV
from wenlv.ledger.events import record_events
from wenlv.marketing import campaigns as campaign_store
from wenlv.marketing.campaigns import CampaignSpec
from wenlv.serving.app import create_app
from wenlv.serving.auth import ROLES, KeyStore
from wenlv.serving.materialize import materialize
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore, SQLiteStore
from wenlv.serving.state import ServingState
from wenlv.bench.serving_fixtures import synthetic_bundle
from tests.support.campaign_db import sqlite_engine

MATRIX_DOC = Path(__file__).resolve().parents[1] / "docs" / "api-access.md"
OWNER, FOREIGN = "hz", "sx"
TOKEN = "0123456789abcdef0123456789abcdef"
CAMPAIGN_NAME = "hz-private-campaign"  # markers of the owner's data: never in a foreign tenant's answer
EVENT_ID = "hz-private-event"
ASSET_MARKER = "tourism visitor data"  # the example register's asset name


def read_matrix(path: Path = MATRIX_DOC) -> dict[tuple[str, str], dict[str, str]]:
    """(method, route) -> {visitor-app, marketer, analyst, admin, no key, foreign tenant: cell} from the doc's table."""
    rows = {}
    header = None
    for line in path.read_text().splitlines():
        if not line.startswith("|"):
            if rows:  # the matrix is the document's first table; later tables are something else
                break
            continue
        if set(line) <= set("|- "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        row = dict(zip(header, cells))
        rows[(row["method"].upper(), row["route"])] = row
    assert header and {"method", "route", "no key", "foreign tenant", *ROLES} <= set(header), header
    return rows


MATRIX = read_matrix()


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("access")
    bundle = synthetic_bundle(n_pois=40, n_users=30, factors=8, seed=4, version="1")
    raw = SQLiteStore(tmp / "online.sqlite")
    materialize(bundle, "1", raw, progress=False)
    store = ResilientStore(raw)
    keys = KeyStore(tmp / "keys.sqlite", pepper=b"access-test")
    key = {(role, tenant): keys.create(role, tenant) for role in ROLES for tenant in (OWNER, FOREIGN)}
    with sqlite_engine(tmp / "wenlv.sqlite") as engine:
        cid = campaign_store.create(engine, OWNER, CampaignSpec(
            name=CAMPAIGN_NAME, target_kind="destination", channel="sms", audience_size=100,
            starts_on="2026-12-10", ends_on="2026-12-31"))["id"]
        ack = record_events(engine, OWNER, [{"event_id": EVENT_ID, "kind": "booking", "token": TOKEN, "poi_id": "P1",
                                             "amount_cny": "88.00", "occurred_at": "2026-12-11T10:00:00+08:00",
                                             "campaign_id": cid}])
        assert ack.as_dict()["accepted"] == 1, ack.as_dict()
        asset_id = next(iter(assets.load_csv(engine, OWNER, EXAMPLE_CSV)["assets"].values()))
        state = ServingState(store, ServingModel(bundle, "1", store, index_cache=None))
        with TestClient(create_app(state, keys, db=engine)) as client:
            served = client.get(f"/v1/visitors/{TOKEN}/recommendations", headers=auth(key[("visitor-app", OWNER)]))
            assert served.status_code == 200, served.text
            rid = served.json()["recommendation_id"]
            state.rec_log.flush()
            ids = {"token": TOKEN, "recommendation_id": rid, "campaign_id": cid, "asset_id": asset_id}
            yield client, key, ids
        state.rec_log.close()


def auth(key: str | None) -> dict:
    return {"Authorization": f"Bearer {key}"} if key else {}


def body_for(method: str, route: str, key: str | None, ids: dict):
    """A valid body for each operation that takes one: the matrix is about who may call, not about bad input."""
    if method == "GET":
        return None
    bodies = {
        ("POST", "/v1/itineraries"): {"city": "hangzhou", "start_date": "2026-05-01", "start_location":
                                      {"lat": 30.25, "lon": 120.17}, "pace": 2, "meals": False},
        ("POST", "/v1/campaigns"): {"name": "access-test", "target_kind": "destination", "channel": "sms",
                                    "audience_size": 10, "starts_on": "2026-12-10", "ends_on": "2026-12-31"},
        ("POST", "/v1/events"): {"events": [{"event_id": uuid.uuid4().hex, "kind": "click", "token": TOKEN,
                                             "poi_id": "P1", "occurred_at": "2026-12-11T10:00:00+08:00",
                                             "campaign_id": ids["campaign_id"]}]},
        ("POST", "/v1/assets/{asset_id}/cost-lines"): {"lines": [{"category": "security", "phase": "development",
                                                                  "amount_cny": "10.00", "incurred_on": "2026-03-01"}]},
        ("POST", "/dashboard/login"): {"key": key or "wlv_000000000000_not-a-key"},
        ("POST", "/dashboard/logout"): None,
        ("POST", "/v1/campaigns/{campaign_id}/audience"): None,  # computed from what the server already holds
    }
    assert (method, route) in bodies, f"no request body for {method} {route}: add one to body_for"
    return bodies[(method, route)]


def call(client, method: str, route: str, key: str | None, ids: dict):
    path = re.sub(r"\{(\w+)\}", lambda m: str(ids[m.group(1)]), route)
    body = body_for(method, route, key, ids)
    if route == "/dashboard/login":  # the key goes in the body, not in a header
        return client.request(method, path, json=body, headers={"Origin": "http://testserver"})
    client.cookies.clear()
    return client.request(method, path, json=body, headers=auth(key))


def operations(client) -> set[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    return {(method.upper(), route) for route, ops in paths.items() for method in ops}


def test_every_route_has_a_matrix_row(env):
    client, _, _ = env
    served = operations(client)
    assert served - MATRIX.keys() == set(), "routes without a row in docs/api-access.md"
    assert MATRIX.keys() - served == set(), "rows of docs/api-access.md without a route"


def test_a_matrix_cell_the_test_does_not_know_fails():
    for row in MATRIX.values():
        assert all(row[role] in ("allow", "deny", "public") for role in ROLES), row
        assert row["no key"] in ("401", "public") and row["foreign tenant"] in ("404", "own", "rejected", "shared", "n/a")


@pytest.mark.parametrize("operation", sorted(MATRIX), ids=lambda op: f"{op[0]} {op[1]}")
def test_each_role_gets_what_the_matrix_says(env, operation):
    client, key, ids = env
    row = MATRIX[operation]
    for role in ROLES:
        response = call(client, *operation, key[(role, OWNER)], ids)
        where = (operation, role, response.status_code, response.text[:200])
        assert response.status_code < 500, where
        if row[role] == "deny":
            assert response.status_code == 403 and response.json()["error"] == "forbidden", where
        else:
            assert response.status_code not in (401, 403), where
    response = call(client, *operation, None, ids)
    if row["no key"] == "401":
        assert response.status_code == 401 and response.json()["error"] == "unauthorized", (operation, response.text)
        if operation[1].startswith("/v1/"):
            assert response.headers["www-authenticate"] == "Bearer"
    else:
        assert response.status_code not in (401, 403) and response.status_code < 500, (operation, response.text)


def _caller_role(row: dict) -> str:
    """The least role that may call the route (admin only when nobody else may)."""
    return next(role for role in ROLES if row[role] == "allow")


def _owner_markers(ids: dict) -> list[str]:
    return [CAMPAIGN_NAME, EVENT_ID, ASSET_MARKER, ids["recommendation_id"]]


@pytest.mark.parametrize("operation", sorted(op for op, row in MATRIX.items()
                                              if row["foreign tenant"] in ("404", "own", "rejected")),
                         ids=lambda op: f"{op[0]} {op[1]}")
def test_a_foreign_tenant_never_sees_the_owners_data(env, operation):
    client, key, ids = env
    row = MATRIX[operation]
    for role in {_caller_role(row), "admin"}:
        own = call(client, *operation, key[(role, OWNER)], ids)
        foreign = call(client, *operation, key[(role, FOREIGN)], ids)
        where = (operation, role, own.status_code, foreign.status_code, foreign.text[:300])
        assert own.status_code < 500 and foreign.status_code < 500, where
        if row["foreign tenant"] == "404":
            assert own.status_code != 404, where  # the owner's id is real: the 404 below means "not yours"
            assert foreign.status_code == 404 and foreign.json()["error"] == "not_found", where
        elif row["foreign tenant"] == "own":
            assert own.status_code in (200, 201), where
            markers = _owner_markers(ids)
            if operation[0] == "GET":  # the owner's view shows its data: so its absence below means something
                assert any(m in own.text for m in markers), (operation, own.text[:300])
            assert not any(m in foreign.text for m in markers), where
            if operation == ("POST", "/v1/campaigns"):  # made for the caller's tenant, not the one of the ids
                assert foreign.json()["tenant"] == FOREIGN and own.json()["tenant"] == OWNER, where
        else:  # rejected: an event naming the owner's campaign
            assert own.json()["accepted"] == 1 and own.json()["rejected"] == [], own.text
            body = foreign.json()
            assert foreign.status_code == 200 and body["accepted"] == 0, where
            assert len(body["rejected"]) == 1 and "campaign_id" in body["rejected"][0]["reason"], where


def test_the_foreign_tenants_lists_stay_its_own(env):
    """After every foreign call above and here, the owner's campaign list has only the owner's campaigns."""
    client, key, ids = env
    call(client, "POST", "/v1/campaigns", key[("marketer", FOREIGN)], ids)
    owned = client.get("/v1/campaigns", headers=auth(key[("marketer", OWNER)])).json()
    foreign = client.get("/v1/campaigns", headers=auth(key[("marketer", FOREIGN)])).json()
    assert owned and {c["tenant"] for c in owned} == {OWNER}
    assert foreign and {c["tenant"] for c in foreign} == {FOREIGN}
    assert ids["campaign_id"] in {c["id"] for c in owned} - {c["id"] for c in foreign}
