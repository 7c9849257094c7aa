"""Fitting the joint implicit-ALS factors over the chosen parties' item blocks.

`central` fits `implicit` ALS (conjugate-gradient solver) on the concatenated
user × [POIs | areas | topics] matrix — the reference, and what a single data owner
would do. `federated` runs the vertical federated ALS of `training.federated_als` (secure
aggregation of per-party statistics) and checks it against the central solver.

The check is made *per iteration*: every federated iteration starts from the federated
state, and `implicit` makes one iteration from that very state; the largest difference
over all iterations is `federated_vs_central_max_abs_diff`. Comparing only the two end
points would not work: implicit's 3-step CG ALS is chaotic on real data — a 1e-9 relative
nudge of the initial factors grows to ~0.1 after ten iterations with implicit alone — so
fixed-point rounding (2^-32) would look like a protocol error. The end-to-end difference
is still reported (`…_end_to_end_…`), for information.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from wenlv.training.blocks import Matrices
from wenlv.training.central_als import CentralALS
from wenlv.training.federated_als import DEFAULT_FRAC_BITS, FederatedALS
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

MODES = ("federated", "central")
# Both fits compute in float64 (the published factors are float32): float32 rounding alone
# makes implicit's CG and the federated CG drift far apart.
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


def _split(item_factors: np.ndarray, matrices: Matrices, parties) -> dict[str, np.ndarray]:
    out, start = {}, 0
    for p in parties:
        n = matrices.blocks[p].shape[1]
        out[p] = item_factors[start:start + n]
        start += n
    return out


def _central_step(blocks, factors, regularization, iterations, seed, state, on_iteration=None):
    model = CentralALS(factors=factors, regularization=regularization, iterations=iterations, random_state=seed,
                       dtype=COMPUTE_DTYPE)
    callback = None
    if on_iteration is not None:
        names = list(blocks)  # the concatenation's order
        start = sum(blocks[p].shape[1] for p in names[:names.index("tourism")])
        poi_cols = slice(start, start + blocks["tourism"].shape[1])
        callback = lambda it, _s, _loss: on_iteration(it, model.model.user_factors, model.model.item_factors[poi_cols])
    model.fit(blocks, init=state, callback=callback)
    return np.asarray(model.user_factors), {p: np.asarray(v) for p, v in model.item_factors.items()}, model


def _federated_step(blocks, factors, regularization, iterations, seed, state, fixed_point_bits):
    model = FederatedALS(factors=factors, regularization=regularization, iterations=iterations, random_state=seed,
                         dtype=COMPUTE_DTYPE, show_progress=False,
                         fixed_point_bits=DEFAULT_FRAC_BITS if fixed_point_bits is None else fixed_point_bits)
    model.fit(blocks, init=state)
    return np.asarray(model.user_factors), {p: np.asarray(v) for p, v in model.item_factors.items()}, model


def _max_diff(a_users, a_items, b_users, b_items) -> float:
    return max([float(np.max(np.abs(a_users - b_users)))] +
               [float(np.max(np.abs(a_items[p] - b_items[p]))) for p in a_items])


def fit(matrices: Matrices, parties=("tourism", "carrier", "internet"), mode: str = "federated",
        factors: int = 16, iterations: int = 10, regularization: float = 1.0, seed: int = 0,
        fixed_point_bits: int | None = None, progress: bool = False, on_iteration=None) -> FactorModel:
    """The joint factors; `on_iteration(i, user_factors, poi_factors)` sees the state after each iteration
    (of the fit that is returned: the federated one in federated mode)."""
    parties = tuple(parties)
    if mode not in MODES:
        raise WenlvError(f"mode must be one of {MODES}, got {mode!r}")
    if "tourism" not in parties:
        raise WenlvError("the tourism party (the coordinator, owner of the POI block) must take part")
    unknown = set(parties) - set(matrices.blocks)
    if unknown:
        raise WenlvError(f"unknown parties {sorted(unknown)}; known: {sorted(matrices.blocks)}")
    blocks = {p: matrices.blocks[p] for p in parties}
    user0, item0 = initial_factors(len(matrices.tokens), sum(b.shape[1] for b in blocks.values()), factors, seed)
    state = (user0, _split(item0, matrices, parties))
    params = {"mode": mode, "factors": factors, "iterations": iterations, "regularization": regularization,
              "seed": seed, "solver": "implicit-cg", "cg_steps": 3, "compute_dtype": "float64"}
    central_users, central_items, _ = _central_step(blocks, factors, regularization, iterations, seed, state,
                                                    on_iteration if mode == "central" else None)
    if mode == "central":
        return _model(central_users, central_items, parties, params, {})

    per_iteration, rounds_aborted, audit_entries = [], 0, 0
    for iteration in tqdm(range(iterations), desc=f"federated ALS ({'+'.join(parties)})", disable=not progress):
        fed_users, fed_items, fed = _federated_step(blocks, factors, regularization, 1, seed, state, fixed_point_bits)
        ref_users, ref_items, _ = _central_step(blocks, factors, regularization, 1, seed, state)
        per_iteration.append(_max_diff(fed_users, fed_items, ref_users, ref_items))
        rounds_aborted += fed.rounds_aborted_
        audit_entries += len(fed.audit_log)
        state = (fed_users, fed_items)
        if on_iteration is not None:
            on_iteration(iteration, fed_users, fed_items["tourism"])
    params.update({"fixed_point_bits": fed.fixed_point_bits, "rounds_aborted": rounds_aborted,
                   "audit_entries": audit_entries})
    checks = {"federated_vs_central_max_abs_diff": max(per_iteration),
              "federated_vs_central_end_to_end_max_abs_diff": _max_diff(state[0], state[1], central_users,
                                                                        central_items)}
    log.info("federated ALS vs implicit, per iteration: max |difference| %.3g (end to end %.3g)",
             checks["federated_vs_central_max_abs_diff"], checks["federated_vs_central_end_to_end_max_abs_diff"])
    return _model(state[0], state[1], parties, params, checks)


def _model(users, items, parties, params, checks) -> FactorModel:
    return FactorModel(user_factors=np.asarray(users, np.float32),
                       item_factors={p: np.asarray(items[p], np.float32) for p in parties},
                       parties=tuple(parties), params=params, checks=checks)
