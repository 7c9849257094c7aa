"""Fitting the joint implicit-ALS factors over the chosen parties' item blocks.

`central` fits `implicit` ALS on the concatenated user × [POIs | areas | topics] matrix
(the reference, and what a single data owner would do). `federated` runs the vertical
federated ALS of `training.federated_als` (secure aggregation of per-party statistics)
from the same initial factors and reports its largest difference from the central fit:
the core privacy-correctness check, which the quality gate requires.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from training.blocks import Matrices
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

MODES = ("federated", "central")
# Both fits compute in float64: in float32, implicit's CG and the federated CG drift apart by
# ~1e-2 after ten iterations from rounding alone, which would hide a real protocol error.
COMPUTE_DTYPE = np.float64


@dataclass
class FactorModel:
    user_factors: np.ndarray                 # [n_users, f]
    item_factors: dict[str, np.ndarray]      # party -> [n_items(party), f]; only POIs leave training
    parties: tuple[str, ...]
    params: dict = field(default_factory=dict)
    checks: dict = field(default_factory=dict)  # e.g. federated_vs_central_max_abs_diff

    @property
    def poi_factors(self) -> np.ndarray:
        return self.item_factors["tourism"]


def initial_factors(n_users: int, n_items: int, factors: int, seed: int):
    """The same start for the central and the federated fit (implicit's own init scale)."""
    rng = np.random.default_rng(seed)
    return (rng.random((n_users, factors), dtype=COMPUTE_DTYPE) * 0.01,
            rng.random((n_items, factors), dtype=COMPUTE_DTYPE) * 0.01)


def fit_central(matrices: Matrices, parties, factors: int, iterations: int, regularization: float,
                seed: int, init=None) -> FactorModel:
    """`implicit` ALS (conjugate-gradient solver, as the federated fit) on the stacked blocks."""
    from training.central_als import CentralALS

    parties = tuple(parties)
    stacked = matrices.stacked(parties)
    user0, item0 = init or initial_factors(stacked.shape[0], stacked.shape[1], factors, seed)
    model = CentralALS(factors=factors, regularization=regularization, iterations=iterations, random_state=seed,
                       dtype=COMPUTE_DTYPE)
    model.fit({p: matrices.blocks[p] for p in parties}, init=(user0, _split(item0, matrices, parties)))
    return FactorModel(user_factors=np.asarray(model.user_factors, np.float32),
                       item_factors={p: np.asarray(model.item_factors[p], np.float32) for p in parties},
                       parties=parties,
                       params={"mode": "central", "factors": factors, "iterations": iterations,
                               "regularization": regularization, "seed": seed, "solver": "cg",
                               "cg_steps": model.cg_steps})


def _split(item_factors: np.ndarray, matrices: Matrices, parties) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for p in parties:
        n = matrices.blocks[p].shape[1]
        out[p] = item_factors[start:start + n]
        start += n
    return out


def fit(matrices: Matrices, parties=("tourism", "carrier", "internet"), mode: str = "federated",
        factors: int = 16, iterations: int = 10, regularization: float = 0.05, seed: int = 0,
        fixed_point_bits: int | None = None) -> FactorModel:
    parties = tuple(parties)
    if mode not in MODES:
        raise WenlvError(f"mode must be one of {MODES}, got {mode!r}")
    if "tourism" not in parties:
        raise WenlvError("the tourism party (the coordinator, owner of the POI block) must take part")
    unknown = set(parties) - set(matrices.blocks)
    if unknown:
        raise WenlvError(f"unknown parties {sorted(unknown)}; known: {sorted(matrices.blocks)}")
    n_items = sum(matrices.blocks[p].shape[1] for p in parties)
    init = initial_factors(len(matrices.tokens), n_items, factors, seed)
    central = fit_central(matrices, parties, factors, iterations, regularization, seed, init)
    if mode == "central":
        return central
    federated = _fit_federated(matrices, parties, factors, iterations, regularization, seed, init,
                               fixed_point_bits)
    diffs = [float(np.max(np.abs(federated.user_factors - central.user_factors)))]
    diffs += [float(np.max(np.abs(federated.item_factors[p] - central.item_factors[p]))) for p in parties]
    federated.checks["federated_vs_central_max_abs_diff"] = max(diffs)
    log.info("federated ALS vs central: max |difference| %.3g", max(diffs))
    return federated


def _fit_federated(matrices, parties, factors, iterations, regularization, seed, init, fixed_point_bits):
    try:
        from training import federated_als
    except ModuleNotFoundError as exc:
        if exc.name != "training.federated_als":
            raise
        raise WenlvError("federated ALS is not available in this build; use --mode central") from exc
    return federated_als.fit_factor_model(matrices, parties, factors=factors, iterations=iterations,
                                          regularization=regularization, seed=seed, init=init,
                                          fixed_point_bits=fixed_point_bits, dtype=COMPUTE_DTYPE)
