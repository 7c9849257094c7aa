"""`wenlv bench events`' fixed-rate phase: the open-loop generator counts what the real events
server acknowledged (checked against the database), and measures latency from each request's
due time, so a server slower than the offered rate shows its queue (no coordinated omission)."""
from __future__ import annotations

import asyncio
import gc
import json
import os
import threading
import uuid

import pytest

from wenlv.bench.events import TENANT, goal_met, pgbench_log_latencies_ms, phase_counts, start_server
from wenlv.bench.open_loop import fixed_rate
from wenlv.db import engine as db_engine
from wenlv.serving.auth import KeyStore
from wenlv.serving.runtime import free_port
from tests.support.loopback_http import serve_in_thread


@pytest.mark.slow
def test_fixed_rate_acknowledgements_match_the_database_and_a_replay_is_all_duplicates(tmp_path):
    path = tmp_path / "ledger.sqlite"
    engine = db_engine.make_engine(f"sqlite:///{path}")
    db_engine.migrate(engine)
    keys = tmp_path / "keys.sqlite"
    key = KeyStore(keys).create("visitor-app", TENANT)
    env = {**os.environ, "WENLV_API_KEYS": str(keys), "WENLV_DATABASE_SQLITE": str(path)}
    env.pop("DATABASE_URL", None)
    port = free_port()
    server = start_server(port, 1, env)
    nonce = "t" + uuid.uuid4().hex[:8]
    try:
        first = fixed_rate(f"http://127.0.0.1:{port}", key, nonce, batch=10, rate=20, duration=1.5, connections=4)
        replay = fixed_rate(f"http://127.0.0.1:{port}", key, nonce, batch=10, rate=20, duration=1.5, connections=4)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert first["requests"] == 30 and first["non_200"] == first["socket_errors"] == 0
    assert first["acknowledged"] == 300 and first["acknowledged_duplicates"] == 0
    assert first["p50_ms"] >= first["service_p50_ms"] > 0  # from the due time, never less than the answer took
    assert phase_counts(engine, nonce, first) == {"acknowledged": 300, "rows": 300, "lost": 0, "duplicated": 0,
                                                  "stored_unacknowledged": 0}
    assert replay["acknowledged"] == 0 and replay["acknowledged_duplicates"] == 300
    assert phase_counts(engine, nonce, replay)["duplicated"] == 300  # the check would see a server storing twice
    engine.dispose()


def _slow_server(delay_s: float) -> tuple[int, threading.Event]:
    """A one-connection HTTP server taking `delay_s` per request: a server slower than the offered rate."""
    answer = json.dumps({"accepted": 1, "duplicates": 0, "rejected": []}).encode()

    async def handle(reader, writer):
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                break
            length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            await asyncio.sleep(delay_s)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(answer), answer))
            await writer.drain()
        writer.close()

    return serve_in_thread(handle)


def test_latency_is_measured_from_the_due_time_not_from_the_send():
    port, stop = _slow_server(0.1)  # 10 requests/s at best, offered 20/s on one connection
    try:
        result = fixed_rate(f"http://127.0.0.1:{port}", "k", "n", batch=1, rate=20, duration=1.0, connections=1)
    finally:
        stop.set()
    assert result["acknowledged"] == 20
    assert 90 <= result["service_p99_ms"] < 300  # each answer alone takes ~100 ms
    # the 20th request was due at 0.95 s and answered at ~2.0 s: a closed loop would report ~100 ms
    assert result["max_ms"] > 800 and result["p99_ms"] > 5 * result["service_p50_ms"]


def test_the_goal_needs_the_fixed_rate_p99_every_batch_answered_and_the_saturation_rate():
    fixed = {"requests": 1000, "acknowledged": 100_000, "p99_ms": 40.0}
    pg = {"batch": 100, "events_per_s": 20_000, "fixed_rate": fixed}
    assert goal_met(pg, 10_000)
    assert not goal_met(pg, 5_000)  # offered less than the goal's rate
    assert not goal_met({**pg, "fixed_rate": {**fixed, "p99_ms": 60.0}}, 10_000)
    assert not goal_met({**pg, "fixed_rate": {**fixed, "acknowledged": 99_900}}, 10_000)  # a batch unanswered
    assert not goal_met({**pg, "events_per_s": 9_000}, 10_000)


def test_pgbench_latency_counts_from_the_scheduled_start():
    """Under -R pgbench logs the schedule lag apart from the elapsed time: the peer adds it back, as the
    open-loop generator counts from the due time (without the lag a stalled database would look fast)."""
    log = ["0 0 5000 0 1764770000 100 0",        # on time, 5 ms
           "1 0 4000 0 1764770000 200 250000",   # started 250 ms late (the database was stalled), 4 ms
           "0 1 6000 0 1764770001 300",          # no -R: no lag column
           "garbage"]
    assert pgbench_log_latencies_ms(log) == [5.0, 254.0, 6.0]


def test_the_generator_runs_without_garbage_collection_and_reports_its_own_loop_lag():
    """Inside `wenlv bench` one gen-2 collection of the generator's process took 206 ms mid-run and
    read as a 230-420 ms server p99: the run must not collect, even with a thread of this process
    making cyclic garbage all along (which does trigger collections before and after)."""
    port, stop = _slow_server(0.0)
    stop_making = threading.Event()

    def make_garbage():
        while not stop_making.is_set():
            for _ in range(2000):
                a: list = []
                a.append(a)  # a cycle only the collector frees: allocation pressure that triggers collections
            stop_making.wait(0.001)

    maker = threading.Thread(target=make_garbage, daemon=True)
    gc_was_enabled = gc.isenabled()
    maker.start()
    try:
        before = sum(s["collections"] for s in gc.get_stats())
        result = fixed_rate(f"http://127.0.0.1:{port}", "k", "n", batch=1, rate=50, duration=1.0, connections=2)
        stop_making.set()
        maker.join(5)
        total = sum(s["collections"] for s in gc.get_stats()) - before
    finally:
        stop_making.set()
        stop.set()
    assert result["acknowledged"] == 50
    assert result["gc_collections"] == 0 and total > 1  # the garbage made collections, none during the run
    assert gc.isenabled() == gc_was_enabled  # the collector is back as it was
    assert 0 <= result["loop_lag_max_ms"] < 1000


def test_no_request_is_sent_before_it_is_due():
    """uvloop's timers count whole milliseconds and woke the scheduler up to 1 ms early: a request
    sent before its due time reads faster than its answer took (a CI run failed with p50 2.526 ms
    below the service p50 2.561 ms). Many requests, a few per millisecond, make an early wake certain."""
    port, stop = _slow_server(0.0)
    try:
        result = fixed_rate(f"http://127.0.0.1:{port}", "k", "n", batch=1, rate=400, duration=2.0, connections=4)
    finally:
        stop.set()
    assert result["acknowledged"] == 800
    assert result["send_lag_min_ms"] >= 0
    assert result["p50_ms"] >= result["service_p50_ms"]
