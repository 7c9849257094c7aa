"""An open-loop load generator: POST batches of events at a fixed rate, whatever the answers do.

wrk is a closed loop: a connection sends its next request only when the last one is answered,
so a slow server is offered less load and its queueing never shows in the latencies
(coordinated omission). Here request i is due at start + i / rate and is sent then on a free
connection (a new one if all are busy, up to `connections`); its latency is measured from
when it was *due*, so time spent waiting behind a slow answer counts, as wrk2 does. At the
rates this measures (~100 requests/s) one asyncio loop is far from its own limit. `send_lag`
(sent minus due) is the wait for a free connection plus the generator's own delay: a few ms
while the server keeps up, growing when all `connections` are busy (the server fell behind);
never negative (`send_lag_min_ms`): uvloop's millisecond timers woke up to 1 ms early, the
early requests read faster than their answers took, and a CI run failed on exactly that.

The generator must not stall itself: inside `wenlv bench` its process holds every benchmark's
imports (~200k objects), and one gen-2 garbage collection there took 206 ms in the middle of a
run, so twenty requests went out late at once and the p99 read 230-420 ms while the server
answered in 10 ms. The collector is therefore paused for the run (`_collector_paused`; the run
allocates little, the bodies are built before it), and a watcher task records how late the
loop woke (`loop_lag_max_ms`): a generator stall shows as itself, not as server latency.
"""
from __future__ import annotations

import asyncio
import gc
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import numpy as np
import uvloop  # uvicorn[standard]'s loop (the server's too): less timing jitter in the generator

KINDS = ("impression", "click", "booking", "visit")


def event_batch(nonce: str, n: int, batch: int, lists: int = 1000) -> bytes:
    """Request n's body: `batch` events with ids unique to (nonce, n, position), the same shape as wrk's script
    (recommendation ids cycle through `lists` served lists)."""
    parts = []
    for j in range(1, batch + 1):
        kind = KINDS[j % 4]
        amount = ',"amount_cny":"88.50"' if kind in ("booking", "visit") else ""
        parts.append(f'{{"event_id":"{nonce}-{n}-{j}","kind":"{kind}","token":"{0:08x}{(n * batch + j) % 100000:024x}",'
                     f'"poi_id":"P{j}"{amount},"occurred_at":"2026-05-01T10:00:00+08:00",'
                     f'"recommendation_id":"{n % lists:032x}"}}')
    return ('{"events":[' + ",".join(parts) + "]}").encode()


class _Connections:
    """Keep-alive HTTP/1.1 connections to one server, opened on demand up to `limit`.

    A few lines of asyncio streams rather than an HTTP client library: at 100 requests/s of
    20 kB bodies httpx's async pool spent more CPU than the server and fell seconds behind
    its own schedule on the shared 2 cores."""

    def __init__(self, host: str, port: int, limit: int):
        self.host, self.port, self.limit, self.opened = host, port, limit, 0
        self.idle: asyncio.Queue = asyncio.Queue()

    async def take(self):
        if self.idle.empty() and self.opened < self.limit:
            self.opened += 1
            try:
                return await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.opened -= 1
                raise
        return await self.idle.get()

    def give_back(self, connection) -> None:
        self.idle.put_nowait(connection)

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


async def _post(connection, request: bytes) -> tuple[int, bytes]:
    """One request on a kept-alive connection: (status, body); the answer must carry Content-Length."""
    reader, writer = connection
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), None)
    if length is None:
        raise ValueError(f"an answer without Content-Length: {lines[0]}")
    return status, await reader.readexactly(length)


LAG_TICK_S = 0.005  # the watcher's sleep: how finely a stall of the generator's own loop is seen


@contextmanager
def _collector_paused() -> Iterator[None]:
    """No garbage collection inside the block: what exists is collected and frozen first, the
    collector re-enabled after (as it was)."""
    was_enabled = gc.isenabled()
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        yield
    finally:
        gc.unfreeze()
        if was_enabled:
            gc.enable()


def _collections() -> int:
    """Garbage collections this process has run so far, all generations."""
    return sum(stats["collections"] for stats in gc.get_stats())


async def _watch_loop_lag(lags: list[float], stop: asyncio.Event) -> None:
    """How late the generator's own loop woke each tick (seconds): its stalls, not the server's."""
    while not stop.is_set():
        slept = time.perf_counter()
        await asyncio.sleep(LAG_TICK_S)
        lags.append(time.perf_counter() - slept - LAG_TICK_S)


async def _run(host: str, port: int, key: str, bodies: list[bytes], rate: float, connections: int,
               timeout_s: float) -> dict:
    head = (f"POST /v1/events HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {key}\r\n"
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n")
    requests = [head.format(len(body)).encode() + body for body in bodies]  # built before the clock starts
    latency, service, lag = [], [], []
    counts = {"acknowledged": 0, "acknowledged_duplicates": 0, "batches_with_rejections": 0, "flagged": 0,
              "non_200": 0, "socket_errors": 0}
    pool = _Connections(host, port, connections)

    async def send(request: bytes, due: float) -> None:
        connection = None
        try:
            connection = await pool.take()
            sent = time.perf_counter()
            lag.append(sent - due)
            status, body = await asyncio.wait_for(_post(connection, request), timeout_s)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            counts["socket_errors"] += 1
            if connection is not None:
                connection[1].close()
                pool.opened -= 1
            return
        done = time.perf_counter()
        pool.give_back(connection)
        if status != 200:
            counts["non_200"] += 1
            return
        answer = json.loads(body)
        counts["acknowledged"] += answer["accepted"]
        counts["acknowledged_duplicates"] += answer["duplicates"]
        counts["batches_with_rejections"] += bool(answer["rejected"])
        counts["flagged"] += len(answer.get("flagged", ()))
        latency.append(done - due)
        service.append(done - sent)

    loop_lags: list[float] = []
    stop_watch = asyncio.Event()
    watcher = asyncio.create_task(_watch_loop_lag(loop_lags, stop_watch))
    start = time.perf_counter() + 0.05  # perf_counter: uvloop's loop.time() ticks in whole milliseconds
    tasks = []
    for i, request in enumerate(requests):
        due = start + i / rate
        # never before `due` (module docstring): uvloop's millisecond timers may fire early
        while (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(send(request, due)))
    await asyncio.gather(*tasks)
    duration = time.perf_counter() - start
    stop_watch.set()
    await watcher
    pool.close()
    ms = lambda values, q: round(float(np.percentile(values, q)) * 1000, 3) if values else None  # noqa: E731
    return {"requests": len(requests), "duration_s": round(duration, 3), "offered_requests_per_s": rate,
            "p50_ms": ms(latency, 50), "p90_ms": ms(latency, 90), "p99_ms": ms(latency, 99),
            "max_ms": ms(latency, 100), "service_p50_ms": ms(service, 50), "service_p99_ms": ms(service, 99),
            "send_lag_min_ms": ms(lag, 0), "send_lag_p99_ms": ms(lag, 99), "send_lag_max_ms": ms(lag, 100),
            "loop_lag_max_ms": ms(loop_lags, 100),
            "connections_opened": pool.opened,
            **counts}


def fixed_rate(base: str, key: str, nonce: str, batch: int, rate: float, duration: float, connections: int = 32,
               timeout_s: float = 10.0, lists: int = 1000) -> dict:
    """POST `rate` batches a second for `duration` seconds; latencies from each request's due time."""
    bodies = [event_batch(nonce, n, batch, lists) for n in range(int(rate * duration))]
    url = httpx.URL(base)
    started = time.perf_counter()
    with _collector_paused():
        collected_before = _collections()
        result = uvloop.run(_run(url.host, url.port or 80, key, bodies, rate, connections, timeout_s))
        result["gc_collections"] = _collections() - collected_before  # the generator's, during the run: 0
    result["wall_s"] = round(time.perf_counter() - started, 3)
    return result
