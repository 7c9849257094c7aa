"""Centralised implicit ALS on the concatenated matrix: the peer of federated ALS.

Used to check that federated ALS computes the same model (same data, same initial
factors, same hyper-parameters) and for ``--mode central`` (all blocks in one place,
no privacy: a baseline, never the production path).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares

from wenlv.training.federated_als import init_factors


def concatenate_blocks(user_items: dict[str, sp.csr_matrix]) -> tuple[sp.csr_matrix, dict[str, slice]]:
    """user × [block 1 | block 2 | …] in the dict's order, and each block's column slice."""
    slices, start = {}, 0
    for party, m in user_items.items():
        slices[party] = slice(start, start + m.shape[1])
        start += m.shape[1]
    return sp.hstack(list(user_items.values()), format="csr", dtype=np.float32), slices


class CentralALS:
    """implicit's AlternatingLeastSquares on the concatenated blocks, split back per party.

    Same constructor arguments as :class:`training.federated_als.FederatedALS` (those of
    ``implicit``); ``fit`` takes the same ``{party: csr}`` and optional ``init``.
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0, dtype=np.float32,
                 iterations: int = 15, cg_steps: int = 3, random_state=None, num_threads: int = 0,
                 use_cg: bool = True, show_progress: bool = False):
        self.factors, self.regularization, self.alpha, self.dtype = factors, regularization, alpha, np.dtype(dtype)
        self.iterations, self.cg_steps, self.random_state = iterations, cg_steps, random_state
        self.num_threads, self.use_cg, self.show_progress = num_threads, use_cg, show_progress
        self.user_factors: np.ndarray | None = None
        self.item_factors: dict[str, np.ndarray] = {}
        self.model = None

    def fit(self, user_items: dict[str, sp.csr_matrix], init: tuple | None = None, callback=None):
        matrix, slices = concatenate_blocks(user_items)
        if init is None:
            init = init_factors(matrix.shape[0], {p: m.shape[1] for p, m in user_items.items()},
                                self.factors, self.random_state, self.dtype)
        X0, Y0 = init
        model = AlternatingLeastSquares(factors=self.factors, regularization=self.regularization, alpha=self.alpha,
                                        dtype=self.dtype, use_cg=self.use_cg, iterations=self.iterations,
                                        num_threads=self.num_threads, random_state=self.random_state)
        model.cg_steps = self.cg_steps
        model.user_factors = np.array(X0, dtype=self.dtype, copy=True)
        model.item_factors = np.concatenate([np.asarray(Y0[p], dtype=self.dtype) for p in user_items])
        self.model = model  # before fitting: a callback reads the factors of the iteration just done from it
        model.fit(matrix, show_progress=self.show_progress, callback=callback)
        self.user_factors = model.user_factors
        self.item_factors = {p: model.item_factors[s] for p, s in slices.items()}
        return self
