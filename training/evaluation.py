"""Offline quality of a recommender on the temporal split (DESIGN §5).

Ranking metrics follow Microsoft Recommenders' `python_evaluation` exactly:

* users are those present in both the truth and the recommendations; a user with no hit
  counts as 0 (so precision, recall, NDCG and MAP are averages over those users);
* precision@k = hits in the top k / k (also when fewer than k items were recommended);
* recall@k = hits / |relevant|;
* NDCG@k with binary gain: Σ_hits 1/log(1+rank) / Σ_{i≤min(|relevant|,k)} 1/log(1+i);
* MAP@k = Σ_hits (hit number / rank) / min(|relevant|, k);
* catalog coverage = distinct recommended items / distinct items in training;
* novelty = mean over recommendations of −log2(item's training records / all training records).

Frames are plain pandas: truth and training interactions have columns `user, item`;
recommendations have `user, item, rank` (rank 1 is the best).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

USER, ITEM, RANK = "user", "item", "rank"


def _check(frame: pd.DataFrame, name: str, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{name} lacks column(s) {missing}; has {list(frame.columns)}")


def _hits(truth: pd.DataFrame, recs: pd.DataFrame, k: int):
    """Per common user: the ranks of hits in the top k, and the number of relevant items."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _check(truth, "truth", (USER, ITEM))
    _check(recs, "recommendations", (USER, ITEM, RANK))
    truth = truth[[USER, ITEM]].drop_duplicates()
    common = pd.Index(truth[USER].unique()).intersection(pd.Index(recs[USER].unique()))
    top = recs[recs[USER].isin(common)].sort_values([USER, RANK])
    top = top.groupby(USER, sort=False).head(k).copy()
    top[RANK] = top.groupby(USER, sort=False).cumcount() + 1  # ranks 1..k after the cut
    hits = top.merge(truth, on=[USER, ITEM])[[USER, RANK]].sort_values([USER, RANK])
    actual = truth[truth[USER].isin(common)].groupby(USER).size()
    return hits, actual, len(common)


def precision_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10) -> float:
    hits, _, n_users = _hits(truth, recs, k)
    return float(len(hits) / k / n_users) if n_users else 0.0


def recall_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10) -> float:
    hits, actual, n_users = _hits(truth, recs, k)
    if not n_users or hits.empty:
        return 0.0
    per_user = hits.groupby(USER).size() / actual.reindex(hits[USER].unique())
    return float(per_user.sum() / n_users)


def ndcg_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10) -> float:
    hits, actual, n_users = _hits(truth, recs, k)
    if not n_users or hits.empty:
        return 0.0
    dcg = (1.0 / np.log1p(hits[RANK].to_numpy(float))).astype(float)
    dcg_per_user = pd.Series(dcg, index=hits[USER].to_numpy()).groupby(level=0).sum()
    ideal = np.cumsum(1.0 / np.log1p(np.arange(1, k + 1, dtype=float)))
    idcg = actual.reindex(dcg_per_user.index).clip(upper=k).map(lambda n: ideal[int(n) - 1])
    return float((dcg_per_user / idcg).sum() / n_users)


def map_at_k(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10) -> float:
    hits, actual, n_users = _hits(truth, recs, k)
    if not n_users or hits.empty:
        return 0.0
    hit_number = hits.groupby(USER).cumcount() + 1
    rr = (hit_number / hits[RANK]).groupby(hits[USER]).sum()
    return float((rr / actual.reindex(rr.index).clip(upper=k)).sum() / n_users)


def per_user_ndcg_recall(truth: pd.DataFrame, recs: pd.DataFrame, k: int = 10) -> pd.DataFrame:
    """NDCG@k and recall@k of every common user (0 without a hit): the means are `ndcg_at_k`, `recall_at_k`."""
    hits, actual, _ = _hits(truth, recs, k)
    users = actual.index
    ideal = np.cumsum(1.0 / np.log1p(np.arange(1, k + 1, dtype=float)))
    dcg = pd.Series(1.0 / np.log1p(hits[RANK].to_numpy(float)), index=hits[USER].to_numpy()).groupby(level=0).sum()
    found = hits.groupby(USER).size()
    idcg = actual.clip(upper=k).map(lambda n: ideal[int(n) - 1])
    return pd.DataFrame({"ndcg": dcg.reindex(users, fill_value=0.0) / idcg,
                         "recall": found.reindex(users, fill_value=0) / actual}, index=users)


def catalog_coverage(train: pd.DataFrame, recs: pd.DataFrame) -> float:
    _check(train, "train", (USER, ITEM))
    _check(recs, "recommendations", (USER, ITEM))
    n_train = train[ITEM].nunique()
    return float(recs[ITEM].nunique() / n_train) if n_train else 0.0


def novelty(train: pd.DataFrame, recs: pd.DataFrame) -> float:
    _check(train, "train", (USER, ITEM))
    _check(recs, "recommendations", (USER, ITEM))
    if recs.empty or train.empty:
        return 0.0
    item_novelty = -np.log2(train.groupby(ITEM).size() / len(train))
    counts = recs.groupby(ITEM).size()
    known = counts.index.intersection(item_novelty.index)
    return float((counts[known] * item_novelty[known]).sum() / len(recs))


def ranking_metrics(truth: pd.DataFrame, recs: pd.DataFrame, train: pd.DataFrame, k: int = 10) -> dict:
    """All of the above at one k, named like `ndcg@10`."""
    return {
        f"precision@{k}": precision_at_k(truth, recs, k),
        f"recall@{k}": recall_at_k(truth, recs, k),
        f"ndcg@{k}": ndcg_at_k(truth, recs, k),
        f"map@{k}": map_at_k(truth, recs, k),
        f"coverage@{k}": catalog_coverage(train, recs.loc[recs[RANK] <= k]),
        f"novelty@{k}": novelty(train, recs.loc[recs[RANK] <= k]),
        "users": len(set(truth[USER]) & set(recs[USER])),
    }


# ---------------------------------------------------------------- producing recommendations
def top_k(scores: np.ndarray, users, items, k: int, exclude=None) -> pd.DataFrame:
    """Top-k items per row of a dense score matrix as a `user, item, rank` frame.

    `exclude` (a scipy CSR matrix of the same shape, or None) removes already-seen items,
    as serving does for known visitors. Ties break by item position (stable).
    """
    scores = np.array(scores, dtype=np.float64, copy=True)
    if scores.shape != (len(users), len(items)):
        raise ValueError(f"scores have shape {scores.shape}, expected ({len(users)}, {len(items)})")
    if exclude is not None:
        coo = exclude.tocoo()
        scores[coo.row, coo.col] = -np.inf
    k = min(k, scores.shape[1])
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    picked = np.take_along_axis(scores, order, axis=1)
    rows = np.repeat(np.arange(len(users)), k)
    frame = pd.DataFrame({
        USER: np.asarray(users, dtype=object)[rows],
        ITEM: np.asarray(items, dtype=object)[order.ravel()],
        RANK: np.tile(np.arange(1, k + 1), len(users)),
    })
    return frame[np.isfinite(picked.ravel())].reset_index(drop=True)


def popularity_scores(train: pd.DataFrame, items) -> np.ndarray:
    """Distinct training users per item, in the order of `items` (the popularity baseline)."""
    counts = train.drop_duplicates([USER, ITEM]).groupby(ITEM).size()
    return counts.reindex(pd.Index(items)).fillna(0).to_numpy(dtype=np.float64)


# ---------------------------------------------------------------- audiences (prospects)
def audience_precision(scores: np.ndarray, visited: np.ndarray, n: int) -> float:
    """Share of the top-n users by score who visited the target (ties: first in order)."""
    scores = np.asarray(scores, dtype=np.float64)
    visited = np.asarray(visited, dtype=bool)
    if scores.shape != visited.shape:
        raise ValueError(f"scores {scores.shape} and visited {visited.shape} differ in shape")
    n = min(n, len(scores))
    if n < 1:
        raise ValueError("an audience needs at least one candidate")
    top = np.argsort(-scores, kind="stable")[:n]
    return float(visited[top].mean())


def audience_lift(model_scores: np.ndarray, activity: np.ndarray, visited: np.ndarray,
                  targets, audience_fraction: float = 0.1) -> dict:
    """Audience precision@N for each target POI (columns), beside random and popularity targeting.

    model_scores: [n_candidates, n_targets] the model's score of each candidate for each target.
    activity:     [n_candidates] a non-personalised propensity (the popularity-targeting
                  baseline: the most active users first, the same ranking for every target).
    visited:      [n_candidates, n_targets] visited the target in the test window.
    Random targeting's expected precision is the target's base rate among the candidates.
    Lifts are ratios of the mean precisions over targets that anyone visited.
    """
    model_scores = np.asarray(model_scores, dtype=np.float64)
    visited = np.asarray(visited, dtype=bool)
    n_candidates = model_scores.shape[0]
    if n_candidates == 0:
        raise ValueError("no candidates to build an audience from")
    n = max(1, int(round(audience_fraction * n_candidates)))
    model, popular, random = [], [], []
    for j in range(len(targets)):
        if not visited[:, j].any():
            continue
        model.append(audience_precision(model_scores[:, j], visited[:, j], n))
        popular.append(audience_precision(activity, visited[:, j], n))
        random.append(float(visited[:, j].mean()))
    if not model:
        return {"audience_size": n, "targets": 0, "audience_precision": 0.0, "random_precision": 0.0,
                "popularity_precision": 0.0, "lift_vs_random": float("nan"), "lift_vs_popularity": float("nan")}
    m, p, r = float(np.mean(model)), float(np.mean(popular)), float(np.mean(random))
    return {
        "audience_size": n,
        "targets": len(model),
        "audience_precision": m,
        "random_precision": r,
        "popularity_precision": p,
        "lift_vs_random": m / r if r > 0 else float("nan"),
        "lift_vs_popularity": m / p if p > 0 else float("inf") if m > 0 else float("nan"),
    }


def finite(metrics: dict) -> dict:
    """Only the finite numbers (MLflow refuses NaN/inf and JSON has no spelling for them)."""
    return {k: float(v) for k, v in metrics.items()
            if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v))}


# ---------------------------------------------------------------- a factor model on the temporal split
def evaluate_scores(blocks, matrices, user_scores: np.ndarray, k: int = 10, prefix: str = "") -> dict:
    """Known visitors and prospects on tourism/test_interactions, beside the popularity baseline.

    user_scores: [n_users, n_pois] in the row order of `matrices` and the POI order of
    `matrices.items['tourism']`. Two views of the test window:

    * `ndcg@k`, `known_ndcg@k`, `prospect_ndcg@k`, …: every POI is ranked — a visit in the
      test window counts whether or not the visitor had been there before (revisits of
      hotels, restaurants and favourite sights are real visits);
    * `new_ndcg@k`, …: discovery — each known visitor's training-window POIs are removed
      from their list (as serving does when asked to exclude visited places) and from
      their test-window truth.
    """
    tokens, pois = matrices.tokens, matrices.items["tourism"]
    history = matrices.blocks["tourism"]
    train = blocks["tourism/interactions"].rename(columns={"token": USER, "poi_id": ITEM})[[USER, ITEM]]
    truth = blocks["tourism/test_interactions"].rename(columns={"token": USER, "poi_id": ITEM})[[USER, ITEM]]
    row_of = matrices.row_of()
    in_test = np.zeros(len(tokens), dtype=bool)
    in_test[row_of.reindex(truth[USER].unique()).dropna().astype(int).to_numpy()] = True
    popularity = np.broadcast_to(popularity_scores(train, pois), user_scores.shape)
    new_truth = truth.merge(train.drop_duplicates(), how="left", indicator=True)
    new_truth = new_truth.loc[new_truth["_merge"] == "left_only", [USER, ITEM]]
    out: dict = {}
    for group, mask, exclude in (("", in_test, False), ("known_", in_test & ~matrices.is_prospect, False),
                                 ("prospect_", in_test & matrices.is_prospect, False), ("new_", in_test, True)):
        rows = np.flatnonzero(mask)
        if len(rows) == 0:
            continue
        for name, scores in (("", user_scores), ("popularity_", popularity)):
            recs = top_k(scores[rows], tokens[rows], pois, k, exclude=history[rows] if exclude else None)
            view = new_truth if exclude else truth
            metrics = ranking_metrics(view[view[USER].isin(tokens[rows])], recs, train, k)
            out.update({f"{prefix}{name}{group}{m}": v for m, v in metrics.items()})
    out.update({f"{prefix}{m}": v for m, v in prospect_audiences(blocks, matrices, user_scores).items()})
    return out


def prospect_audiences(blocks, matrices, user_scores: np.ndarray, audience_fraction: float = 0.1) -> dict:
    """Audience precision@N among prospects for each POI, lift over random and popularity targeting.

    Popularity targeting ranks prospects by their overall activity in the other parties'
    interaction blocks (most active first) — the non-personalised way to pick an audience.
    """
    prospects = np.flatnonzero(matrices.is_prospect)
    if len(prospects) == 0:
        return {}
    pois = matrices.items["tourism"]
    test = blocks["tourism/test_interactions"]
    row_of = matrices.row_of()
    col_of = pd.Series(np.arange(len(pois)), index=pois)
    visited = np.zeros((len(matrices.tokens), len(pois)), dtype=bool)
    known = test["poi_id"].isin(col_of.index) & test["token"].isin(row_of.index)
    visited[row_of[test.loc[known, "token"]].to_numpy(), col_of[test.loc[known, "poi_id"]].to_numpy()] = True
    parts = [np.asarray(matrices.blocks[p].sum(axis=1)).ravel() for p in matrices.blocks if p != "tourism"]
    activity = sum(parts) if parts else np.zeros(len(matrices.tokens))  # a remote coordinator holds no partner block
    out = audience_lift(user_scores[prospects], np.asarray(activity)[prospects], visited[prospects], pois,
                        audience_fraction)
    return {f"prospect_{k}": v for k, v in out.items()}
