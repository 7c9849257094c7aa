"""A party's local item step: implicit's conjugate-gradient update of every item factor.

The same arithmetic as ``implicit.cpu._als.least_squares_cg`` (start from the previous
factor, residual r = Xᵀ C_i p_i − (XᵀC_iX + λI) y_i, ``cg_steps`` CG steps, stop when
r·r < 1e-20; items nobody used get a zero factor), with two differences that only change
speed:

* XᵀX + λI is passed in, so the coordinator computes it once per iteration for every
  party from the user factors it broadcasts anyway (each ``implicit`` call recomputes it);
* the kernel is compiled for the factor count (vectors stay in registers) and takes an
  item's users two at a time (two dot products in flight), where ``implicit`` calls BLAS
  level-1 routines on 64-element vectors for every interaction.

An item's user rows are read four times (residual and every CG product) while they are
in cache, as in ``implicit``. Threads take contiguous item ranges of equal interaction
counts (popular items hold most of the work).
"""
from __future__ import annotations

import numba
import numpy as np
import scipy.sparse as sp

from wenlv.training.sparse_rows import RS_EPS, row_pass
from wenlv.errors import WenlvError
from wenlv.parallel import run_segments

_KERNELS: dict = {}


def with_ridge(gram: np.ndarray, regularization: float) -> np.ndarray:
    """XᵀX + λI in the gram's dtype, as ``implicit`` forms it (λ passes through a C float there)."""
    return gram + np.float32(regularization).astype(gram.dtype) * np.eye(gram.shape[0], dtype=gram.dtype)


def nnz_balanced_ranges(indptr: np.ndarray, threads: int) -> list[tuple[int, int]]:
    """Contiguous row ranges [lo, hi) with about the same number of stored entries each."""
    rows = len(indptr) - 1
    threads = max(1, min(int(threads), rows))
    if threads == 1:
        return [(0, rows)]
    targets = np.arange(1, threads) * (indptr[-1] / threads)
    cuts = np.searchsorted(indptr, targets, side="left").clip(0, rows)
    edges = np.unique(np.concatenate([[0], cuts, [rows]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


def item_cg_step(Ciu: sp.csr_matrix, data: np.ndarray, X: np.ndarray, Y: np.ndarray, gram_reg: np.ndarray,
                 cg_steps: int, threads: int = 1) -> None:
    """Update Y (items × factors) in place against user factors X; ``Ciu`` is items × users,
    ``data`` its confidences in Y's dtype, ``gram_reg`` = :func:`with_ridge` (XᵀX, λ)."""
    dtype = Y.dtype
    if X.dtype != dtype or data.dtype != dtype or gram_reg.dtype != dtype:
        raise WenlvError(f"item step: factors {X.dtype}/{Y.dtype}, confidences {data.dtype} and gram "
                         f"{gram_reg.dtype} must share one dtype")
    if X.shape[1] != Y.shape[1] or gram_reg.shape != (Y.shape[1], Y.shape[1]):
        raise WenlvError(f"item step: user factors {X.shape}, item factors {Y.shape}, gram {gram_reg.shape} disagree")
    if Ciu.shape != (Y.shape[0], X.shape[0]):
        raise WenlvError(f"item step: item-user matrix {Ciu.shape} does not match {Y.shape[0]} items × {X.shape[0]} users")
    key = (Y.shape[1], dtype.type)
    kernel = _KERNELS.get(key)
    if kernel is None:
        kernel = _KERNELS[key] = _make_item_kernel(*key)
    indptr, indices = Ciu.indptr, Ciu.indices
    run_segments(lambda lo, hi: kernel(indptr, indices, data, X, Y, gram_reg, int(cg_steps), lo, hi),
                 nnz_balanced_ranges(indptr, threads))


def _make_item_kernel(F: int, real):
    zero, eps, sparse_pass = real(0.0), real(RS_EPS), row_pass(F, real)

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def kernel(indptr, indices, data, X, Y, G, cg_steps, lo, hi):
        y, r, p, Ap = np.empty(F, real), np.empty(F, real), np.empty(F, real), np.empty(F, real)
        for i in range(lo, hi):
            if indptr[i] == indptr[i + 1]:
                for j in range(F):
                    Y[i, j] = zero
                continue
            for j in range(F):
                y[j] = Y[i, j]
            for j in range(F):  # r = −(XᵀX + λI) y
                s = zero
                for m in range(F):
                    s += G[j, m] * y[m]
                r[j] = -s
            sparse_pass(indptr, indices, data, X, i, y, r, True)
            rsold = zero
            for j in range(F):
                p[j] = r[j]
                rsold += r[j] * r[j]
            if rsold < eps:
                continue
            for _ in range(cg_steps):
                for j in range(F):  # Ap = (XᵀX + λI) p + Σ (|c|−1)(x_u·p) x_u
                    s = zero
                    for m in range(F):
                        s += G[j, m] * p[m]
                    Ap[j] = s
                sparse_pass(indptr, indices, data, X, i, p, Ap, False)
                pAp = zero
                for j in range(F):
                    pAp += p[j] * Ap[j]
                alpha = rsold / pAp
                rsnew = zero
                for j in range(F):
                    y[j] += alpha * p[j]
                    r[j] -= alpha * Ap[j]
                    rsnew += r[j] * r[j]
                if rsnew < eps:
                    break
                beta = rsnew / rsold
                for j in range(F):
                    p[j] = r[j] + beta * p[j]
                rsold = rsnew
            for j in range(F):
                Y[i, j] = y[j]

    return kernel
