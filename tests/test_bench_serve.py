"""`wenlv bench serve` survives a load phase that gets no answer at all (hey returned no results under load once:
the run computed a percentile of nothing and crashed, leaving its private Redis running)."""
import asyncio
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest

from wenlv.bench import serve
from wenlv.bench.private_redis import PrivateRedis
from wenlv.serving.runtime import free_port
from tests.support.loopback_http import serve_in_thread


def test_a_phase_without_results_reports_an_error_instead_of_crashing():
    if shutil.which("hey") is None:
        pytest.skip("hey is not installed (apt-get install -y hey)")
    base = f"http://127.0.0.1:{free_port()}"  # nothing listens: every request fails, hey writes no result rows
    out = serve._hey_fixed_rate(base, "wlv_x_y", ["/healthz"], rate=20, duration=1)
    assert out["requests"] == 0 and out["p99_ms"] is None
    assert out["error"].startswith("hey returned no results")


def test_cleanup_stops_redis_even_when_stopping_the_server_fails(tmp_path):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    redis_server = PrivateRedis().start()
    process = redis_server.proc
    gone = subprocess.Popen(["true"])
    gone.wait()
    gone.terminate = lambda: (_ for _ in ()).throw(OSError("no such process"))  # stopping the server raises
    notes = serve._cleanup(gone, redis_server, tmp_path / "work")
    assert notes == {"server_stop": "OSError: no such process"}
    assert process.wait(timeout=10) is not None and redis_server.proc is None


def _arrival_recorder() -> tuple[int, list[float], threading.Event]:
    """An HTTP server that answers 200 at once and records when each request arrived."""
    arrivals: list[float] = []

    async def handle(reader, writer):
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                break
            arrivals.append(time.perf_counter())
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
            await writer.drain()
        writer.close()

    port, stop = serve_in_thread(handle)
    return port, arrivals, stop


def test_the_fixed_rate_phase_spreads_requests_in_time_instead_of_bursts():
    """hey's workers tick together: the old phase sent its requests in bursts of 15 at once (3 processes
    × 5 workers), which measured how fast the server clears a burst, not latency at the rate."""
    if shutil.which("hey") is None:
        pytest.skip("hey is not installed (apt-get install -y hey)")
    port, arrivals, stop = _arrival_recorder()
    try:
        out = serve._hey_fixed_rate(f"http://127.0.0.1:{port}", "wlv_x_y", ["/a", "/b", "/c"], rate=90, duration=3)
    finally:
        stop.set()
    assert out["errors"] == 0 and 200 <= out["requests"] <= 290
    times = np.sort(np.array(arrivals))
    crowd = max(int(np.searchsorted(times, t + 0.003) - i) for i, t in enumerate(times))  # most arrivals within 3 ms
    assert crowd <= 3, f"{crowd} requests arrived within 3 ms of each other"
