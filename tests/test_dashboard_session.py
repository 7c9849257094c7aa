"""Dashboard login and session cookies on the real app: who may log in, what the cookie holds and
allows (GET only, its own tenant), expiry, tampering, revocation, logout, and login CSRF defences.
The browser itself is tested in tests/test_dashboard_browser.py."""
from __future__ import annotations

import stat
import time

import pytest
from fastapi.testclient import TestClient

from wenlv.serving import sessions
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.state import ServingState
from tests.support.campaign_db import sqlite_engine

CAMPAIGN = {"name": "west lake winter", "target_kind": "destination", "channel": "sms", "audience_size": 300,
            "holdout_fraction": 0.2, "starts_on": "2026-12-10", "ends_on": "2026-12-31"}


@pytest.fixture
def app(tmp_path, monkeypatch):
    monkeypatch.delenv("WENLV_SESSION_SECRET", raising=False)
    with sqlite_engine(tmp_path / "ledger.sqlite") as engine:
        keys = KeyStore(tmp_path / "keys.sqlite", pepper=b"p")
        key = {(role, tenant): keys.create(role, tenant) for role in ("visitor-app", "marketer", "analyst", "admin")
               for tenant in ("hz", "sx")}
        yield create_app(ServingState(), keys, db=engine), keys, key


def login(client: TestClient, key: str, **kwargs):
    return client.post("/dashboard/login", json={"key": key}, **kwargs)


def test_page_and_its_files_are_served_without_a_key_and_hold_no_data(app):
    client = TestClient(app[0])
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert 'method="post"' in page.text and 'type="password"' in page.text  # a key never lands in a URL
    assert "http://" not in page.text and "https://" not in page.text      # no CDN
    for name, kind in [("dashboard.js", "text/javascript"), ("charts.js", "text/javascript"),
                       ("dashboard.css", "text/css")]:
        got = client.get(f"/dashboard/static/{name}")
        assert got.status_code == 200 and got.headers["content-type"].startswith(kind) and len(got.content) > 500
    for bad in ("index.html", "..%2F..%2Fauth.py", "x.js"):
        assert client.get(f"/dashboard/static/{bad}").status_code == 404


@pytest.mark.parametrize("role", ["analyst", "admin"])
def test_analyst_and_admin_get_a_strict_httponly_cookie_that_does_not_hold_the_key(app, role):
    application, _, key = app
    client = TestClient(application)
    response = login(client, key[(role, "hz")])
    assert response.status_code == 200, response.text
    assert response.json()["role"] == role and response.json()["tenant"] == "hz"
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{sessions.COOKIE}=") and "HttpOnly" in cookie and "SameSite=strict" in cookie
    assert "Secure" not in cookie and "Path=/" in cookie and "Max-Age=" in cookie  # plain http: a Secure cookie would never come back
    secret = key[(role, "hz")].split("_", 2)[2]
    assert key[(role, "hz")] not in cookie and secret not in cookie
    assert client.get("/dashboard/session").json() == {"authenticated": True, "role": role, "tenant": "hz",
                                                       "expires_at": None}


def test_cookie_is_secure_over_https(app):
    application, _, key = app
    response = login(TestClient(application, base_url="https://testserver"), key[("analyst", "hz")])
    assert response.status_code == 200 and "Secure" in response.headers["set-cookie"]


@pytest.mark.parametrize("role", ["marketer", "visitor-app"])
def test_marketer_and_visitor_app_keys_are_refused_at_login(app, role):
    application, _, key = app
    client = TestClient(application)
    response = login(client, key[(role, "hz")])
    assert response.status_code == 403 and response.json()["error"] == "forbidden"
    assert role in response.json()["message"] and "set-cookie" not in response.headers
    assert client.get("/dashboard/session").json()["authenticated"] is False


def test_unknown_key_and_bad_bodies_are_refused_without_a_cookie(app):
    client = TestClient(app[0])
    for response in (login(client, "wlv_000000000000_nope"),
                     client.post("/dashboard/login", data={"key": app[2][("analyst", "hz")]}),  # a plain HTML form post
                     client.post("/dashboard/login", json={}),
                     client.post("/dashboard/login", json={"key": "x" * 500})):
        assert response.status_code in (401, 422), response.text
        assert "set-cookie" not in response.headers
        assert response.json()["error"] in ("unauthorized", "invalid_request")


def test_cross_site_login_is_refused(app):
    application, _, key = app
    client = TestClient(application)
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = login(client, key[("analyst", "hz")], headers=headers)
        assert response.status_code == 403 and "set-cookie" not in response.headers
    assert login(client, key[("analyst", "hz")], headers={"Origin": "http://testserver"}).status_code == 200


def test_cookie_authenticates_get_routes_for_its_own_tenant_only_and_never_writes(app):
    application, _, key = app
    marketer = TestClient(application)
    made = marketer.post("/v1/campaigns", json=CAMPAIGN, headers={"Authorization": f"Bearer {key[('marketer', 'hz')]}"})
    assert made.status_code == 201
    hz, sx = TestClient(application), TestClient(application)
    assert login(hz, key[("admin", "hz")]).status_code == 200 and login(sx, key[("admin", "sx")]).status_code == 200
    assert [c["id"] for c in hz.get("/v1/campaigns").json()] == [made.json()["id"]]
    assert sx.get("/v1/campaigns").json() == []                          # the cookie carries the tenant
    assert sx.get(f"/v1/campaigns/{made.json()['id']}").status_code == 404
    refused = hz.post("/v1/campaigns", json=CAMPAIGN)                  # cookie alone may not write (CSRF)
    assert refused.status_code == 401
    assert len(hz.get("/v1/campaigns").json()) == 1


def test_analyst_session_keeps_the_analyst_role(app):
    application, _, key = app
    client = TestClient(application)
    assert login(client, key[("analyst", "hz")]).status_code == 200
    assert client.get("/v1/campaigns").status_code == 403              # a marketer route stays closed


def test_tampered_forged_and_expired_cookies_are_not_sessions(app):
    application, keys, key = app
    client = TestClient(application)
    assert login(client, key[("analyst", "hz")]).status_code == 200
    good = client.cookies[sessions.COOKIE]
    admin_id = next(r["key_id"] for r in keys.list() if r["role"] == "admin" and r["tenant"] == "hz")
    secret = sessions.secret_for(keys.path)
    forged, _ = sessions.issue(b"another secret", admin_id, 3600)
    expired, _ = sessions.issue(secret, admin_id, 60, now=time.time() - 120)
    payload, mac = good.split(".")
    for value in (payload + "." + mac[::-1], forged, expired, "garbage", good + "x", "." + mac):
        fresh = TestClient(application, cookies={sessions.COOKIE: value})
        assert fresh.get("/dashboard/session").json()["authenticated"] is False, value
        assert fresh.get("/v1/campaigns").status_code == 401
    valid, _ = sessions.issue(secret, admin_id, 60)
    assert TestClient(application, cookies={sessions.COOKIE: valid}).get("/v1/campaigns").status_code == 200


def test_revoking_the_key_ends_its_sessions_and_logout_clears_the_cookie(app):
    application, keys, key = app
    one, two = TestClient(application), TestClient(application)
    assert login(one, key[("admin", "hz")]).status_code == 200 and login(two, key[("admin", "hz")]).status_code == 200
    out = one.post("/dashboard/logout")
    assert out.status_code == 200 and f'{sessions.COOKIE}=""' in out.headers["set-cookie"]
    assert one.get("/dashboard/session").json()["authenticated"] is False
    assert two.get("/v1/campaigns").status_code == 200
    keys.revoke(key[("admin", "hz")].split("_")[1])
    assert two.get("/v1/campaigns").status_code == 401
    assert two.get("/dashboard/session").json()["authenticated"] is False


def test_session_secret_comes_from_the_setting_else_a_private_file(app, monkeypatch):
    _, keys, _ = app
    made = sessions.secret_for(keys.path)
    path = keys.path.with_suffix(".session-secret")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(made) == 64
    assert sessions.secret_for(keys.path) == made
    monkeypatch.setenv("WENLV_SESSION_SECRET", "from-the-setting")
    from wenlv.settings import reset_settings

    reset_settings()
    assert sessions.secret_for(keys.path) == b"from-the-setting"
