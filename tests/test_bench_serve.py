"""`wenlv bench serve` survives a load phase that gets no answer at all (hey returned no results under load once:
the run computed a percentile of nothing and crashed, leaving its private Redis running)."""
import shutil
import subprocess

import pytest

from wenlv.bench import serve
from wenlv.bench.private_redis import PrivateRedis
from wenlv.serving.runtime import free_port


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
