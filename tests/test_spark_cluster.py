"""The same feature job on a Spark standalone cluster (a master and a worker on 127.0.0.1).

Runs `wenlv features --master spark://…` in a subprocess (one SparkContext per process;
the test session already holds a local one), then checks the cluster ran it and the
blocks are right. The master and worker are stopped afterwards, pass or fail.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from wenlv.features import contracts as C
from tests.test_spark_features import ADS, MARKETING, SHARING, SPLIT, SUBSCRIBERS, make_raw

pytestmark = [pytest.mark.spark, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def master_state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as resp:
        return json.loads(resp.read())


def wait_for(what: str, check, seconds: float = 120.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(1.0)
    pytest.fail(f"Spark standalone {what} did not come up within {seconds:.0f} s")


@pytest.fixture
def cluster(tmp_path):
    import pyspark

    spark_class = Path(pyspark.__file__).parent / "bin" / "spark-class"
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", SPARK_HOME=str(Path(pyspark.__file__).parent),
               SPARK_WORKER_DIR=str(tmp_path / "worker"), SPARK_LOG_DIR=str(tmp_path / "logs"),
               PYSPARK_PYTHON=sys.executable)
    port, ui, worker_ui = free_port(), free_port(), free_port()
    url = f"spark://127.0.0.1:{port}"
    logs = (tmp_path / "master.log").open("w"), (tmp_path / "worker.log").open("w")
    procs = [subprocess.Popen([str(spark_class), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env, stdout=logs[0], stderr=subprocess.STDOUT)]
    try:
        wait_for("master", lambda: master_state(ui)["status"] == "ALIVE")
        procs.append(subprocess.Popen([str(spark_class), "org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1",
                                       "--cores", "2", "--memory", "1g", "--webui-port", str(worker_ui)],
                                      env=env, stdout=logs[1], stderr=subprocess.STDOUT))
        wait_for("worker", lambda: master_state(ui)["aliveworkers"] >= 1)
        yield url, ui, env
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for fh in logs:
            fh.close()


def test_features_job_runs_on_a_standalone_cluster(cluster, tmp_path):
    url, ui, env = cluster
    raw, out = make_raw(tmp_path / "raw"), tmp_path / "features"
    env = dict(env, WENLV_SPARK_DRIVER_MEMORY="1g", PYTHONPATH=str(ROOT), OPENBLAS_NUM_THREADS="1")
    cmd = [str(Path(sys.executable).parent / "wenlv"), "features", "--data", str(raw), "--out", str(out),
           "--master", url, "--split-date", SPLIT.isoformat(), "--no-progress"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(ROOT))
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    apps = master_state(ui)
    finished = apps["completedapps"] + apps["activeapps"]
    assert any(app["name"] == "wenlv" for app in finished), "the job did not run on the cluster"

    assert result["psi"]["tourism_carrier_matched"] == len(set(MARKETING) & set(SUBSCRIBERS))
    assert result["psi"]["internet_carrier_matched"] == len(set(ADS) & set(SHARING))
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["tables"]) == {f"{t.party}/{t.name}" for t in C.BLOCK_TABLES}
    tourism = pq.read_table(out / "tourism" / "interactions.parquet").to_pandas()
    carrier = pq.read_table(out / "carrier" / "interactions.parquet").to_pandas()
    t = {int(round(r.spend_cny / 3)) - 100: r.token for r in tourism.itertuples()}
    c = {int(r.dwell_minutes) - 100: r.token for r in carrier.itertuples()}
    assert all(t[p] == c[p] for p in set(t) & set(c)) and len(set(t) & set(c)) == 10
