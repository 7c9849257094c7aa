"""`wenlv demo --json` end to end on the tiny scale: the real command, every stage, one summary.

The summary is what a user (and CI) reads, so its promises are checked against the files
the run left behind, not only against themselves.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from wenlv.privacy import leak_scan

pytestmark = [pytest.mark.slow, pytest.mark.spark]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "REDIS_URL", "DATABASE_URL")}
    env["OPENBLAS_NUM_THREADS"] = "1"
    done = subprocess.run(
        [sys.executable, "-m", "wenlv.cli", "demo", "--json", "--workdir", str(workdir)],
        capture_output=True, text=True, env=env, timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    last_line = done.stdout.strip().splitlines()[-1]
    return json.loads(last_line), workdir, done.stderr


def test_summary_has_every_stage_and_the_promised_keys(demo):
    summary, _, _ = demo
    assert summary["scale"] == "tiny"
    assert list(summary["stages"]) == ["data", "features", "train", "serving", "itinerary", "campaign",
                                         "ledger"]
    assert all(seconds > 0 for seconds in summary["stages"].values())
    for key in ("people", "pois", "visits"):
        assert summary["data"][key] > 0
    for key in ("tourism_carrier_matched", "internet_carrier_matched"):
        assert summary["psi"][key] > 0
    for key in ("federated_vs_central_max_abs_diff", "ndcg@10", "recall@10", "popularity_ndcg@10",
                "prospect_lift_vs_random", "shapley", "mlflow_run_id", "model_version"):
        assert key in summary["train"], key
    assert set(summary["train"]["shapley"]) == {"carrier", "internet"}
    for key in ("requests", "p50_ms", "p99_ms", "errors", "model_version"):
        assert key in summary["serving"], key
    for key in ("plans", "feasible_share", "mean_stops_per_day", "mean_solve_ms"):
        assert key in summary["itinerary"], key
    for key in ("audience_size", "holdout_size", "prospect_share", "audience_precision", "random_precision",
                "baseline_precision", "true_incremental_revenue_cny"):
        assert key in summary["campaign"], key
    campaign = summary["campaign"]
    assert campaign["holdout_size"] < campaign["audience_size"] and campaign["prospect_share"] == 1.0
    assert campaign["audience_precision"] > campaign["random_precision"]
    ledger = summary["ledger"]
    for key in ("events", "incremental_revenue_cny", "ci95", "true_incremental_revenue_cny", "last_touch_revenue_cny",
                "returns_by_source", "asset_value_cny"):
        assert key in ledger, key
    assert ledger["events"] == campaign["events_written"] > 0
    assert ledger["true_incremental_revenue_cny"] == campaign["true_incremental_revenue_cny"]
    low, high = ledger["ci95"]
    assert low <= ledger["incremental_revenue_cny"] <= high
    assert set(ledger["returns_by_source"]) == {"tourism", "carrier", "internet"}
    assert sum(ledger["returns_by_source"].values()) == pytest.approx(ledger["incremental_revenue_cny"], abs=0.5)  # fen rounding per day
    assert ledger["returns_split_by_version"] == str(summary["train"]["model_version"])
    assert set(ledger["asset_value_cny"]) == {"cost", "income"} and ledger["asset_value_cny"]["cost"] > 0


def test_the_stages_agree_with_each_other_and_with_the_files(demo):
    summary, workdir, _ = demo
    manifest = json.loads(Path(summary["features"]["manifest"]).read_text())
    for table, rows in summary["features"]["row_counts"].items():
        assert manifest["tables"][table]["rows"] == rows, table
    visits = pd.read_parquet(workdir / "data" / "tourism" / "visits.parquet")
    assert len(visits) == summary["data"]["visits"]
    assert summary["psi"]["tourism_carrier_matched"] <= summary["data"]["people"]
    # federated ALS reproduces implicit ALS to fixed-point precision
    assert summary["train"]["federated_vs_central_max_abs_diff"] < 1e-4
    assert summary["serving"]["model_version"] == str(summary["train"]["model_version"])
    assert summary["serving"]["errors"] == 0 and summary["serving"]["requests"] > 0
    assert summary["itinerary"]["feasible_share"] == 1.0
    assert summary["itinerary"]["plans"] > 0


def test_no_phone_number_in_the_summary_or_the_logs(demo):
    summary, workdir, stderr = demo
    phones = set(pd.read_parquet(workdir / "data" / "carrier" / "subscribers.parquet")["phone"].astype(str))
    text = json.dumps(summary) + stderr
    leaked = [p for p in list(phones)[:5000] if p in text]
    assert not leaked, f"{len(leaked)} phone numbers appear in the demo's output"


def test_the_privacy_scan_finds_nothing_in_what_the_demo_left_behind(demo):
    """Every output beside the raw party data — blocks, bundles, MLflow (artifacts and its SQL store: params, tags,
    metrics), the campaign and ledger database, the online store, the API key database, exports, reports, and the
    run's log — holds no phone number in any spelling and no plain hash of one (issue 18, item 4)."""
    summary, workdir, stderr = demo
    matcher = leak_scan.PhoneMatcher(leak_scan.known_phones(workdir / "data"))
    assert len(matcher.known) > 1000
    (workdir / "demo.log").write_text(stderr + json.dumps(summary))
    report = leak_scan.ScanReport()
    for child in sorted(workdir.iterdir()):
        if child.name == "data":
            continue  # the parties' raw tables: where the numbers legitimately are
        if child.is_dir():
            # feature blocks hold each party's own statistics for its own training; phones are what must not be there
            allowed = leak_scan.party_statistic_columns() if child.name == "features" else ()
            report.extend(leak_scan.scan_folder(child, matcher=matcher, allowed_columns=allowed))
        elif child.suffix == ".sqlite" or child.suffix == ".db":
            report.extend(leak_scan.scan_database(f"sqlite:///{child}", matcher))
    for db in workdir.rglob("*.db"):
        report.extend(leak_scan.scan_database(f"sqlite:///{db}", matcher))
    assert report.places > 50
    assert report.clean, report.findings[:10]


def test_the_served_version_has_its_indexes_recorded_in_mlflow(demo):
    from mlflow.tracking import MlflowClient

    from wenlv.training import tracking

    summary, workdir, _ = demo
    uri = tracking.store_for_dir(workdir / "mlflow")[0]
    client = MlflowClient(tracking_uri=uri)
    version = client.get_model_version_by_alias("wenlv-recommender", "champion")
    assert str(version.version) == str(summary["serving"]["model_version"])
    stored = {a.path.rsplit("/", 1)[-1] for a in client.list_artifacts(version.run_id, "indexes")}
    assert {"manifest.json", "pois.faiss"} <= stored
    assert summary["serving"]["index_source"] in ("built", "mlflow")


# Lines a healthy demo may print that match the check below, each with the reason it stays:
EXPECTED_NOTICES = (
    # the JVM's own notice: Spark 4's launcher always adds --add-modules=jdk.incubator.vector
    # (launcher.JavaModuleOptions) and the JDK announces it on stderr; no option turns it off
    "WARNING: Using incubator modules: jdk.incubator.vector",
    # a deliberate privacy caveat, once per party count: the Shapley coalition retrains run
    # federated ALS with 1 and 2 parties, where the masks cannot hide a party's statistics
    "WARNING wenlv.training.federated_als: federated ALS with 1 party: pairwise masks do not hide",
    "WARNING wenlv.training.federated_als: federated ALS with 2 parties: pairwise masks do not hide",
)
ALARMING = re.compile(r"Traceback|Error|WARN|Warning")


def alarming_lines(stderr: str) -> list[str]:
    """stderr lines (progress bars split on \\r) that look like trouble and are not an expected notice."""
    lines = stderr.replace("\r", "\n").splitlines()
    return [line for line in lines if ALARMING.search(line) and not any(n in line for n in EXPECTED_NOTICES)]


def test_alarming_lines_are_found():
    """The check itself: each of the lines a healthy run used to print would fail it."""
    old = ("26/12/03 09:48:50 WARN Utils: Your hostname, vm, resolves to a loopback address: 127.0.0.1; using "
           "192.0.2.2 instead (on interface eth0)\n"
           "ModuleNotFoundError(\"No module named 'faiss.swigfaiss_avx2'\")\n"
           "features:  0%| |0/8\r.../pyspark/sql/pandas/functions.py:777: FutureWarning: PySpark does not yet "
           "fully support pandas >= 3.0.0.\n"
           "Traceback (most recent call last):\n")
    assert len(alarming_lines(old)) == 4
    assert alarming_lines("[demo] stage data done in 1.0 s\n" + EXPECTED_NOTICES[0] + "\n") == []


def test_a_healthy_demo_prints_nothing_alarming(demo):
    _, _, stderr = demo
    assert alarming_lines(stderr) == []


def test_the_demo_ends_with_what_to_try_next(demo):
    summary, workdir, stderr = demo
    tail = stderr[stderr.rindex("Next steps"):]
    uri = f"sqlite:///{(workdir / 'mlflow' / 'mlflow.db').resolve()}"
    assert f"wenlv serve --tracking-uri {uri} --sqlite {workdir / 'online_store.sqlite'}" in tail
    assert f"wenlv apikey create --role visitor-app --tenant demo --keys {workdir / 'api_keys.sqlite'}" in tail
    assert re.search(r"curl -s -H \"Authorization: Bearer \$KEY\" 'http://127\.0\.0\.1:8000/v1/visitors/\w+/"
                     r"recommendations\?k=5'", tail)
    assert f"mlflow ui --backend-store-uri {uri}" in tail
    assert "http://127.0.0.1:8000/dashboard" in tail and f"WENLV_DATABASE_SQLITE={workdir / 'campaigns.sqlite'}" in tail
    assert (Path(summary["ledger"]["report"])).is_file()
