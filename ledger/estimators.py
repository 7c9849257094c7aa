"""The treatment-vs-holdout estimator of incremental revenue and its 95% interval.

Incremental = (mean per treated person − mean per holdout person) × treated count: what the
treated would have earned without the exposure is estimated from the random holdout, and
people with no events count as zero. Two intervals:

* bootstrap over persons (the default): each arm resampled with replacement, `reps` times,
  seeded so a report is repeatable; the 2.5th and 97.5th percentiles of the resampled
  estimate. Revenue per person is zero-inflated and skewed, where a percentile interval
  behaves better than a normal one on small holdouts.
* delta method: estimate ± 1.96 · n_T · sqrt(s²_T / n_T + s²_H / n_H) (sample variances).

With fewer than two people in an arm there is no interval (None); with no holdout there is
no estimate at all.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
BOOTSTRAP_CELLS = 20_000_000  # resampled persons per chunk of bootstrap draws (memory bound, not a limit)


@dataclass(frozen=True)
class Effect:
    treated: int
    holdout: int
    treated_mean: float | None
    holdout_mean: float | None
    incremental: float | None
    ci95: tuple[float, float] | None
    method: str


def incremental(treated, holdout, method: str = "bootstrap", reps: int = 1000, seed: int = 0) -> Effect:
    """Incremental total over the treated, from per-person outcomes of each arm."""
    t = np.asarray(treated, dtype=np.float64)
    h = np.asarray(holdout, dtype=np.float64)
    if method not in ("bootstrap", "delta"):
        raise ValueError(f"interval method must be 'bootstrap' or 'delta', got {method!r}")
    mt = float(t.mean()) if len(t) else None
    mh = float(h.mean()) if len(h) else None
    if mt is None or mh is None:
        return Effect(len(t), len(h), mt, mh, None, None, method)
    estimate = (mt - mh) * len(t)
    ci = None
    if len(t) >= 2 and len(h) >= 2:
        ci = _bootstrap(t, h, reps, seed) if method == "bootstrap" else _delta(t, h, estimate)
    return Effect(len(t), len(h), mt, mh, estimate, ci, method)


def _delta(t: np.ndarray, h: np.ndarray, estimate: float) -> tuple[float, float]:
    se = len(t) * np.sqrt(t.var(ddof=1) / len(t) + h.var(ddof=1) / len(h))
    return float(estimate - Z95 * se), float(estimate + Z95 * se)


def _bootstrap(t: np.ndarray, h: np.ndarray, reps: int, seed: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    draws = np.empty(reps)
    chunk = max(1, BOOTSTRAP_CELLS // (len(t) + len(h)))
    for start in range(0, reps, chunk):
        b = min(chunk, reps - start)
        mt = t[rng.integers(0, len(t), (b, len(t)))].mean(axis=1)
        mh = h[rng.integers(0, len(h), (b, len(h)))].mean(axis=1)
        draws[start:start + b] = (mt - mh) * len(t)
    lo, hi = np.percentile(draws, [2.5, 97.5])
    return float(lo), float(hi)
