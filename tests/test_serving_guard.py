"""The API's door over a real uvicorn server and raw sockets (issue 13.2): bodies over the limit
are refused 413 unread (announced or chunked), requests without a valid key 401 before their
body is read, and half-sent requests (headers or body) are timed out and closed."""
import json
import socket
import time

import pytest

from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore, SQLiteStore
from wenlv.serving.runtime import ServerThread
from wenlv.serving.state import ServingState
from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.settings import reset_settings

LIMIT = 4096
TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("guard")
    mp = pytest.MonkeyPatch()
    for name, value in {"WENLV_MAX_BODY_BYTES": str(LIMIT), "WENLV_BODY_TIMEOUT": str(TIMEOUT_S),
                        "WENLV_HEADER_TIMEOUT": str(TIMEOUT_S)}.items():
        mp.setenv(name, value)
    reset_settings()
    bundle = synthetic_bundle(n_pois=30, n_users=10, factors=4, seed=2, version="1")
    store = ResilientStore(SQLiteStore(tmp / "online.sqlite"))
    keys = KeyStore(tmp / "keys.sqlite")
    key = keys.create("visitor-app", "hz")
    app = create_app(ServingState(store, ServingModel(bundle, "1", store, index_cache=None)), keys)
    with ServerThread(app) as running:
        yield running, key
    mp.undo()
    reset_settings()


def connect(server, timeout_s: float = TIMEOUT_S + 4) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=timeout_s)


def read_response(s: socket.socket) -> tuple[int, bytes, float]:
    """Status, everything the server sent until it closed, and seconds waited."""
    started = time.monotonic()
    data = b""
    while True:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1 ") else 0
    return status, data, time.monotonic() - started


def head(key: str | None, length: int | None = None, chunked: bool = False) -> bytes:
    lines = ["POST /v1/itineraries HTTP/1.1", "Host: localhost", "Content-Type: application/json"]
    if key is not None:
        lines.append(f"Authorization: Bearer {key}")
    if length is not None:
        lines.append(f"Content-Length: {length}")
    if chunked:
        lines.append("Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_an_announced_body_over_the_limit_is_refused_unread(server):
    running, key = server
    with connect(running) as s:
        s.sendall(head(key, 200_000_000))  # and not one byte of the body
        status, data, waited = read_response(s)
    assert status == 413 and b"WENLV_MAX_BODY_BYTES" in data and waited < TIMEOUT_S / 2


def test_a_chunked_body_is_cut_off_at_the_limit(server):
    running, key = server
    with connect(running) as s:
        s.sendall(head(key, chunked=True))
        chunk = b"x" * 1024
        for _ in range(LIMIT // len(chunk) + 2):
            s.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        status, data, _ = read_response(s)  # the server closes: the rest is never read
    assert status == 413 and json.loads(data.split(b"\r\n\r\n", 1)[1])["error"] == "payload_too_large"


@pytest.mark.parametrize("key", [None, "wlv_unknown_key"])
def test_a_request_without_a_valid_key_is_refused_before_its_body_is_read(server, key):
    running, _ = server
    with connect(running) as s:
        s.sendall(head(key, 100_000_000))
        status, data, waited = read_response(s)
    assert status == 401 and b"www-authenticate: bearer" in data.lower()
    assert waited < TIMEOUT_S / 2


def test_a_half_sent_body_is_timed_out_and_closed(server):
    running, key = server
    with connect(running) as s:
        s.sendall(head(key, 1000) + b'{"city": "hang')
        status, data, waited = read_response(s)
    assert status == 408 and b"WENLV_BODY_TIMEOUT" in data
    assert TIMEOUT_S * 0.8 < waited < TIMEOUT_S + 2


def test_half_sent_headers_are_timed_out_and_closed(server):
    running, key = server
    with connect(running) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        status, _, waited = read_response(s)
    assert status == 408 and waited < TIMEOUT_S + 2


def test_a_body_within_the_limit_is_served(server):
    running, key = server
    body = json.dumps({"city": "hangzhou", "start_date": "2026-05-01", "start_location": {"lat": 30.25, "lon": 120.17},
                       "pace": 2, "meals": False}).encode()
    with connect(running, timeout_s=120) as s:  # the first plan may wait for the solver process to start
        s.sendall(head(key, len(body)).replace(b"HTTP/1.1\r\n", b"HTTP/1.1\r\nConnection: close\r\n", 1) + body)
        status, data, _ = read_response(s)
    assert status in (200, 422) and b"payload_too_large" not in data, data[:300]
