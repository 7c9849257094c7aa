"""Uplift: rank by the predicted effect of a campaign, and judge rankings by the Qini coefficient.

Qini curve (Radcliffe 2007, as scikit-uplift computes it): people sorted by predicted
uplift, best first; at each distinct score, Q(k) = Y_t(k) − Y_c(k) · N_t(k) / N_c(k)
(responders among the treated minus the control responders scaled to the treated count).
The Qini coefficient is the area between that curve and the straight line to its end,
divided by the same area for the perfect ranking (responders among the treated first,
control responders last): 1 = perfect, 0 = random.

Models: a T-learner with gradient-boosted trees (the peer: one classifier per arm) and
ours, an S-learner logistic regression on [x, t, t·x] — one model whose main effects are
shared by both arms, so the effect estimate is not the difference of two noisy fits.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from wenlv.errors import WenlvError


def qini_curve(y, treatment, uplift) -> tuple[np.ndarray, np.ndarray]:
    """(people, Qini value) at 0 and at each distinct predicted uplift, best first."""
    y, t, u = (np.asarray(a, dtype=np.float64) for a in (y, treatment, uplift))
    if not (len(y) == len(t) == len(u)) or len(y) == 0:
        raise ValueError("y, treatment and uplift need the same non-zero length")
    order = np.argsort(-u, kind="mergesort")
    y, t, u = y[order], t[order], u[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(u)), len(u) - 1]
    n_all = last_of_tie + 1.0
    n_t = np.cumsum(t)[last_of_tie]
    n_c = n_all - n_t
    y_t = np.cumsum(y * t)[last_of_tie]
    y_c = np.cumsum(y * (1 - t))[last_of_tie]
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(n_c > 0, y_t - y_c * n_t / n_c, 0.0)
    return np.r_[0.0, n_all], np.r_[0.0, q]


def _area_over_random(x: np.ndarray, q: np.ndarray) -> float:
    return float(np.trapezoid(q, x) - q[-1] * x[-1] / 2.0)


def qini_coefficient(y, treatment, uplift) -> float:
    """Area between the model's Qini curve and random, over the same for the perfect ranking."""
    y, t = np.asarray(y, dtype=np.float64), np.asarray(treatment, dtype=np.float64)
    model = _area_over_random(*qini_curve(y, t, uplift))
    perfect = _area_over_random(*qini_curve(y, t, y * t - y * (1 - t)))
    if perfect == 0:
        raise ValueError("the perfect Qini curve is flat: no responders, or one arm is empty")
    return model / perfect


def uplift_at_k(y, treatment, uplift, k: float = 0.3) -> float:
    """Response rate of the treated minus the control among the top k share by predicted uplift."""
    y, t, u = (np.asarray(a, dtype=np.float64) for a in (y, treatment, uplift))
    top = np.argsort(-u, kind="mergesort")[:max(1, int(round(k * len(u))))]
    yt, tt = y[top], t[top]
    if tt.sum() == 0 or (1 - tt).sum() == 0:
        return float("nan")
    return float(yt[tt == 1].mean() - yt[tt == 0].mean())


class TLearner:
    """One gradient-boosted classifier per arm; uplift = p(treated) − p(control)."""

    def __init__(self, seed: int = 0):
        self.treated = HistGradientBoostingClassifier(random_state=seed)
        self.control = HistGradientBoostingClassifier(random_state=seed)

    def fit(self, x, y, t) -> "TLearner":
        t = np.asarray(t, dtype=bool)
        self.treated.fit(x[t], y[t])
        self.control.fit(x[~t], y[~t])
        return self

    def predict(self, x) -> np.ndarray:
        return self.treated.predict_proba(x)[:, 1] - self.control.predict_proba(x)[:, 1]


class InteractionLogistic:
    """S-learner: logistic regression on [x, t, t·x] (x standardised); uplift = p(t=1) − p(t=0)."""

    def __init__(self, c: float = 0.05):
        self.model = LogisticRegression(C=c, max_iter=2000)

    @staticmethod
    def _design(x, t) -> np.ndarray:
        t = np.asarray(t, dtype=np.float64)[:, None]
        return np.hstack([x, t, t * x])

    def fit(self, x, y, t) -> "InteractionLogistic":
        self.mean, self.std = x.mean(axis=0), np.where(x.std(axis=0) > 0, x.std(axis=0), 1.0)
        self.model.fit(self._design((x - self.mean) / self.std, t), y)
        return self

    def predict(self, x) -> np.ndarray:
        z = (x - self.mean) / self.std
        ones, zeros = np.ones(len(x)), np.zeros(len(x))
        return self.model.predict_proba(self._design(z, ones))[:, 1] - self.model.predict_proba(self._design(z, zeros))[:, 1]


# ---------------------------------------------------------------- Hillstrom
HILLSTROM_TREATMENT, HILLSTROM_CONTROL = "Womens E-Mail", "No E-Mail"
PUBLISHED_TLEARNER_QINI = 0.087


def hillstrom_frame(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(features, visit, treated) for women's e-mail vs no e-mail; categories one-hot."""
    path = Path(path)
    if not path.exists():
        raise WenlvError(f"Hillstrom data not found at {path} (see ../shared/data/README.md)")
    df = pd.read_csv(path)
    missing = {"recency", "history", "mens", "womens", "newbie", "zip_code", "channel", "segment", "visit"} - set(df)
    if missing:
        raise WenlvError(f"{path}: missing columns {sorted(missing)}")
    df = df[df.segment.isin((HILLSTROM_TREATMENT, HILLSTROM_CONTROL))]
    x = pd.concat([df[["recency", "mens", "womens", "newbie"]].astype(float), np.log1p(df[["history"]]),
                   pd.get_dummies(df[["zip_code", "channel", "history_segment"]], dtype=float)], axis=1)
    return x.to_numpy(np.float64), df.visit.to_numpy(int), (df.segment == HILLSTROM_TREATMENT).to_numpy(int)


@dataclass
class UpliftReport:
    qini: float
    tlearner_qini: float
    uplift_at_30: float
    tlearner_uplift_at_30: float
    test_rows: int

    def as_dict(self) -> dict:
        return {"qini": round(self.qini, 4), "tlearner_qini": round(self.tlearner_qini, 4),
                "uplift@30%": round(self.uplift_at_30, 4), "tlearner_uplift@30%": round(self.tlearner_uplift_at_30, 4),
                "published_tlearner_qini": PUBLISHED_TLEARNER_QINI, "test_rows": self.test_rows,
                "split": "70/30 stratified by arm × visit", "model": "S-learner logistic on [x, t, t*x]",
                "peer": "T-learner, HistGradientBoostingClassifier per arm"}


def hillstrom(path: str | Path, seed: int = 0) -> UpliftReport:
    """Both models fitted on the same 70%, judged on the same 30%."""
    x, y, t = hillstrom_frame(path)
    xtr, xte, ytr, yte, ttr, tte = train_test_split(x, y, t, test_size=0.3, random_state=seed, stratify=y * 2 + t)
    ours = InteractionLogistic().fit(xtr, ytr, ttr).predict(xte)
    peer = TLearner(seed).fit(xtr, ytr, ttr).predict(xte)
    return UpliftReport(qini_coefficient(yte, tte, ours), qini_coefficient(yte, tte, peer),
                        uplift_at_k(yte, tte, ours), uplift_at_k(yte, tte, peer), len(yte))
