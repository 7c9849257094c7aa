"""Logs an operator can follow and share: every request has an id (X-Request-ID in and out), an unhandled exception
is logged with that id, the route template and where it was raised — never the token in the path, the query string,
the body or the exception's message —, JSON lines parse, and the access log can be turned off."""
from __future__ import annotations

import io
import json
import logging

import pytest
from fastapi import Request
from fastapi.testclient import TestClient

from wenlv.bench.serving_fixtures import synthetic_bundle, token_for
from wenlv.cli import main
from wenlv.privacy.leak_scan import PhoneMatcher
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.logs import configure_logging
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore
from wenlv.serving.state import ServingState
from wenlv.settings import reset_settings
from tests.support.stores import make_store

PHONE = "13800138000"
BOOM = "/v1/visitors/{token}/boom"


@pytest.fixture
def logs():
    """Swap the root logger's handlers for one test, restore them after. The test client's own logger (httpx, which
    logs the URL it calls) is quietened as `wenlv` does (QUIET_LOGGERS): only the server's lines are checked."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, logging.getLogger("wenlv.serving.access").level)
    client_log = logging.getLogger("httpx")
    client_level = client_log.level
    client_log.setLevel(logging.WARNING)
    stream = io.StringIO()
    yield stream
    client_log.setLevel(client_level)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved[0]:
        root.addHandler(h)
    root.setLevel(saved[1])
    logging.getLogger("wenlv.serving.access").setLevel(saved[2])


@pytest.fixture(scope="module")
def bundle():
    return synthetic_bundle(n_pois=30, n_users=10, factors=8, seed=3, version="1")


def _client(tmp_path, bundle):
    store = ResilientStore(make_store("sqlite", tmp_path))
    keys = KeyStore(tmp_path / "keys.sqlite")
    key = keys.create("visitor-app", "hz")
    app = create_app(ServingState(store, ServingModel(bundle, "1", store, index_cache=None)), keys)

    async def boom(token: str, request: Request):
        body = await request.body()
        raise RuntimeError(f"{token} {request.url.query} {body!r} {PHONE}")  # the message quotes request data

    app.add_api_route(BOOM, boom, methods=["GET", "POST"])
    return TestClient(app, raise_server_exceptions=False), key


def test_a_500_is_logged_with_the_request_id_and_template_and_no_request_data(tmp_path, bundle, logs):
    configure_logging(logging.INFO, "json", access_log=True, stream=logs)
    client, key = _client(tmp_path, bundle)
    token = token_for(PHONE)
    r = client.post(f"/v1/visitors/{token}/boom?phone={PHONE}&secret=s3cr3t-q", content=f'{{"phone": "{PHONE}"}}',
                    headers={"Authorization": f"Bearer {key}", "X-Request-ID": "req-42.a_b"})
    assert r.status_code == 500 and r.json()["error"] == "internal_error"
    assert r.headers["x-request-id"] == "req-42.a_b" and "req-42.a_b" in r.json()["message"]
    text = logs.getvalue()
    lines = [json.loads(line) for line in text.splitlines()]
    assert all(set(line) >= {"time", "level", "logger", "message", "request_id"} for line in lines)
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert len(errors) == 1, lines
    error = errors[0]
    assert error["request_id"] == "req-42.a_b" and error["logger"] == "wenlv.serving.metrics"
    assert "RuntimeError" in error["message"] and BOOM in error["message"]
    assert "test_serving_logs.py" in error["message"] and "in boom" in error["message"], "where it was raised"
    access = [line for line in lines if line["logger"] == "wenlv.serving.access"]
    assert len(access) == 1 and access[0]["request_id"] == "req-42.a_b"
    assert access[0]["message"].startswith(f"POST {BOOM} 500 ") and access[0]["message"].endswith(" req-42.a_b")
    assert token not in text and "s3cr3t-q" not in text
    assert PhoneMatcher([PHONE]).text_findings(text, "logs") == []


@pytest.mark.parametrize("sent,kept", [("abc-123", True), ("x" * 65, False), ("a b", False), ("<script>", False),
                                       (token_for(PHONE) + "/" + PHONE, False)])
def test_a_request_id_is_echoed_when_safe_and_replaced_otherwise(tmp_path, bundle, sent, kept):
    client, _ = _client(tmp_path, bundle)
    got = client.get("/healthz", headers={"X-Request-ID": sent}).headers["x-request-id"]
    assert (got == sent) is kept
    assert 1 <= len(got) <= 64 and got.replace("-", "").replace("_", "").replace(".", "").isalnum()


def test_each_request_without_an_id_gets_its_own(tmp_path, bundle):
    client, _ = _client(tmp_path, bundle)
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(3)}
    assert len(ids) == 3


def test_text_lines_carry_the_request_id_and_the_access_log_can_be_turned_off(tmp_path, bundle, logs):
    configure_logging(logging.INFO, "text", access_log=False, stream=logs)
    client, key = _client(tmp_path, bundle)
    token = token_for(PHONE)
    r = client.get(f"/v1/visitors/{token}/boom", headers={"Authorization": f"Bearer {key}"})
    assert client.get(f"/v1/visitors/{token}/recommendations", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    text = logs.getvalue()
    rid = r.headers["x-request-id"]
    assert f"unhandled RuntimeError on GET {BOOM} (request {rid})" in text and f"[request {rid}]" in text
    assert "wenlv.serving.access" not in text and " 200 " not in text, "the access log is off"
    assert token not in text and PHONE not in text


def test_a_json_log_line_per_access_when_on(tmp_path, bundle, logs):
    configure_logging(logging.INFO, "json", access_log=True, stream=logs)
    client, key = _client(tmp_path, bundle)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    lines = [json.loads(line) for line in logs.getvalue().splitlines()]
    access = [line for line in lines if line["logger"] == "wenlv.serving.access"]
    assert [a["message"].split()[:3] for a in access] == [["GET", "/healthz", "200"]] * 3
    assert len({a["request_id"] for a in access}) == 3 and all(a["request_id"] for a in access)


def test_a_bad_log_format_is_refused_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv("WENLV_LOG_FORMAT", "xml")
    reset_settings()
    try:
        assert main(["config", "show"]) == 2
    finally:
        monkeypatch.delenv("WENLV_LOG_FORMAT")
        reset_settings()
    assert "WENLV_LOG_FORMAT" in capsys.readouterr().err


def test_the_cli_leaves_handlers_someone_else_installed_alone(logs):
    root = logging.getLogger()
    foreign = logging.StreamHandler(io.StringIO())
    root.addHandler(foreign)
    assert configure_logging(logging.INFO, "json", force=False) is None and foreign in root.handlers
    for h in [h for h in root.handlers if h is not foreign]:
        root.removeHandler(h)
    root.removeHandler(foreign)
    first = configure_logging(logging.INFO, "text", force=False)
    second = configure_logging(logging.INFO, "json", force=False)
    assert first is not None and second is not None and root.handlers == [second], "an earlier call's handler replaced"
