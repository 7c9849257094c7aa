"""Prospect quality: does the federated propensity find the people with no history who come?

On synthetic data with `truth/`: among consenting subscribers with no tourism visit before
the split, the top share by each score is compared with the truth's `is_prospect` (visits
in the test window). Peers on the same people and the same split: each single-party
signal of `features/signal.py`, and a logistic regression on the three together fitted
on the earlier window (signals as of the cut, labels in [cut, split)) — never on the test
window. Every lift has a 95% bootstrap interval (people resampled, all scores together).
"""
from __future__ import annotations

import secrets
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
from wenlv.marketing import alignment, propensity, uplift


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


class Lifts:
    """Top-share precision of each score on everyone, and on `reps` bootstrap resamples of the people."""

    def __init__(self, scores: dict[str, np.ndarray], label: np.ndarray, share: float = TOP_SHARE,
                 reps: int = BOOTSTRAP, seed: int = 0):
        label = np.asarray(label, dtype=bool)
        self.point = _precisions(scores, label, np.arange(len(label)), share)
        rng = np.random.default_rng(seed)
        self.draws = pd.DataFrame([_precisions(scores, label, rng.integers(0, len(label), len(label)), share)
                                   for _ in range(reps)])

    def ratio(self, a: str, b: str = "random") -> tuple[float, list[float]]:
        """precision(a) / precision(b) and its 95% bootstrap interval."""
        point = self.point[a] / self.point[b] if self.point[b] > 0 else float("nan")
        with np.errstate(divide="ignore", invalid="ignore"):
            draws = (self.draws[a] / self.draws[b]).to_numpy()
        draws = draws[np.isfinite(draws)]
        return round(point, 3), [round(float(np.percentile(draws, q)), 3) for q in (2.5, 97.5)]


def _truth_by_token(data_dir, columns: list[str], key: bytes) -> pd.DataFrame:
    """The judge's view: truth/people indexed by the user token the carrier issued under `key`."""
    truth = io.read_pandas(data_dir, C.TRUTH_PEOPLE, ["phone", *columns])
    return truth.drop(columns="phone").set_index(alignment.carrier_tokens(truth.phone, key))


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
    key = secrets.token_bytes(32)  # this run's carrier token key: its tokens link to nothing else
    train_data = propensity.build_data(data_dir, cut, visits)
    test_data = propensity.build_data(data_dir, split, visits, with_label=False, key=key)
    model = propensity.train(train_data, seed=seed, epochs=epochs, progress=progress)
    truth = _truth_by_token(data_dir, ["is_prospect"], key).is_prospect
    label = truth.reindex(test_data.tokens).fillna(False).to_numpy(bool)
    peer = logistic_peer(train_data)
    scores = {"federated_propensity": model.score(test_data).astype(np.float64),
              "logistic_on_signals": peer.decision_function(test_data.signals.to_numpy())}
    scores.update({name: test_data.signals[name].to_numpy(np.float64) for name in test_data.signals.columns})
    lifts = Lifts(scores, label, share, reps, seed)
    singles = list(test_data.signals.columns)
    best = max(singles, key=lambda name: lifts.point[name])
    vs_random, vs_random_ci = lifts.ratio("federated_propensity")
    vs_best, vs_best_ci = lifts.ratio("federated_propensity", best)
    vs_lr, vs_lr_ci = lifts.ratio("federated_propensity", "logistic_on_signals")
    peers = [name for name in scores if name != "federated_propensity"]
    return {
        "split_date": str(split), "cut_date": str(cut), "top_share": share,
        "people_without_history": int(len(label)), "prospects": int(label.sum()),
        "train": {"rows": int(len(train_data.label)), "positives": int(train_data.label.sum()),
                  "losses": [round(v, 5) for v in model.losses]},
        "precision": {k: round(v, 4) for k, v in lifts.point.items()},
        "lift_vs_random": vs_random, "lift_vs_random_95ci": vs_random_ci,
        "best_baseline": best,
        "lift_vs_best_baseline": vs_best, "lift_vs_best_baseline_95ci": vs_best_ci,
        "lift_vs_combined_baseline": vs_lr, "lift_vs_combined_baseline_95ci": vs_lr_ci,
        "peers_lift_vs_random": {name: lifts.ratio(name)[0] for name in peers},
        "peers_lift_vs_random_95ci": {name: lifts.ratio(name)[1] for name in peers},
        "bootstrap_resamples": reps,
        "_model": model, "_test_data": test_data, "_label": label, "_carrier_token_key": key,
    }


def synthetic_uplift(data_dir, *, seed: int = 0, test_share: float = 0.5) -> dict:
    """Uplift on the synthetic truth: a randomised campaign simulated from `campaign_response`.

    Among people without history at the split, half are treated at random; a treated person who
    would not have come anyway comes with probability `campaign_response`. Our uplift model
    (`uplift.InteractionLogistic`, on the parties' features) is fitted on one half of the people
    and ranked on the other: its Qini beside the Qini of ranking by the true response (the
    ceiling), by the federated propensity (who would come anyway), and at random.
    """
    meta = io.read_meta(data_dir)
    split = date.fromisoformat(meta["split_date"])
    visits = pf.tourism_visits(data_dir)
    key = secrets.token_bytes(32)
    train_data = propensity.build_data(data_dir, propensity.cut_date(split), visits)
    data = propensity.build_data(data_dir, split, visits, with_label=False, key=key)
    truth = _truth_by_token(data_dir, ["is_prospect", "campaign_response"], key)
    natural = truth.is_prospect.reindex(data.tokens).fillna(False).to_numpy(bool)
    response = truth.campaign_response.reindex(data.tokens).fillna(0.0).to_numpy(float)
    rng = np.random.default_rng(seed)
    treated = rng.random(len(natural)) < 0.5
    came = natural | (treated & (rng.random(len(natural)) < response))
    x = np.hstack([data.frames["carrier"], data.frames["internet"]]).astype(np.float64)
    fit = rng.random(len(natural)) >= test_share
    test = ~fit
    model = uplift.InteractionLogistic().fit(x[fit], came[fit].astype(int), treated[fit].astype(int))
    predicted = model.predict(x[test])
    propensity_scores = propensity.train(train_data, seed=seed).score(data)[test]
    y, t = came[test].astype(int), treated[test].astype(int)
    return {
        "people": int(len(natural)), "test_people": int(test.sum()), "treated_share": round(float(treated.mean()), 3),
        "true_mean_response": round(float(response.mean()), 4),
        "qini": round(uplift.qini_coefficient(y, t, predicted), 4),
        "qini_true_response": round(uplift.qini_coefficient(y, t, response[test]), 4),
        "qini_propensity": round(uplift.qini_coefficient(y, t, propensity_scores), 4),
        "qini_random": round(uplift.qini_coefficient(y, t, rng.random(int(test.sum()))), 4),
        "spearman_with_true_response": round(float(pd.Series(predicted).corr(pd.Series(response[test]),
                                                                              method="spearman")), 3),
    }
