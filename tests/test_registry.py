"""Registry: the quality gate, the champion alias through promote/rollback, the artifact scan."""
import json

import numpy as np
import pandas as pd
import pytest

from wenlv.privacy import leak_scan
from wenlv.training import registry, tracking
from wenlv.training.bundle import ModelBundle
from wenlv.errors import WenlvError
from wenlv.settings import reset_settings

PASSED = {"federated_matches_central": True, "artifacts_clean": True}
VAL = {"validation_ndcg@10": 0.20, "validation_popularity_ndcg@10": 0.10}  # beats popularity on validation


def _m(ndcg: float, **extra) -> dict:
    return {"ndcg@10": ndcg, **VAL, **extra}


# ---------------------------------------------------------------- the gate as a pure decision
def test_gate_accepts_first_model_and_equal_or_slightly_worse():
    assert registry.quality_gate(_m(0.30), PASSED, None).passed
    assert registry.quality_gate(_m(0.295), PASSED, {"ndcg@10": 0.30}, tolerance=0.01).passed


def test_gate_refuses_worse_beyond_tolerance():
    d = registry.quality_gate(_m(0.25), PASSED, {"ndcg@10": 0.30}, tolerance=0.01)
    assert not d.passed and "worse than the champion" in d.reasons[0]
    assert d.quality.checks == {"beats_popularity_on_validation": True, "within_tolerance_of_champion": False}


def test_gate_tolerance_is_a_setting(monkeypatch):
    monkeypatch.setenv("WENLV_GATE_TOLERANCE", "0.1")
    reset_settings()
    try:
        assert registry.quality_gate(_m(0.25), PASSED, {"ndcg@10": 0.30}).passed
    finally:
        monkeypatch.delenv("WENLV_GATE_TOLERANCE")
        reset_settings()
    assert not registry.quality_gate(_m(0.25), PASSED, {"ndcg@10": 0.30}).passed


def test_gate_refuses_a_version_that_loses_to_popularity_on_validation():
    lose = {"ndcg@10": 0.9, "validation_ndcg@10": 0.10, "validation_popularity_ndcg@10": 0.12}
    d = registry.quality_gate(lose, PASSED, None)
    assert not d.passed and "does not beat popularity" in d.reasons[0]
    tie = {**lose, "validation_ndcg@10": 0.12}
    assert not registry.quality_gate(tie, PASSED, None).passed
    d = registry.quality_gate({"ndcg@10": 0.9}, PASSED, None)  # no validation metrics: cannot show it
    assert not d.passed and "no validation metrics" in d.reasons[0]


def test_gate_refuses_failed_or_missing_privacy_check():
    d = registry.quality_gate(_m(0.9), {**PASSED, "federated_matches_central": False}, {"ndcg@10": 0.3})
    assert not d.passed and d.reasons == ["privacy check federated_matches_central failed"]
    d = registry.quality_gate(_m(0.9), {"federated_matches_central": True}, None)
    assert not d.passed and "artifacts_clean missing" in d.reasons[0]
    assert not registry.quality_gate({}, PASSED, None).passed


# ---------------------------------------------------------------- against a real MLflow SQLite store
def _bundle(tmp_path, tag: str) -> ModelBundle:
    rng = np.random.default_rng(len(tag))
    return ModelBundle(
        pois=pd.DataFrame({"poi_id": ["p1", "p2"], "name": ["A", "B"], "category": ["museum", "hotel"],
                           "city": ["x", "x"], "lat": [1.0, 1.1], "lon": [2.0, 2.1], "open_time": ["09:00"] * 2,
                           "close_time": ["17:00"] * 2, "visit_minutes": [60, 90], "price_cny": [10.0, 0.0],
                           "popularity": [3.0, 1.0]}),
        poi_factors=rng.random((2, 4), dtype=np.float32),
        users=pd.DataFrame({"token": ["aa11", "bb22"], "is_prospect": [False, True]}),
        user_factors=rng.random((2, 4), dtype=np.float32),
        history=pd.DataFrame({"token": ["aa11"], "poi_id": ["p1"]}),
        meta={"tag": tag})


def _version(tmp_path, uri, tag, ndcg, checks=PASSED, validation=VAL) -> int:
    folder = _bundle(tmp_path, tag).save(tmp_path / tag / "bundle")
    logged = tracking.log_run(params={"tag": tag}, metrics={"ndcg@10": ndcg, **validation}, artifacts={"bundle": folder},
                              tags={f"{registry.CHECK_PREFIX}{k}": "passed" if v else "failed"
                                    for k, v in checks.items()}, tracking_uri=uri)
    return registry.register_version(logged["run_id"], uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow")
    return tracking.store_for_dir(folder)[0], folder


def test_champion_follows_promote_and_rollback(store, tmp_path):
    uri, _ = store
    assert registry.champion_version(uri) is None
    with pytest.raises(WenlvError, match="no champion"):
        registry.load_champion_bundle(uri)
    v1 = _version(tmp_path, uri, "first", 0.30)
    assert registry.promote(v1, uri).passed and registry.champion_version(uri) == v1
    v2 = _version(tmp_path, uri, "better", 0.32)
    assert registry.promote(v2, uri).passed and registry.champion_version(uri) == v2

    worse = _version(tmp_path, uri, "worse", 0.20)
    decision = registry.promote(worse, uri)
    assert not decision.passed and registry.champion_version(uri) == v2
    leaky = _version(tmp_path, uri, "leaky", 0.50, {**PASSED, "artifacts_clean": False})
    assert not registry.promote(leaky, uri).passed and registry.champion_version(uri) == v2
    loser = _version(tmp_path, uri, "loses-to-popularity", 0.50,
                     validation={"validation_ndcg@10": 0.05, "validation_popularity_ndcg@10": 0.08})
    assert not registry.promote(loser, uri).passed and registry.champion_version(uri) == v2
    c = tracking.client(uri)
    tags = c.get_model_version(registry.MODEL_NAME, str(loser)).tags
    assert tags["gate.beats_popularity_on_validation"] == "failed"
    assert tags["gate.within_tolerance_of_champion"] == "passed"
    assert float(tags["gate.validation_popularity_ndcg_at_10"]) == pytest.approx(0.08)
    run_metrics = c.get_run(c.get_model_version(registry.MODEL_NAME, str(loser)).run_id).data.metrics
    assert run_metrics["gate_beats_popularity_on_validation"] == 0.0
    assert run_metrics["gate_margin_vs_popularity"] == pytest.approx(-0.03)
    assert c.get_model_version(registry.MODEL_NAME, str(worse)).tags["gate.within_tolerance_of_champion"] == "failed"

    bundle, version = registry.load_champion_bundle(uri, tmp_path / "dl")
    assert version == v2 and bundle.meta["tag"] == "better" and bundle.factors == 4

    assert registry.rollback(uri) == v1 and registry.champion_version(uri) == v1
    assert registry.load_champion_bundle(uri, tmp_path / "dl1")[0].meta["tag"] == "first"
    with pytest.raises(WenlvError, match="no earlier champion"):
        registry.rollback(uri)
    assert registry.champion_version(uri) == v1
    with pytest.raises(WenlvError, match="no version 999"):
        registry.promote(999, uri)


def test_cli_promote_and_rollback(store, tmp_path, capsys):
    from wenlv.cli import main

    uri, _ = store
    v = _version(tmp_path, uri, "cli", 0.99)
    assert main(["promote", "--version", str(v), "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)["champion_version"] == v
    bad = _version(tmp_path, uri, "cli-bad", 0.10)
    assert main(["promote", "--version", str(bad), "--tracking-uri", uri]) == 1
    assert json.loads(capsys.readouterr().out)["passed"] is False
    assert main(["rollback", "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)["champion_version"] != v
    assert main(["promote", "--version", "4242", "--tracking-uri", uri]) == 2  # clear error, exit 2


# ---------------------------------------------------------------- the artifact scan
def test_scan_passes_a_clean_bundle_and_catches_leaks(tmp_path):
    folder = _bundle(tmp_path, "clean").save(tmp_path / "clean")
    assert leak_scan.scan_folder(folder).clean

    (folder / "card.md").write_text("contact 8613812345678 for details")
    assert any("phone" in f for f in leak_scan.scan_folder(folder).findings)
    (folder / "card.md").write_text("token a13812345678bcd and ndcg 0.13812345678 are fine")
    assert leak_scan.scan_folder(folder).clean

    pd.DataFrame({"token": ["aa"], "dwell_minutes": [120.0]}).to_parquet(folder / "stats.parquet")
    findings = leak_scan.scan_folder(folder).findings
    assert findings == ["stats.parquet: per-party statistic column(s) ['dwell_minutes']"]
    (folder / "stats.parquet").unlink()

    pd.DataFrame({"id": np.array([8613912345678], dtype=np.int64)}).to_parquet(folder / "ids.parquet")
    assert any("phone" in f for f in leak_scan.scan_folder(folder).findings)
    (folder / "ids.parquet").unlink()

    np.save(folder / "area_factors.npy", np.zeros((12, 4), np.float32))
    assert leak_scan.scan_folder(folder, forbidden_shapes=[(12, 4)]).findings
    assert leak_scan.scan_folder(folder, phones=["8613700000000"], forbidden_shapes=[(7, 4)]).clean


def test_tracking_uri_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    default = tracking.resolve_tracking_uri()
    assert default == f"sqlite:///{(tracking.REPO_ROOT / 'mlflow' / 'mlflow.db').resolve()}"
    assert tracking._artifact_root(default) == (tracking.REPO_ROOT / "mlflow" / "artifacts").resolve().as_uri()
    assert tracking.resolve_tracking_uri(store_dir=tmp_path) == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    reset_settings()
    assert tracking.resolve_tracking_uri() == "http://mlflow.example:5000"
    assert tracking.resolve_tracking_uri("sqlite:///x.db") == "sqlite:///x.db"
    assert tracking.mlflow_name("ndcg@10") == "ndcg_at_10" and tracking.wenlv_name("ndcg_at_10") == "ndcg@10"
