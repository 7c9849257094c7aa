"""The serving demo stage on a bundle folder: materialise, serve over loopback, call it."""
from wenlv.serving import demo_stage
from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.demo import DemoContext


def test_demo_stage_serves_a_trained_bundle(tmp_path, monkeypatch):
    monkeypatch.delenv("REDIS_URL", raising=False)  # the embedded default: SQLite in the workdir
    synthetic_bundle(n_pois=40, n_users=60, factors=8, seed=9, version="4").save(tmp_path / "bundle")
    ctx = DemoContext(workdir=tmp_path, progress=False)
    ctx.results["train"] = {"model_version": "4", "_paths": {"bundle_dir": str(tmp_path / "bundle")}}
    out = demo_stage.run(ctx)
    assert out["requests"] == demo_stage.N_REQUESTS and out["errors"] == 0 and out["degraded_responses"] == 0
    assert out["model_version"] == "4" and out["materialized_users"] == 60
    assert out["strategies"]["als"] > 0 and out["strategies"]["popularity"] > 0
    assert 0 < out["p50_ms"] <= out["p99_ms"]
    assert (tmp_path / "online_store.sqlite").exists()
