"""NDCG@k and recall@k per user from a score matrix, and 95% intervals over users.

The same definitions as training.evaluation (Microsoft Recommenders: binary gain, ties
broken by item position, users with at least one relevant item), but one value per user,
so that a mean comes with its interval and two models can be compared user by user
(paired differences). Scores are taken in chunks of users: a 50k × 1k matrix is never
held at once.
"""
from __future__ import annotations

import math

import numpy as np
import scipy.sparse as sp

Z95 = 1.959963984540054


def per_user(score_fn, truth: sp.csr_matrix, k: int = 10, exclude: sp.csr_matrix | None = None,
             chunk: int = 4096) -> dict[str, np.ndarray]:
    """{"rows", "ndcg", "recall"} for each row of `truth` with a relevant item.

    score_fn(rows) -> [len(rows), n_items] scores; truth: [n_users, n_items] (> 0 = relevant);
    exclude: items removed from each user's ranking (and from the truth), or None.
    """
    truth = sp.csr_matrix(truth > 0, dtype=np.float64)
    if exclude is not None:
        ex = sp.csr_matrix(exclude > 0, dtype=np.float64)
        truth = truth - truth.multiply(ex)
        truth.eliminate_zeros()
    rows = np.flatnonzero(np.diff(truth.indptr) > 0)
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log1p(np.arange(1, k + 1, dtype=float)))])
    discount = 1.0 / np.log1p(np.arange(1, k + 1, dtype=float))
    ndcg, recall = np.empty(len(rows)), np.empty(len(rows))
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        s = np.array(score_fn(part), dtype=np.float64, copy=True)
        if exclude is not None:
            coo = sp.csr_matrix(exclude[part]).tocoo()
            s[coo.row, coo.col] = -np.inf
        kk = min(k, s.shape[1])
        top = np.argsort(-s, axis=1, kind="stable")[:, :kk]
        finite = np.isfinite(np.take_along_axis(s, top, axis=1))
        t = truth[part]
        hit = np.asarray(t[np.arange(len(part))[:, None], top].todense()) > 0
        hit &= finite
        n_rel = np.diff(t.indptr)
        ndcg[start:start + len(part)] = (hit * discount[:kk]).sum(axis=1) / ideal[np.minimum(n_rel, k)]
        recall[start:start + len(part)] = hit.sum(axis=1) / n_rel
    return {"rows": rows, "ndcg": ndcg, "recall": recall}


def interval(values: np.ndarray) -> list[float]:
    """Normal-approximation 95% interval of the mean of `values`."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return [float("nan"), float("nan")]
    half = Z95 * values.std(ddof=1) / math.sqrt(len(values))
    mean = float(values.mean())
    return [mean - half, mean + half]


def summary(values: dict[str, np.ndarray], k: int = 10) -> dict:
    """Means and 95% intervals: {"ndcg@k", "recall@k", "users", "ci95": {"ndcg@k": [lo, hi], ...}}."""
    return {f"ndcg@{k}": float(values["ndcg"].mean()) if len(values["ndcg"]) else 0.0,
            f"recall@{k}": float(values["recall"].mean()) if len(values["recall"]) else 0.0,
            "users": int(len(values["rows"])),
            "ci95": {f"ndcg@{k}": interval(values["ndcg"]), f"recall@{k}": interval(values["recall"])}}


def paired_difference(a: dict[str, np.ndarray], b: dict[str, np.ndarray], k: int = 10) -> dict:
    """a − b per user (same users in both): mean and 95% interval for NDCG and recall."""
    if not np.array_equal(a["rows"], b["rows"]):
        raise ValueError("paired difference needs the same users on both sides")
    return {f"{m}@{k}": {"mean": float((a[m] - b[m]).mean()), "ci95": interval(a[m] - b[m])}
            for m in ("ndcg", "recall")}
