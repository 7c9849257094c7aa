"""`wenlv evaluate` as an MLflow run of its own, linked to the model version it measured.

The run (tag `wenlv.kind` = evaluation) carries tags naming the registered model, the
version and the version's training run (`wenlv.model_run_id`); the version gets the tag
`last_evaluation_run`. Metrics are those of `evaluation.evaluate_scores` on the feature
folder's test window, plus NDCG@k and recall@k with a 95% interval over the test users
(`…_ci_low`, `…_ci_high`: mean ± 1.96 standard errors, the users being the sample).
"""
from __future__ import annotations

import math

import numpy as np

from wenlv.training import evaluation, registry, tracking

Z95 = 1.959964


def mean_interval(values) -> tuple[float, float, float]:
    """(mean, low, high) of a 95% normal interval for the mean of `values` (one per user)."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return math.nan, math.nan, math.nan
    mean = float(values.mean())
    half = Z95 * float(values.std(ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else math.nan
    return mean, mean - half, mean + half


def user_intervals(blocks, matrices, user_scores: np.ndarray, k: int = 10) -> dict:
    """95% intervals of NDCG@k and recall@k over the test users (every POI ranked, as `ndcg@k`)."""
    truth = blocks["tourism/test_interactions"].rename(columns={"token": evaluation.USER, "poi_id": evaluation.ITEM})
    truth = truth[[evaluation.USER, evaluation.ITEM]]
    rows = np.sort(matrices.row_of().reindex(truth[evaluation.USER].unique()).dropna().astype(int).to_numpy())
    recs = evaluation.top_k(user_scores[rows], matrices.tokens[rows], matrices.items["tourism"], k)
    per_user = evaluation.per_user_ndcg_recall(truth, recs, k)
    out = {"interval_users": len(per_user)}
    for name in ("ndcg", "recall"):
        _, low, high = mean_interval(per_user[name])  # the mean is evaluate_scores' `{name}@{k}`
        out.update({f"{name}@{k}_ci_low": low, f"{name}@{k}_ci_high": high})
    return out


def log_evaluation(version: int, features_dir, metrics: dict, *, manifest_frame=None, params: dict | None = None,
                   tracking_uri: str | None = None) -> str:
    """Log the evaluation run, link it and the version both ways; returns the run id."""
    c = tracking.client(tracking_uri)
    mv = c.get_model_version(registry.MODEL_NAME, str(int(version)))
    tags = {"wenlv.kind": "evaluation", "wenlv.model_name": registry.MODEL_NAME, "wenlv.model_version": str(version),
            "wenlv.model_run_id": mv.run_id}
    logged = tracking.log_run(params={"features_dir": str(features_dir), "model_version": version, **(params or {})},
                              metrics=metrics, tags=tags, artifacts={}, manifest_frame=manifest_frame,
                              features_dir=str(features_dir), tracking_uri=c.tracking_uri,
                              run_name=f"evaluate-v{version}", dataset_context="evaluation")
    c.set_model_version_tag(registry.MODEL_NAME, str(version), "last_evaluation_run", logged["run_id"])
    return logged["run_id"]
