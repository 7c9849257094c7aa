"""Hyperparameter search through the product's own fit (Optuna TPE), one MLflow run per trial.

A search is one *parent* MLflow run; every trial is a nested run under it (tag
`mlflow.parentRunId`) holding the trial's parameters and its validation metrics. The
objective is always measured on a validation window cut from the *training* period —
the test window is never read by a trial (tests/test_tuning.py plants an item that only
the test window knows and checks the choice does not move).

* `search` — the generic loop (sampler, time budget, nested runs, best trial);
* `als_space` / `tower_space` — what is searched: factors, regularisation, confidence
  scaling (alpha and the weighting: none, log, BM25, TF-IDF), iterations; the towers'
  epochs, learning rate and width;
* `validation_split` — the validation window of a feature-block folder: the most recent
  (by `recency_days`) `fraction` of the tourism training pairs;
* `tune_blocks` — `wenlv train --tune N`: each trial is a full fit in the run's mode
  (federated by default, so through masked sums) on the rest of the training window.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
import optuna
import scipy.sparse as sp

from wenlv.errors import WenlvError
from wenlv.training import factors, recommenders, tracking, user_metrics
from wenlv.training.blocks import Matrices

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
ROLE_TAG = "wenlv.role"          # tuning-parent | tuning-trial | model
BEST_TRIAL_TAG = "wenlv.best_trial_run_id"


# ---------------------------------------------------------------- search spaces
def als_space(trial: optuna.Trial) -> dict:
    return {"factors": trial.suggest_categorical("factors", [4, 8, 16, 32, 64, 128]),
            "regularization": trial.suggest_float("regularization", 1e-3, 30.0, log=True),
            "alpha": trial.suggest_float("alpha", 0.1, 50.0, log=True),
            "weighting": trial.suggest_categorical("weighting", list(recommenders.WEIGHTINGS)),
            "iterations": trial.suggest_int("iterations", 3, 30)}


def tower_space(trial: optuna.Trial) -> dict:
    return {"tower_epochs": trial.suggest_int("tower_epochs", 5, 60),
            "tower_lr": trial.suggest_float("tower_lr", 1e-3, 5e-2, log=True),
            "tower_hidden": trial.suggest_categorical("tower_hidden", [16, 32, 64])}


# ---------------------------------------------------------------- nested MLflow runs
@dataclass
class TrialLog:
    """A parent run and its nested trial runs; `uri=None` with `enabled=False` logs nothing."""

    uri: str | None = None
    name: str = "tuning"
    enabled: bool = True
    tags: dict = field(default_factory=dict)
    parent_id: str | None = None
    trial_ids: list[str] = field(default_factory=list)

    def __post_init__(self):
        if self.enabled:
            self._c = tracking.client(self.uri)
            self.uri = self._c.tracking_uri
            run = self._c.create_run(tracking.experiment_id(self._c), run_name=self.name,
                                     tags={ROLE_TAG: "tuning-parent", **{k: str(v) for k, v in self.tags.items()}})
            self.parent_id = run.info.run_id

    def trial(self, number: int, params: dict, metrics: dict) -> str | None:
        if not self.enabled:
            return None
        c = self._c
        run = c.create_run(tracking.experiment_id(c), run_name=f"{self.name}-trial-{number}",
                           tags={PARENT_TAG: self.parent_id, ROLE_TAG: "tuning-trial", "wenlv.trial": str(number)})
        _log(c, run.info.run_id, params, metrics)
        c.set_terminated(run.info.run_id, "FINISHED")
        self.trial_ids.append(run.info.run_id)
        return run.info.run_id

    def finish(self, params: dict, metrics: dict, tags: dict) -> None:
        if not self.enabled:
            return
        _log(self._c, self.parent_id, {f"best_{k}": v for k, v in params.items()}, metrics)
        for k, v in tags.items():
            self._c.set_tag(self.parent_id, k, str(v))
        self._c.set_terminated(self.parent_id, "FINISHED")

    def fail(self) -> None:
        if self.enabled:
            self._c.set_terminated(self.parent_id, "FAILED")


def _log(c, run_id: str, params: dict, metrics: dict) -> None:
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    c.log_batch(run_id, params=[Param(tracking.mlflow_name(k), str(v)) for k, v in params.items()],
                metrics=[Metric(tracking.mlflow_name(k), float(v), now, 0)
                         for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and np.isfinite(v)])


@dataclass
class SearchResult:
    best_params: dict
    best_metrics: dict
    best_trial: int
    best_run_id: str | None
    parent_run_id: str | None
    trials: list[dict]


def search(objective, space, n_trials: int, *, timeout_s: float | None = None, seed: int = 0,
           trial_log: TrialLog | None = None, fixed: dict | None = None, progress=None) -> SearchResult:
    """Maximise `objective(params)["objective"]` over `space(trial)` (+ `fixed` params).

    Stops after `n_trials` or when `timeout_s` has passed (the trial under way finishes).
    Each trial's params and metrics go to a nested run of `trial_log`.
    """
    if n_trials < 1:
        raise WenlvError(f"the search needs at least one trial, got {n_trials}")
    trial_log = trial_log or TrialLog(enabled=False)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
    trials: list[dict] = []

    def run(trial: optuna.Trial) -> float:
        params = {**(fixed or {}), **space(trial)}
        started = time.perf_counter()
        metrics = objective(params)
        metrics["trial_seconds"] = time.perf_counter() - started
        run_id = trial_log.trial(trial.number, params, metrics)
        trials.append({"number": trial.number, "params": params, "metrics": metrics, "run_id": run_id})
        if progress:
            progress(trial.number, params, metrics)
        return float(metrics["objective"])

    try:
        study.optimize(run, n_trials=n_trials, timeout=timeout_s)
    except BaseException:
        trial_log.fail()
        raise
    best = max(trials, key=lambda t: (t["metrics"]["objective"], -t["number"]))
    trial_log.finish(best["params"], {"best_objective": best["metrics"]["objective"], "trials": len(trials)},
                     {BEST_TRIAL_TAG: best["run_id"] or "", "wenlv.best_trial": best["number"]})
    return SearchResult(best["params"], best["metrics"], best["number"], best["run_id"], trial_log.parent_id, trials)


# ---------------------------------------------------------------- feature blocks: validation window
def validation_split(blocks, matrices: Matrices, fraction: float = 0.2) -> tuple[Matrices, sp.csr_matrix]:
    """(matrices without the validation pairs, validation truth [n_users, n_pois]).

    The validation window is the most recent `fraction` of the tourism training pairs by
    `recency_days` (days from the last visit to the end of the training window): those
    pairs leave the tourism block and become what the fit must find. Only the training
    blocks are read; `tourism/test_interactions` is not.
    """
    if not 0 < fraction < 1:
        raise WenlvError(f"validation fraction must be between 0 and 1, got {fraction}")
    inter = blocks["tourism/interactions"]
    cutoff = float(np.quantile(inter["recency_days"].to_numpy(float), fraction))
    recent = inter[inter["recency_days"] <= cutoff]
    row_of = matrices.row_of()
    pois = matrices.items["tourism"]
    col_of = dict(zip(pois, range(len(pois))))
    rows = row_of.reindex(recent["token"]).to_numpy()
    cols = np.array([col_of.get(p, -1) for p in recent["poi_id"]], dtype=np.int64)
    ok = ~np.isnan(rows) & (cols >= 0)
    rows, cols = rows[ok].astype(np.int64), cols[ok]
    n_users = len(matrices.tokens)
    truth = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_users, len(pois)))
    truth.sum_duplicates()
    truth.data[:] = 1.0
    tourism = matrices.blocks["tourism"].tocsr(copy=True)
    tourism = tourism - tourism.multiply(truth > 0)
    tourism.eliminate_zeros()
    return replace(matrices, blocks={**matrices.blocks, "tourism": sp.csr_matrix(tourism)}), truth


def weighted(matrices: Matrices, weighting: str, alpha: float) -> Matrices:
    """Each party's block scaled locally by the same rule (no party learns another's values)."""
    if weighting == "none" and alpha == 1.0:
        return matrices
    return replace(matrices, blocks={p: recommenders.weight(m, weighting, alpha) for p, m in matrices.blocks.items()})


def validation_metrics(score_fn, fit_tourism: sp.csr_matrix, truth: sp.csr_matrix, k: int) -> dict:
    """NDCG/recall@k of a model and of popularity (fit window) on the validation truth."""
    model = user_metrics.per_user(score_fn, truth, k)
    counts = np.bincount(fit_tourism.tocoo().col, minlength=truth.shape[1]).astype(float)
    pop = user_metrics.per_user(lambda rows: np.broadcast_to(counts, (len(rows), len(counts))), truth, k)
    return {f"validation_ndcg@{k}": float(model["ndcg"].mean()) if len(model["ndcg"]) else 0.0,
            f"validation_recall@{k}": float(model["recall"].mean()) if len(model["recall"]) else 0.0,
            f"validation_popularity_ndcg@{k}": float(pop["ndcg"].mean()) if len(pop["ndcg"]) else 0.0,
            f"validation_popularity_recall@{k}": float(pop["recall"].mean()) if len(pop["recall"]) else 0.0,
            "validation_users": int(len(model["rows"]))}


def evaluate_on_validation(blocks, matrices: Matrices, config, split=None) -> dict:
    """One fit of `config` (its mode, parties, ALS and tower settings) on the training window
    minus the validation window, scored on the validation window.

    The `objective` is the ALS validation NDCG@k (known visitors), averaged with the cold-start
    towers' validation NDCG@k (the same visitors scored from side features only) when the
    run trains towers: a version serves both paths.
    """
    fit_matrices, truth = split or validation_split(blocks, matrices, config.validation_fraction)
    model = factors.fit(weighted(fit_matrices, config.weighting, config.alpha), config.parties, mode=config.mode,
                        factors=config.factors, iterations=config.iterations,
                        regularization=config.regularization, seed=config.seed,
                        fixed_point_bits=config.fixed_point_bits, progress=False)
    U, P = model.user_factors.astype(np.float64), model.poi_factors.astype(np.float64)
    k = config.k
    out = validation_metrics(lambda rows: U[rows] @ P.T, fit_matrices.blocks["tourism"], truth, k)
    out["objective"] = out[f"validation_ndcg@{k}"]
    if config.towers:
        tower_ndcg = _tower_validation(blocks, fit_matrices, truth, model, config)
        if tower_ndcg is not None:
            out[f"validation_tower_ndcg@{k}"] = tower_ndcg
            out["objective"] = 0.5 * (out[f"validation_ndcg@{k}"] + tower_ndcg)
    return out


def _tower_validation(blocks, fit_matrices: Matrices, truth, model, config) -> float | None:
    from wenlv.training import towers  # lazy: torch loads only when towers are searched

    parties = tuple(p for p in towers.TOWER_PARTIES if p in config.parties)
    if not parties:
        return None
    frames = towers.side_frames(blocks, fit_matrices.tokens, parties)
    known = ~fit_matrices.is_prospect
    targets = (fit_matrices.blocks["tourism"][known] > 0).astype(np.float32)
    result = towers.train_towers({p: f[known].reset_index(drop=True) for p, f in frames.items()}, targets,
                                 model.poi_factors, epochs=config.tower_epochs, lr=config.tower_lr,
                                 hidden=config.tower_hidden, seed=config.seed,
                                 frac_bits=config.fixed_point_bits)
    emb = result.embed(frames).astype(np.float64)
    P = model.poi_factors.astype(np.float64)
    values = user_metrics.per_user(lambda rows: emb[rows] @ P.T, truth, config.k)
    return float(values["ndcg"].mean()) if len(values["ndcg"]) else 0.0


def tune_blocks(blocks, matrices: Matrices, config, n_trials: int, *, timeout_s: float | None = None,
                tracking_uri: str | None = None, log_runs: bool = True) -> SearchResult:
    """`wenlv train --tune N`: the search over ALS (and tower) settings through the run's own fit."""
    split = validation_split(blocks, matrices, config.validation_fraction)

    def space(trial):
        return {**als_space(trial), **(tower_space(trial) if config.towers else {})}

    def objective(params):
        return evaluate_on_validation(blocks, matrices, replace(config, **params), split)

    def progress(number, params, metrics):
        log.info("trial %d: objective %.4f  %s", number, metrics["objective"], params)

    trial_log = TrialLog(tracking_uri, name=f"tune-{config.mode}", enabled=log_runs,
                         tags={"wenlv.mode": config.mode, "wenlv.parties": ",".join(config.parties),
                               "wenlv.validation_fraction": config.validation_fraction})
    return search(objective, space, n_trials, timeout_s=timeout_s, seed=config.seed, trial_log=trial_log,
                  progress=progress)
