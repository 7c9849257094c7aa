"""Prospect quality: does the federated propensity find the people with no history who come?

On synthetic data with `truth/`: among consenting subscribers with no tourism visit before
the split, the top share by each score is compared with the truth's `is_prospect` (visits
in the test window). Peers on the same people and the same split: each single-party
signal of `features/signal.py`, and a logistic regression on the three together fitted
on the earlier window (signals as of the cut, labels in [cut, split)) — never on the test
window. Every lift has a 95% bootstrap interval (people resampled, all scores together).
"""
from __future__ import annotations

import logging
from datetime import date

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from wenlv.errors import WenlvError
from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.marketing import party_features as pf
from wenlv.marketing import propensity

log = logging.getLogger(__name__)

TOP_SHARE = 0.05
BOOTSTRAP = 300


def top_mask(scores: np.ndarray, share: float) -> np.ndarray:
    """The top `share` of rows by score (ties broken by a fixed random order, not by row order)."""
    n = max(1, int(round(share * len(scores))))
    jitter = np.random.default_rng(0).random(len(scores)) * 1e-9 * (np.abs(scores).max() + 1.0)
    order = np.argsort(-(scores + jitter), kind="stable")
    mask = np.zeros(len(scores), dtype=bool)
    mask[order[:n]] = True
    return mask


def _precisions(scores: dict[str, np.ndarray], label: np.ndarray, idx: np.ndarray, share: float) -> dict[str, float]:
    y = label[idx]
    return {name: float(y[top_mask(s[idx], share)].mean()) for name, s in scores.items()} | {"random": float(y.mean())}


def lifts_with_intervals(scores: dict[str, np.ndarray], label: np.ndarray, share: float = TOP_SHARE,
                         reps: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Precision of each score's top share, lifts over random and between scores, 95% bootstrap intervals."""
    label = np.asarray(label, dtype=bool)
    everyone = np.arange(len(label))
    point = _precisions(scores, label, everyone, share)
    rng = np.random.default_rng(seed)
    draws = [_precisions(scores, label, rng.integers(0, len(label), len(label)), share) for _ in range(reps)]
    frame = pd.DataFrame(draws)

    def interval(values) -> list[float]:
        values = np.asarray(values, dtype=float)
        values = values[np.isfinite(values)]
        return [round(float(np.percentile(values, 2.5)), 3), round(float(np.percentile(values, 97.5)), 3)]

    def ratio(a, b):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(frame[b] > 0, frame[a] / frame[b], np.nan)

    out = {"precision": {k: round(v, 4) for k, v in point.items()},
           "lift_vs_random": {k: round(point[k] / point["random"], 3) for k in scores},
           "lift_vs_random_95ci": {k: interval(ratio(k, "random")) for k in scores}}
    out["_ratio"] = lambda a, b: (round(point[a] / point[b], 3) if point[b] > 0 else float("nan"), interval(ratio(a, b)))
    return out


def logistic_peer(cut_data: propensity.PropensityData):
    """The centralised peer: a logistic regression on the three single-party signals, fitted at the cut."""
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    model.fit(cut_data.signals.to_numpy(), cut_data.label)
    return model


def evaluate(data_dir, *, seed: int = 0, share: float = TOP_SHARE, reps: int = BOOTSTRAP, epochs: int = 12,
             progress: bool = False) -> dict:
    """Train at the cut, score at the split, judge with truth/people.is_prospect; every peer in the same run."""
    meta = io.read_meta(data_dir)
    if meta is None or not io.table_path(data_dir, C.TRUTH_PEOPLE).exists():
        raise WenlvError(f"{data_dir} has no meta.json or truth/: prospect quality needs generated data")
    split = date.fromisoformat(meta["split_date"])
    cut = propensity.cut_date(split)
    visits = pf.tourism_visits(data_dir)
    train_data = propensity.build_data(data_dir, cut, visits)
    test_data = propensity.build_data(data_dir, split, visits, with_label=False)
    model = propensity.train(train_data, seed=seed, epochs=epochs, progress=progress)
    truth = io.read_pandas(data_dir, C.TRUTH_PEOPLE, ["phone", "is_prospect"]).set_index("phone").is_prospect
    label = test_data.phones_label = truth.reindex(test_data.phones).fillna(False).to_numpy(bool)
    peer = logistic_peer(train_data)
    scores = {"federated_propensity": model.score(test_data).astype(np.float64),
              "logistic_on_signals": peer.decision_function(test_data.signals.to_numpy())}
    scores.update({name: test_data.signals[name].to_numpy(np.float64) for name in test_data.signals.columns})
    result = lifts_with_intervals(scores, label, share, reps, seed)
    ratio = result.pop("_ratio")
    singles = list(test_data.signals.columns)
    best = max(singles, key=lambda s: result["precision"][s])
    vs_best, vs_best_ci = ratio("federated_propensity", best)
    vs_lr, vs_lr_ci = ratio("federated_propensity", "logistic_on_signals")
    return {
        "split_date": str(split), "cut_date": str(cut), "top_share": share,
        "people_without_history": int(len(label)), "prospects": int(label.sum()),
        "train": {"rows": int(len(train_data.label)), "positives": int(train_data.label.sum()),
                  "losses": [round(v, 5) for v in model.losses]},
        "precision": result["precision"],
        "lift_vs_random": result["lift_vs_random"]["federated_propensity"],
        "lift_vs_random_95ci": result["lift_vs_random_95ci"]["federated_propensity"],
        "best_baseline": best,
        "lift_vs_best_baseline": vs_best, "lift_vs_best_baseline_95ci": vs_best_ci,
        "lift_vs_combined_baseline": vs_lr, "lift_vs_combined_baseline_95ci": vs_lr_ci,
        "peers_lift_vs_random": {k: v for k, v in result["lift_vs_random"].items() if k != "federated_propensity"},
        "peers_lift_vs_random_95ci": {k: v for k, v in result["lift_vs_random_95ci"].items()
                                      if k != "federated_propensity"},
        "_model": model, "_test_data": test_data, "_label": label,
    }
