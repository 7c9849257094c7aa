"""ALS against popularity on real tourist visits (Flickr/YFCC100M; tourism party only).

The tourism tables come from `wenlv import flickr` (features.flickr). The split is
temporal: visits before the `1 − test_fraction` quantile of arrival times train, the rest
test. Users are evaluated if they visit in both windows (ALS cannot rank for a stranger;
the cold-start towers need carrier/internet data, which Flickr has none of). Both views
of training.evaluation are reported: every POI ranked, and new POIs only.

Source: Lim, Chan, Leckie, Karunasekera, IJCAI 2015 (visits and POI lists).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix

from wenlv.training import evaluation as ev
from wenlv.training import recommenders, tuning
from wenlv.errors import WenlvError


GRID = {"factors": (2, 4, 8, 16), "alpha": (1.0, 10.0), "regularization": (0.1, 10.0)}


def _split(visits: pd.DataFrame, test_fraction: float):
    arrived = pd.to_datetime(visits["arrived_at"])
    split = arrived.quantile(1 - test_fraction)
    pairs = visits[["visitor_id", "poi_id"]].rename(columns={"visitor_id": "user", "poi_id": "item"})
    return pairs[arrived < split], pairs[arrived >= split], split


def count_matrix(pairs: pd.DataFrame, users: np.ndarray, items: np.ndarray) -> csr_matrix:
    """users × items visit counts of `pairs` (user, item); pairs outside `users`/`items` are left out."""
    row = pd.Series(np.arange(len(users)), index=users)
    col = pd.Series(np.arange(len(items)), index=items)
    pairs = pairs[pairs["user"].isin(row.index) & pairs["item"].isin(col.index)]
    counts = pairs.groupby(["user", "item"]).size().rename("n").reset_index()
    return csr_matrix((counts["n"].to_numpy(np.float32), (row[counts["user"]].to_numpy(), col[counts["item"]].to_numpy())),
                      shape=(len(users), len(items)), dtype=np.float32)


def _fit_and_score(train: pd.DataFrame, test: pd.DataFrame, items: np.ndarray, factors: int, alpha: float,
                   regularization: float, iterations: int, k: int, seed: int, weighting: str | None = None) -> dict:
    from implicit.cpu.als import AlternatingLeastSquares

    users = np.sort(train["user"].unique())
    test = test[test["user"].isin(users)].drop_duplicates()
    if test.empty:
        raise WenlvError("no visitor appears in both the training and the test window")
    row = pd.Series(np.arange(len(users)), index=users)
    matrix = count_matrix(train, users, items)
    if weighting is None:  # the fixed grid's confidence, 1 + alpha·log(1 + visits)
        matrix.data = (1.0 + alpha * np.log1p(matrix.data)).astype(np.float32)
    else:
        matrix = recommenders.weight(matrix, weighting, alpha)
    model = AlternatingLeastSquares(factors=factors, regularization=regularization, iterations=iterations,
                                    random_state=seed, num_threads=1)
    model.fit(matrix, show_progress=False)
    rows = row[test["user"].unique()].to_numpy()
    scores = np.asarray(model.user_factors)[rows] @ np.asarray(model.item_factors).T
    popularity = np.broadcast_to(ev.popularity_scores(train, items), scores.shape)
    out = {"test_users": int(len(rows))}
    seen = train.drop_duplicates()
    for view, exclude in (("", None), ("new_", matrix[rows])):
        truth = test
        if exclude is not None:
            truth = test.merge(seen, how="left", indicator=True).query("_merge == 'left_only'")[["user", "item"]]
        for name, s in (("als_", scores), ("popularity_", popularity)):
            recs = ev.top_k(s, users[rows], items, k, exclude=exclude)
            metrics = ev.ranking_metrics(truth, recs, train, k)
            out.update({f"{name}{view}{m}": v for m, v in metrics.items() if m != "users"})
    return out


def tune_central(train_visits: pd.DataFrame, trials: int, *, validation_fraction: float = 0.2, k: int = 10,
                 seed: int = 0, trial_log: tuning.TrialLog | None = None,
                 timeout_s: float | None = None) -> tuning.SearchResult:
    """Optuna over the central ALS (training.recommenders.als) on the training window only.

    train_visits: visitor_id, poi_id, arrived_at of the *training* window — the function is
    never given the test window. Its last `validation_fraction` of time is the validation window.
    """
    fit_part, validation, _ = _split(train_visits, validation_fraction)
    items = np.sort(train_visits["poi_id"].unique())
    users = np.sort(fit_part["user"].unique())
    matrix = count_matrix(fit_part, users, items)
    truth = count_matrix(validation.drop_duplicates(), users, items)
    if truth.nnz == 0:
        raise WenlvError("no visitor appears in both the fitting part and the validation window")

    def objective(params):
        model = recommenders.als(matrix, len(items), seed=seed, **params)
        out = tuning.validation_metrics(lambda rows: model.scores(rows, matrix), matrix, truth, k)
        out["objective"] = out[f"validation_ndcg@{k}"]
        return out

    return tuning.search(objective, tuning.als_space, trials, timeout_s=timeout_s, seed=seed, trial_log=trial_log)


def temporal_split_eval(visits: pd.DataFrame, test_fraction: float = 0.2, iterations: int = 15, k: int = 10,
                        seed: int = 0, grid: dict | None = None, trials: int = 0,
                        trial_log: tuning.TrialLog | None = None) -> dict:
    """visits: visitor_id, poi_id, arrived_at. ALS vs popularity on the last `test_fraction` of time.

    Hyper-parameters are chosen on a validation split *inside* the training window (its
    last `test_fraction`), by NDCG@k; the test window is touched once, by the chosen model.
    With `trials` > 0 an Optuna search (training.tuning; each trial a nested MLflow run of
    `trial_log`) replaces the fixed grid.
    """
    missing = {"visitor_id", "poi_id", "arrived_at"} - set(visits.columns)
    if missing:
        raise WenlvError(f"visits lack column(s) {sorted(missing)}")
    if not 0 < test_fraction < 1:
        raise WenlvError("test_fraction must be between 0 and 1")
    items = np.sort(visits["poi_id"].unique())
    train, test, split = _split(visits, test_fraction)
    inner = visits.loc[pd.to_datetime(visits["arrived_at"]) < split]
    if trials:
        search = tune_central(inner, trials, validation_fraction=test_fraction, k=k, seed=seed, trial_log=trial_log)
        best = dict(search.best_params)
        out = {"split_at": str(split), "train_visits": len(train), "test_visits": len(test), "pois": len(items),
               "chosen": best, "trials": len(search.trials), "parent_run_id": search.parent_run_id,
               f"validation_ndcg@{k}": search.best_metrics[f"validation_ndcg@{k}"]}
        out.update(_fit_and_score(train, test, items, k=k, seed=seed, **best))
        return out
    fit_part, validation, _ = _split(inner, test_fraction)
    grid = grid or GRID
    best, best_score = None, -1.0
    for f in grid["factors"]:
        for a in grid["alpha"]:
            for reg in grid["regularization"]:
                score = _fit_and_score(fit_part, validation, items, f, a, reg, iterations, k, seed)[f"als_ndcg@{k}"]
                if score > best_score:
                    best, best_score = {"factors": f, "alpha": a, "regularization": reg}, score
    out = {"split_at": str(split), "train_visits": len(train), "test_visits": len(test), "pois": len(items),
           "chosen": best, f"validation_ndcg@{k}": best_score}
    out.update(_fit_and_score(train, test, items, iterations=iterations, k=k, seed=seed, **best))
    return out


def evaluate_city(city: str, source: str | Path, **kwargs) -> dict:
    """Import one city's Flickr visits (features.flickr) and compare ALS with popularity."""
    from wenlv.features.flickr import build

    tables, summary = build(city, source)
    return {"city": city, "source": "Lim et al., IJCAI 2015 (YFCC100M)", **temporal_split_eval(tables["visits"], **kwargs)}
