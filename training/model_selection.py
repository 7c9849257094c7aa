"""Tuned peers on one dataset, and a champion chosen on the validation window only.

A `Dataset` holds two fits of the same data: *validation* (the training window minus its
most recent part → that part) and *test* (the whole training window → the test window).
Every peer is tuned on validation; the champion is chosen among the candidates — a tuned
peer, a blend of the best one with another, a three-way blend of the three best — by
`pick`: the simplest unless a larger blend wins on validation pooled and in every window.
Only then is each chosen model refitted on the whole training window and scored once on
the test window, with per-user 95% intervals and paired differences against each peer.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from wenlv.training import recommenders, tuning, user_metrics

log = logging.getLogger(__name__)

BLEND_WEIGHTS = (0.3, 0.5, 0.7)  # the best peer's weight in a two-way blend
BLEND_TOP = 3                     # three-way blends: the three best peers on validation
SIMPLEX_STEP = 0.1                # their weights: the simplex grid, every weight ≥ 0.1
KNN_NEIGHBOURS = (5, 10, 20, 50, 100)
EASE_LAMBDAS = (1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0)
OWN_VISIT_WEIGHTS = (0.3, 1.0, 3.0, 10.0)  # personal popularity: the user's own visits against z(popularity)
RECENCY_DAYS = (365.0, 1000.0, 3000.0)     # … and own visits decayed by age (where windows carry visit times)


@dataclass
class Window:
    matrix: sp.csr_matrix           # users × [targets | side items] fitted on
    truth: sp.csr_matrix            # users × targets, what the model must find
    exclude: sp.csr_matrix | None   # users × targets removed from rankings (None: every target ranked)
    visits: tuple | None = None     # (user rows, target columns, age in days at the history's end) of matrix's visits

    def recent(self, days: float) -> sp.csr_matrix:
        """Users × targets: Σ exp(−age / days) over the visits — a visit `days` old counts 1/e."""
        rows, cols, ages = self.visits
        m = sp.csr_matrix((np.exp(-np.asarray(ages, dtype=np.float64) / days), (rows, cols)),
                          shape=(self.matrix.shape[0], self.truth.shape[1]))
        m.sum_duplicates()
        return m


@dataclass
class Dataset:
    name: str
    n_targets: int
    validation: Window
    test: Window
    extra_validation: tuple[Window, ...] = ()  # earlier windows: validation metrics pool their users

    @property
    def windows(self) -> tuple[Window, ...]:
        return (self.validation, *self.extra_validation)


def _score(model: recommenders.Fitted, w: Window, k: int) -> dict:
    return user_metrics.per_user(lambda rows: model.scores(rows, w.matrix), w.truth, k, exclude=w.exclude)


def _metrics(values: list[dict], k: int) -> dict:
    return {f"ndcg@{k}": float(np.concatenate([v["ndcg"] for v in values]).mean()),
            f"recall@{k}": float(np.concatenate([v["recall"] for v in values]).mean())}


def _order(metrics: dict, k: int) -> tuple[float, float]:
    """How candidates compare on validation: NDCG@k, recall@k breaking ties."""
    return metrics[f"ndcg@{k}"], metrics[f"recall@{k}"]


def _val_fitted(models: list, data: Dataset, k: int) -> dict:
    """Validation means over the users of every window (models[i] fitted on window i)."""
    return _metrics([_score(m, w, k) for m, w in zip(models, data.windows)], k)


def _val(build, data: Dataset, k: int) -> dict:
    """Fit `build(window)` on each validation window's history and score it on that window."""
    return _val_fitted([build(w) for w in data.windows], data, k)


def _tune_grid(kind: str, grid: list[dict], data: Dataset, k: int) -> tuple[dict, dict]:
    best = None
    for params in grid:
        m = _val(lambda w: _fit(kind, params, w, data.n_targets, 0), data, k)
        if best is None or _order(m, k) > _order(best[1], k):
            best = (params, m)
    return best


def _tune_optuna(kind: str, space, data: Dataset, k: int, trials: int, seed: int,
                 trial_log: tuning.TrialLog | None) -> tuple[dict, dict]:
    def objective(params):
        m = _val(lambda w: recommenders.build(kind, w.matrix, data.n_targets, seed=seed, **params), data, k)
        return {"objective": m[f"ndcg@{k}"], **{f"validation_{a}": b for a, b in m.items()}}

    result = tuning.search(objective, space, trials, seed=seed, trial_log=trial_log)
    return result.best_params, {f"ndcg@{k}": result.best_metrics["validation_ndcg@" + str(k)],
                                f"recall@{k}": result.best_metrics["validation_recall@" + str(k)]}


def bpr_space(trial) -> dict:
    return {"factors": trial.suggest_categorical("factors", [16, 32, 64, 128]),
            "learning_rate": trial.suggest_float("learning_rate", 1e-3, 0.1, log=True),
            "regularization": trial.suggest_float("regularization", 1e-4, 0.1, log=True),
            "iterations": trial.suggest_int("iterations", 20, 200)}


def tune_peers(data: Dataset, k: int = 10, als_trials: int = 20, bpr_trials: int = 8, seed: int = 0,
               tracking_uri: str | None = None, log_runs: bool = False) -> dict:
    """{peer: (kind, params, validation metrics)} — every peer tuned on the validation window."""
    def trial_log(kind):
        return tuning.TrialLog(tracking_uri, name=f"tune-{kind}-{data.name}", enabled=log_runs)

    peers = {"popularity": ("popularity", {}, _val(lambda w: recommenders.popularity(w.matrix, data.n_targets),
                                                   data, k))}
    if all(w.exclude is None for w in data.windows):  # revisits are ranked, so own visits can score
        timed = all(w.visits is not None for w in (*data.windows, data.test))
        grid = [{"weight": a, "recency_days": d} for d in (None, *(RECENCY_DAYS if timed else ()))
                for a in OWN_VISIT_WEIGHTS]
        params, m = _tune_grid("personal_popularity", grid, data, k)
        peers["personal_popularity"] = ("personal_popularity", params, m)
    for kind, key in (("cosine", "item_knn"), ("bm25", "item_knn_bm25")):
        params, m = _tune_grid("item_knn", [{"similarity": kind, "neighbours": n} for n in KNN_NEIGHBOURS], data, k)
        peers[key] = ("item_knn", params, m)
    params, m = _tune_grid("ease", [{"lam": lam} for lam in EASE_LAMBDAS], data, k)
    peers["ease"] = ("ease", params, m)
    params, m = _tune_optuna("bpr", bpr_space, data, k, bpr_trials, seed, trial_log("bpr"))
    peers["bpr"] = ("bpr", params, m)
    params, m = _tune_optuna("als", tuning.als_space, data, k, als_trials, seed, trial_log("als"))
    peers["als"] = ("als", params, m)
    for name, (_, params, m) in peers.items():
        log.info("%s %s: validation %s %s", data.name, name, {a: round(b, 4) for a, b in m.items()}, params)
    return peers


def _fit(kind: str, params: dict, window: Window, n_targets: int, seed: int):
    """Fit a peer on a window; `recency_days` (personal popularity) turns into the window's decayed visits."""
    extra = {"seed": seed} if kind in ("als", "bpr") else {}
    params = dict(params)
    days = params.pop("recency_days", None)
    if days is not None:
        extra["own"] = window.recent(days)
    return recommenders.build(kind, window.matrix, n_targets, **extra, **params)


def simplex(n: int, step: float = SIMPLEX_STEP) -> list[tuple[float, ...]]:
    """Weights of n models on a grid of the simplex, every weight > 0 (a zero is a smaller blend)."""
    units = round(1 / step)
    return [tuple(round(c * step, 10) for c in (*parts, units - sum(parts)))
            for parts in itertools.product(range(1, units), repeat=n - 1) if sum(parts) < units]


def _candidate(components: list, models: list, data: Dataset, k: int) -> dict:
    """Validation metrics of a blend: pooled over every window's users, and per window."""
    values = [_score(m, w, k) for m, w in zip(models, data.windows)]
    return {"components": components, "validation": _metrics(values, k),
            "windows": [_metrics([v], k) for v in values]}


def pick(candidates: dict, k: int = 10) -> str:
    """The simplest candidate unless a larger blend wins on validation pooled *and* on each window.

    Per number of components (1, 2, 3, …) the best candidate by pooled NDCG@k (recall@k
    breaks ties) challenges the current choice; it replaces it only if its NDCG@k is higher
    pooled and on every validation window. Many blends are tried, so the best pooled score
    is optimistic: asking the gain to repeat in each window keeps a blend that won by the
    noise of one window out.
    """
    key = (lambda n: _order(candidates[n]["validation"], k))
    chosen = None
    for size in sorted({len(c["components"]) for c in candidates.values()}):
        best = max((n for n, c in candidates.items() if len(c["components"]) == size), key=key)
        if chosen is None:
            chosen = best
            continue
        new, old = candidates[best], candidates[chosen]
        if key(best) > key(chosen) and all(a[f"ndcg@{k}"] > b[f"ndcg@{k}"]
                                           for a, b in zip(new["windows"], old["windows"])):
            chosen = best
    return chosen


def choose_champion(data: Dataset, peers: dict, k: int = 10, seed: int = 0) -> dict:
    """The champion on validation: each peer, the best peer blended with each other one, and
    three-way blends of the three best peers (weights on a simplex grid); `pick` chooses."""
    ranked = sorted(peers, key=lambda n: _order(peers[n][2], k), reverse=True)
    best_single = ranked[0]
    fitted = [{n: _fit(kind, params, win, data.n_targets, seed) for n, (kind, params, _) in peers.items()}
              for win in data.windows]
    candidates = {n: _candidate([(n, 1.0)], [f[n] for f in fitted], data, k) for n in peers}
    for other in ranked[1:]:
        for w in BLEND_WEIGHTS:
            comps = [(best_single, w), (other, 1 - w)]
            candidates[f"{best_single}+{other}@{w}"] = _candidate(
                comps, [recommenders.blend(f[best_single], f[other], w) for f in fitted], data, k)
    top = ranked[:BLEND_TOP]
    if len(top) == BLEND_TOP:
        for weights in simplex(BLEND_TOP):
            comps = list(zip(top, weights))
            candidates["+".join(top) + "@" + "/".join(f"{w:g}" for w in weights)] = _candidate(
                comps, [recommenders.blend_many([f[n] for n in top], weights) for f in fitted], data, k)
    name = pick(candidates, k)
    ranking = sorted(candidates, key=lambda n: _order(candidates[n]["validation"], k), reverse=True)
    return {"model": name, "components": candidates[name]["components"], "validation": candidates[name]["validation"],
            "validation_windows": candidates[name]["windows"], "best_single_on_validation": best_single,
            "candidates": len(candidates),
            "validation_ranking": [{"candidate": n, **candidates[n]["validation"]} for n in ranking[:8]]}


def evaluate(data: Dataset, k: int = 10, als_trials: int = 20, bpr_trials: int = 8, seed: int = 0,
             tracking_uri: str | None = None, log_runs: bool = False) -> dict:
    """Tune the peers and pick the champion on validation, then score everything once on test."""
    started = time.perf_counter()
    peers = tune_peers(data, k, als_trials, bpr_trials, seed, tracking_uri, log_runs)
    choice = choose_champion(data, peers, k, seed)
    test = data.test
    refit = {n: _fit(kind, params, test, data.n_targets, seed) for n, (kind, params, _) in peers.items()}
    values = {n: _score(m, test, k) for n, m in refit.items()}
    comps = choice["components"]
    champion = refit[comps[0][0]] if len(comps) == 1 else recommenders.blend_many([refit[n] for n, _ in comps],
                                                                                  [w for _, w in comps])
    champ_values = values[comps[0][0]] if len(comps) == 1 else _score(champion, test, k)
    out_peers = {n: {**user_metrics.summary(values[n], k), "params": peers[n][1], "validation": peers[n][2]}
                 for n in peers}
    vs = {n: user_metrics.paired_difference(champ_values, values[n], k) for n in peers}
    champ = {**user_metrics.summary(champ_values, k), "model": choice["model"], "vs_peers": vs,
             **{a: b for a, b in choice.items() if a != "model"}}
    others = [n for n in peers if n not in dict(comps) or len(comps) > 1]
    champ["beats_every_peer"] = all(champ[f"ndcg@{k}"] > out_peers[n][f"ndcg@{k}"] and
                                    champ[f"recall@{k}"] > out_peers[n][f"recall@{k}"] for n in others)
    champ["not_beaten_by"] = sorted(n for n in others
                                    if out_peers[n][f"ndcg@{k}"] >= champ[f"ndcg@{k}"]
                                    or out_peers[n][f"recall@{k}"] >= champ[f"recall@{k}"])
    return {"champion": champ, "peers": out_peers, "seconds": round(time.perf_counter() - started, 1)}
