"""The analytics routes on the real app and database: the dashboard's contract, roles, tenant isolation.
(Named apart from tests/test_ledger_api.py, the events route's tests: both branches had made that name.)"""
from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from wenlv.ledger import assets, attribution, returns
from wenlv.ledger.cli import EXAMPLE_CSV
from wenlv.ledger.events import record_events
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.state import ServingState
from tests.support.campaign_db import postgres_engine, sqlite_engine
from tests.test_ledger_attribution import T, _ev, _seed_campaign

SPLIT = {"3": {"tourism": 0.2, "carrier": 0.07, "internet": 0.03}}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def app(request, tmp_path):
    ctx = (sqlite_engine(tmp_path / "api.sqlite") if request.param == "sqlite"
           else postgres_engine(request.getfixturevalue("postgres_url"), prefix="wenlv_la"))
    with ctx as engine:
        cid = _seed_campaign(engine)
        record_events(engine, "hz", [
            _ev("a", T[0], "100.00", "2026-05-01T10:00:00+08:00", campaign_id=cid, poi_id="P1"),
            _ev("b", T[1], "60.00", "2026-05-02T10:00:00+08:00", campaign_id=cid),
            _ev("e", T[6], "30.00", "2026-05-02T10:00:00+08:00"),
            {"event_id": "f", "kind": "visit", "token": T[0], "occurred_at": "2026-05-01T11:00:00+08:00"}])
        returns.attribute(engine, "hz", attribution.Options(method="delta"), SPLIT)
        ids = assets.load_csv(engine, "hz", EXAMPLE_CSV)["assets"]
        keys = KeyStore(tmp_path / "keys.sqlite", pepper=b"p")
        key = {(role, tenant): keys.create(role, tenant) for role in ("visitor-app", "marketer", "analyst", "admin")
               for tenant in ("hz", "sx")}
        yield TestClient(create_app(ServingState(), keys, db=engine)), key, cid, ids


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_revenue_contract(app):
    client, key, cid, _ = app
    body = client.get("/v1/analytics/revenue", headers=auth(key[("analyst", "hz")])).json()
    assert set(body) >= {"daily", "campaigns", "model_versions", "returns_by_source"}
    (c,) = body["campaigns"]
    assert c["campaign_id"] == cid and c["name"] == "may" and (c["treated"], c["holdout"]) == (6, 2)
    assert c["incremental_revenue_cny"] == pytest.approx(160 - 3 * 30)
    assert c["treated_mean_cny"] == pytest.approx(26.67) and c["holdout_mean_cny"] == 15.0
    lo, hi = c["ci95"]
    assert lo <= c["incremental_revenue_cny"] <= hi and len(c["visits_ci95"]) == 2
    assert c["last_touch_revenue_cny"] == 160.0 and c["method"] in ("bootstrap", "delta")
    assert c["incremental_visits"] == 1.0
    assert sum(body["returns_by_source"].values()) == pytest.approx(70.0, abs=0.001)
    assert set(body["returns_by_source"]) == {"tourism", "carrier", "internet"}
    days = {(d["day"], d["campaign_id"]): d for d in body["daily"]}
    assert days[("2026-05-01", cid)] == {"day": "2026-05-01", "campaign_id": cid, "model_version": None,
                                         "revenue_cny": 100.0, "bookings": 1, "visits": 0}
    assert days[("2026-05-01", None)]["visits"] == 1  # the visit event names no campaign
    assert body["model_versions"] == []


def test_revenue_filters(app):
    client, key, cid, _ = app
    h = auth(key[("admin", "hz")])
    first = client.get("/v1/analytics/revenue?date_to=2026-05-01", headers=h).json()
    assert first["campaigns"][0]["incremental_revenue_cny"] == 100.0
    assert {d["day"] for d in first["daily"]} == {"2026-05-01"}
    carrier = client.get("/v1/analytics/revenue?source=carrier", headers=h).json()["returns_by_source"]
    assert carrier["tourism"] == 0.0 and carrier["carrier"] == pytest.approx(70 * 0.07 / 0.3, abs=0.01)
    assert client.get(f"/v1/analytics/revenue?campaign_id={cid + 1}", headers=h).json()["campaigns"] == []
    assert client.get("/v1/analytics/revenue?model_version=9", headers=h).json()["campaigns"] == []
    for bad in ("source=phone", "date_from=2026-05-03&date_to=2026-05-01", "campaign_id=x", "date_from=May"):
        r = client.get(f"/v1/analytics/revenue?{bad}", headers=h)
        assert r.status_code == 422 and r.json()["error"] == "invalid_request", bad



def test_ids_beyond_an_integer_column_are_refused_not_a_server_error(app):
    """The fuzz test found `campaign_id=2045528306379045766074353410113536` answered 500 (OverflowError in SQLite)."""
    client, key, _, _ = app
    huge = 2**31
    headers = auth(key[("analyst", "hz")])
    for path in (f"/v1/analytics/revenue?campaign_id={huge}", f"/v1/assets/{huge}",
                 "/v1/analytics/revenue?campaign_id=2045528306379045766074353410113536&source=carrier"):
        assert client.get(path, headers=headers).status_code == 422, path
    assert client.post(f"/v1/assets/{huge}/cost-lines", headers=auth(key[("admin", "hz")]),
                       json={"lines": [{"category": "cleaning", "phase": "development", "amount_cny": "1.00",
                                        "incurred_on": "2026-01-01"}]}).status_code == 422

def test_assets_contract_and_cost_lines(app):
    client, key, _, ids = app
    listed = client.get("/v1/assets?as_of=2026-07-01", headers=auth(key[("analyst", "hz")])).json()["assets"]
    assert len(listed) == 3
    tourism = next(a for a in listed if a["source"] == "tourism")
    assert set(tourism) == {"id", "name", "source", "cost_cny", "capitalised_cny", "expensed_cny", "amortised_cny",
                            "carrying_cny", "attributed_returns_cny", "roi", "value"}
    assert tourism["cost_cny"] == tourism["capitalised_cny"] + tourism["expensed_cny"] == 775000.0
    assert tourism["attributed_returns_cny"] == pytest.approx(70 * 0.2 / 0.3, abs=0.01)
    assert set(tourism["value"]) == {"cost", "income"} and tourism["value"]["cost"] == tourism["carrying_cny"]
    one = client.get(f"/v1/assets/{tourism['id']}", headers=auth(key[("analyst", "hz")])).json()
    assert len(one["cost_lines"]) == 9 and one["returns"] and one["id"] == tourism["id"]
    line = {"category": "security", "phase": "development", "amount_cny": "1000.50", "incurred_on": "2026-03-01"}
    path = f"/v1/assets/{tourism['id']}/cost-lines"
    assert client.post(path, json={"lines": [line]}, headers=auth(key[("analyst", "hz")])).status_code == 403
    made = client.post(path, json={"lines": [line]}, headers=auth(key[("admin", "hz")]))
    assert made.status_code == 201 and made.json()["asset"]["capitalised_cny"] == 595000.0 + 1000.5
    bad = client.post(path, json={"lines": [{**line, "category": "research"}]}, headers=auth(key[("admin", "hz")]))
    assert bad.status_code == 422 and "development" in bad.json()["message"]
    assert client.post(path, json={"lines": [line]}, headers=auth(key[("admin", "sx")])).status_code == 404


def test_events_have_no_tokens(app):
    client, key, cid, _ = app
    body = client.get("/v1/analytics/events?limit=3", headers=auth(key[("analyst", "hz")])).json()
    assert [e["event_id"] for e in body["events"]] == ["e", "b", "f"]  # newest first, then by id
    assert set(body["events"][0]) == {"event_id", "kind", "poi_id", "amount_cny", "ts", "campaign_id",
                                      "recommendation_id"}
    assert body["events"][1]["amount_cny"] == 60.0 and body["events"][0]["ts"].startswith("2026-05-02T02:00:00")
    assert not any(t in str(body) for t in T)


@pytest.mark.parametrize("path", ["/v1/analytics/revenue", "/v1/assets", "/v1/analytics/events"])
def test_roles_and_tenants(app, path):
    client, key, _, ids = app
    for role in ("visitor-app", "marketer"):
        assert client.get(path, headers=auth(key[(role, "hz")])).status_code == 403
    assert client.get(path).status_code == 401
    other = client.get(path, headers=auth(key[("analyst", "sx")])).json()
    assert all(v in ([], {}) or (isinstance(v, dict) and not any(v.values())) for v in other.values()
               if not isinstance(v, dict) or "window_days" not in v), other
    for asset_id in ids.values():
        r = client.get(f"/v1/assets/{asset_id}", headers=auth(key[("admin", "sx")]))
        assert r.status_code == 404 and r.json()["error"] == "not_found"
