"""Demo stage `train`: federated training on the demo's feature blocks, logged to its own MLflow store."""
from __future__ import annotations

from wenlv.settings import get_settings
from wenlv.training import tracking
from wenlv.training.pipeline import TrainConfig, train


def run(ctx) -> dict:
    features_dir = ctx.results["features"]["_paths"]["features_dir"]
    data_dir = ctx.results.get("data", {}).get("_paths", {}).get("data_dir")
    tracking_uri = get_settings().mlflow_tracking_uri or tracking.store_for_dir(ctx.workdir / "mlflow")[0]
    config = TrainConfig(mode="federated", seed=ctx.seed, progress=ctx.progress)
    out = train(features_dir, config, tracking_uri=tracking_uri, data_dir=data_dir, work_dir=ctx.workdir / "train")
    m = out["metrics"]
    ctx.log(f"model version {out['model_version']} (champion: {out['champion_version']}); "
            f"NDCG@10 {m['ndcg@10']:.3f} vs popularity {m['popularity_ndcg@10']:.3f}")
    shapley = out["shapley"]["values"] if out["shapley"] else {}
    return {
        "federated_vs_central_max_abs_diff": m.get("federated_vs_central_max_abs_diff"),
        "ndcg@10": m["ndcg@10"],
        "recall@10": m["recall@10"],
        "popularity_ndcg@10": m["popularity_ndcg@10"],
        "prospect_lift_vs_random": m.get("prospect_lift_vs_random"),
        "tower_prospect_lift_vs_random": m.get("tower_prospect_lift_vs_random"),
        "shapley": {p: shapley.get(p) for p in ("carrier", "internet")},
        "privacy_checks": out["checks"],
        "promoted": out["promoted"],
        "mlflow_run_id": out["run_id"],
        "model_version": out["model_version"],
        "_paths": {"bundle_dir": out["bundle_dir"], "tracking_uri": out["tracking_uri"]},
    }
