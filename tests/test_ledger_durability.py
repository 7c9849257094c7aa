"""Nothing acknowledged is lost when the server is SIGKILLed under load: a real uvicorn process
posting into SQLite (WAL, synchronous=FULL) and PostgreSQL, killed mid-load and restarted while
clients retry what was not acknowledged. Every acknowledged event is in the database right after
the kill, and at the end every event is there exactly once."""
from __future__ import annotations

import os
import signal
import threading
import time
import uuid

import httpx
import pytest
from sqlalchemy import create_engine, func, select, text

from wenlv.bench.events import start_server
from wenlv.db import engine as db_engine
from wenlv.db.schema import events
from wenlv.serving.auth import KeyStore
from wenlv.serving.runtime import free_port

pytestmark = pytest.mark.slow
CLIENTS, BATCHES, BATCH = 4, 40, 50


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database(request, tmp_path):
    """(url, env for the server): a fresh SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path / "ledger.sqlite"
        yield f"sqlite:///{path}", {"WENLV_DATABASE_SQLITE": str(path), "DATABASE_URL": ""}
        return
    server_url = request.getfixturevalue("postgres_url")
    admin = create_engine(db_engine.normalise_url(server_url), isolation_level="AUTOCOMMIT")
    name = f"wenlv_kill_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(text(f"CREATE DATABASE {name}"))
    url = server_url.rsplit("/", 1)[0] + "/" + name
    try:
        yield url, {"DATABASE_URL": url}
    finally:
        with admin.connect() as c:
            c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
        admin.dispose()


def batch_of(client: int, n: int) -> list[dict]:
    return [{"event_id": f"c{client}-b{n}-{j}", "kind": "booking" if j % 3 == 0 else "click",
             "token": f"{client:08x}{n * BATCH + j:024x}", "poi_id": f"P{j}",
             "amount_cny": "66.60" if j % 3 == 0 else None, "occurred_at": "2026-05-01T10:00:00+08:00",
             "recommendation_id": f"{n:032x}"} for j in range(BATCH)]


def test_every_acknowledged_event_survives_a_sigkill_exactly_once(database, tmp_path):
    url, extra_env = database
    engine = db_engine.make_engine(url)
    db_engine.migrate(engine)
    keys = tmp_path / "keys.sqlite"
    key = KeyStore(keys).create("visitor-app", "hz")
    env = {**os.environ, "WENLV_API_KEYS": str(keys), **extra_env}
    if not env["DATABASE_URL"]:
        del env["DATABASE_URL"]
    port = free_port()
    base = f"http://127.0.0.1:{port}/v1/events"
    acknowledged: set[str] = set()
    lock, stop = threading.Lock(), threading.Event()
    failures: list[str] = []

    def client(c: int) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {key}"}, timeout=5) as http:
            for n in range(BATCHES):
                batch = batch_of(c, n)
                while not stop.is_set():  # resend until acknowledged, as a client must
                    try:
                        r = http.post(base, json={"events": batch})
                    except httpx.HTTPError:
                        time.sleep(0.05)
                        continue
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                        time.sleep(0.05)
                        continue
                    body = r.json()
                    if body["accepted"] + body["duplicates"] != BATCH or body["rejected"]:
                        failures.append(str(body)[:300])
                    with lock:
                        acknowledged.update(e["event_id"] for e in batch)
                    break

    server = start_server(port, 1, env)
    threads = [threading.Thread(target=client, args=(c,)) for c in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < CLIENTS * BATCHES * BATCH // 4:  # mid-load: about a quarter through
            assert time.monotonic() < deadline, "the load did not get going"
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        with lock:
            before_kill = set(acknowledged)
        with engine.connect() as c:
            stored_now = set(c.execute(select(events.c.event_id)).scalars())
        assert before_kill <= stored_now, f"{len(before_kill - stored_now)} acknowledged events lost by the kill"
        assert len(before_kill) < CLIENTS * BATCHES * BATCH  # the kill really came mid-load

        server = start_server(port, 1, env)  # restart; the clients resend what was not acknowledged
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), "clients did not finish after the restart"
    finally:
        stop.set()
        server.kill()
        server.wait(timeout=10)
    assert failures == []
    everything = {e["event_id"] for c in range(CLIENTS) for n in range(BATCHES) for e in batch_of(c, n)}
    assert acknowledged == everything
    with engine.connect() as c:
        rows = c.execute(select(func.count()).select_from(events)).scalar()
        stored = set(c.execute(select(events.c.event_id)).scalars())
    assert rows == len(stored) == len(everything) and stored == everything
    engine.dispose()
