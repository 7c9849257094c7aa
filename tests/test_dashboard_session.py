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
    live, until = keys.start_session(admin_id, 60)
    forged = sessions.issue(b"another secret", admin_id, live, until)
    expired = sessions.issue(secret, admin_id, live, int(time.time()) - 60)
    unknown_session = sessions.issue(secret, admin_id, "never-started", until)  # signed, but no such session
    other_key = sessions.issue(secret, sessions.verify(secret, good).key_id, live, until)  # the admin's session
    payload, mac = good.split(".")
    for value in (payload + "." + mac[::-1], forged, expired, unknown_session, other_key, "garbage", good + "x",
                  "." + mac):
        fresh = TestClient(application, cookies={sessions.COOKIE: value})
        assert fresh.get("/dashboard/session").json()["authenticated"] is False, value
        assert fresh.get("/v1/campaigns").status_code == 401
    valid = sessions.issue(secret, admin_id, live, until)
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


def test_a_copied_cookie_is_refused_after_logout_while_other_sessions_of_the_key_go_on(app):
    """Logout ends the session on the server, not only in the browser; another browser of the same key stays in."""
    application, _, key = app
    one, two = TestClient(application), TestClient(application)
    assert login(one, key[("analyst", "hz")]).status_code == 200 and login(two, key[("analyst", "hz")]).status_code == 200
    copy = TestClient(application, cookies={sessions.COOKIE: one.cookies[sessions.COOKIE]})
    assert copy.get("/dashboard/session").json()["authenticated"] is True
    assert one.post("/dashboard/logout").status_code == 200
    assert copy.get("/dashboard/session").json()["authenticated"] is False
    assert copy.get("/v1/analytics/revenue").status_code == 401
    assert two.get("/dashboard/session").json()["authenticated"] is True
    assert two.get("/v1/analytics/revenue").status_code == 200


def test_a_logout_or_end_sessions_in_another_process_is_seen_without_a_restart(app):
    """A second KeyStore on the same file stands for `wenlv apikey end-sessions` or another worker's logout."""
    application, keys, key = app
    client = TestClient(application)
    assert login(client, key[("admin", "hz")]).status_code == 200
    assert client.get("/v1/campaigns").status_code == 200
    other = KeyStore(keys.path, pepper=b"p")
    assert other.end_sessions(key[("admin", "hz")].split("_")[1]) == 1
    time.sleep(KeyStore.CHECK_EVERY_S + 0.05)
    assert client.get("/v1/campaigns").status_code == 401
    assert client.get("/dashboard/session").json()["authenticated"] is False
    assert login(client, key[("admin", "hz")]).status_code == 200   # the key itself still works
    assert client.get("/v1/campaigns").status_code == 200


def test_sessions_are_bounded_per_key_and_never_outlive_the_key(app, tmp_path):
    application, keys, key = app
    key_id = key[("analyst", "sx")].split("_")[1]
    first = [keys.start_session(key_id, 3600)[0] for _ in range(KeyStore.MAX_SESSIONS_PER_KEY + 2)]
    live = [s for s in first if keys.session(s) is not None]
    assert live == first[2:]                                              # the two oldest ended
    short = KeyStore(tmp_path / "short.sqlite", pepper=b"p")
    brief = short.create("analyst", "hz", expires_in_s=120)
    _, until = short.start_session(brief.split("_")[1], 3600)
    assert until <= time.time() + 120
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


def test_session_principal_answers_plain_values_for_safe_methods_only(app):
    """The seam a request-guard middleware can call too: method and cookies in, a Principal or None out."""
    from wenlv.serving.auth import session_principal

    application, keys, key = app
    client = TestClient(application)
    assert login(client, key[("analyst", "sx")]).status_code == 200
    cookies = {sessions.COOKIE: client.cookies[sessions.COOKIE]}
    got = session_principal(keys, "GET", cookies)
    assert (got.role, got.tenant) == ("analyst", "sx") and session_principal(keys, "HEAD", cookies) == got
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert session_principal(keys, method, cookies) is None
    assert session_principal(keys, "GET", {}) is None
