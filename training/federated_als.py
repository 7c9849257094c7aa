"""Vertical federated implicit ALS: user factors from masked sums, item factors stay home.

The model is implicit-feedback ALS (Hu, Koren & Volinsky 2008) on the user × [POIs |
carrier areas | internet topics] matrix, solved exactly as ``implicit`` 0.7.3 solves it
with ``use_cg=True`` (Takács et al. 2011): per iteration, first every user factor takes
``cg_steps`` conjugate-gradient steps from its previous value on

    (Yᵀ C_u Y + λI) x_u = Yᵀ C_u p_u,   C_u = I + diag(c_ui − 1) on the user's items,

then every item factor does the same against the new user factors. The matrix value is
the confidence c_ui itself (``implicit`` semantics: c = alpha · value, unobserved cells
have confidence 1 and preference 0; the feature blocks already hold c = 1 + α·f(·) in
their ``confidence`` column, so keep ``alpha=1``). Users with no interaction in any block
get a zero factor, as in ``implicit``.

Who computes what (DESIGN §3):

* The user system splits over the parties' item blocks: ``Yᵀ C_u Y = YᵀY + Σ_p Y_pᵀ (C_{u,p} − I) Y_p``.
  Once per round each party masks its gram matrix Y_pᵀY_p (factors × factors) and the
  coordinator learns only the sum YᵀY. Each CG step then needs, per party, the sparse
  part of one matrix–vector product per user (users × factors numbers, work ∝ the
  party's interactions); each party masks it (privacy.secure_agg), the coordinator sees
  only the sum and adds YᵀY p_u itself — one dense product for all parties instead of
  one per party. Traffic per iteration: (cg_steps + 1) · users · factors ring elements
  per party, never users × factors².
* Item factors of a block are solved by the party that owns it, against the user
  factors (the model's shared output, broadcast after each user step, with their gram
  matrix XᵀX, which the coordinator computes once for all parties), by implicit's CG
  update (training.item_cg). They never leave the party; nor do its confidences.

What is revealed, beyond the final model: the coordinator learns per stage only the
sum over parties, and per round the gram matrix YᵀY of all item factors (factors² numbers
summed over every item of every party; no item, no user, no party share in it). The parties receive the user factors after every iteration and the
CG search directions of every step (needed to compute their products); from those a
party can learn the *aggregate* contribution of the other parties (with three parties:
the sum of the other two, not either one alone). Per user, the coordinator also learns
whether the user has any interaction in any block (the masked sum of randomly weighted
indicators is zero or not). A dropped party aborts the round: no sum over fewer than all
parties is ever formed, the round's user factors are not released, and the user step
restarts from the same factors in a new round with fresh keys — so its stage sums repeat
exactly those of the aborted round's completed stages, and the model is unchanged.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import uuid
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from wenlv.privacy.audit import AuditLog
from wenlv.privacy.secure_agg import (DEFAULT_FRAC_BITS, RING_BITS, Aggregator, DropoutError, Identity, MaskingParty,
                                PartyUnavailable, SecureAggError)
from wenlv.training.item_cg import item_cg_step, with_ridge
from wenlv.training.party_api import Party, party_state_file
from wenlv.training.sparse_rows import RS_EPS, row_pass
from wenlv.errors import WenlvError
from wenlv.memory import plain_pages_empty
from wenlv.parallel import run_segments, segments

log = logging.getLogger(__name__)
_FEW_PARTIES_WARNED: set[int] = set()  # party counts already warned about in this process

_USER_GRAM_BLOCK_ROWS = 65536  # users per partial XᵀX (fixed, so the sum does not depend on threads)


def resolve_threads(num_threads: int) -> int:
    """``implicit``'s convention: 0 means every core."""
    return int(num_threads) if int(num_threads) > 0 else (os.cpu_count() or 1)


def init_factors(n_users: int, item_counts: dict[str, int], factors: int, random_state=None,
                 dtype=np.float32) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Initial factors drawn exactly as ``implicit`` draws them for the concatenated matrix.

    ``implicit`` draws ``rng.random((users, f)) * 0.01`` then ``rng.random((items, f)) * 0.01``
    with ``rng = np.random.default_rng(random_state)``; the item rows are split by block in
    the order of ``item_counts``. Passing these to both models makes them comparable.
    """
    rng = np.random.default_rng(random_state)
    dtype = np.dtype(dtype)
    users = rng.random((n_users, factors), dtype=dtype) * 0.01
    items = rng.random((sum(item_counts.values()), factors), dtype=dtype) * 0.01
    out, start = {}, 0
    for party, n in item_counts.items():
        out[party] = np.ascontiguousarray(items[start:start + n])
        start += n
    return users, out


# --------------------------------------------------------------------- per-party block math
_SPARSE_KERNELS: dict = {}


def _sparse_terms(indptr, indices, data, Y, V, out, residual) -> None:
    """out_u = Σ_{i ∈ u} coef_ui · y_i for every user row of V, one pass over the block
    (implicit's inner loop, training.sparse_rows); every row of `out` is written, so it needs
    no zeroing. Computed in the dtype of Y and data (float32 for a float32 model, as
    ``implicit`` computes, or float64).
    """
    if Y.dtype != data.dtype:
        raise WenlvError(f"sparse terms: item factors are {Y.dtype} but confidences are {data.dtype}")
    key = (V.shape[1], Y.dtype.type)
    kernel = _SPARSE_KERNELS.get(key)
    if kernel is None:
        kernel = _SPARSE_KERNELS[key] = _make_sparse_kernel(*key)
    kernel(indptr, indices, data, Y, V, out, residual)


def _make_sparse_kernel(F: int, real):
    zero, row_sum = real(0.0), row_pass(F, real)

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def kernel(indptr, indices, data, Y, V, out, residual):
        acc, v = np.empty(F, real), np.empty(F, real)
        for u in range(V.shape[0]):
            for j in range(F):
                acc[j], v[j] = zero, V[u, j]
            row_sum(indptr, indices, data, Y, u, v, acc, residual)
            for j in range(F):
                out[u, j] = acc[j]

    return kernel


@numba.njit(cache=True, nogil=True)
def _cg_update(X, r, p, Ap_parties, reg, rsold, active, eps):
    """One CG step per active user, in place (implicit's update order and stopping rule).

    Ap = Σ_parties + λp; α = rsold / p·Ap; x += αp; r −= αAp; stop if r·r < eps, else
    p = r + (r·r / rsold) p. A user that stops gets p = 0, so later stages send zeros.
    """
    n, f = X.shape
    for u in range(n):
        if not active[u]:
            continue
        pAp = 0.0
        for j in range(f):
            pAp += p[u, j] * (Ap_parties[u, j] + reg * p[u, j])
        a = rsold[u] / pAp
        rsnew = 0.0
        for j in range(f):
            X[u, j] += a * p[u, j]
            r[u, j] -= a * (Ap_parties[u, j] + reg * p[u, j])
            rsnew += r[u, j] * r[u, j]
        if rsnew < eps:
            active[u] = False
            for j in range(f):
                p[u, j] = 0.0
            continue
        beta = rsnew / rsold[u]
        for j in range(f):
            p[u, j] = r[u, j] + beta * p[u, j]
        rsold[u] = rsnew


@numba.njit(cache=True, nogil=True)
def _cg_start(r, p, rsold, active, eps):
    """rsold = r·r per user; users with nothing (inactive) or r·r < eps stop; p = r, or 0 if stopped."""
    n, f = r.shape
    for u in range(n):
        rs = 0.0
        for j in range(f):
            rs += r[u, j] * r[u, j]
        rsold[u] = rs
        if rs < eps:
            active[u] = False
        keep = 1.0 if active[u] else 0.0
        for j in range(f):
            p[u, j] = r[u, j] * keep


def _terms(C: sp.csr_matrix, Y: np.ndarray, V: np.ndarray, residual: bool) -> np.ndarray:
    """The block's sparse terms for every user row of V, in float64."""
    data = C.data if C.data.dtype == np.float64 else C.data.astype(np.float64)
    out = np.empty(V.shape, dtype=np.float64)
    _sparse_terms(C.indptr, C.indices, data, np.ascontiguousarray(Y, np.float64), V, out, residual)
    return out


def sparse_residual(C: sp.csr_matrix, Y: np.ndarray, X: np.ndarray) -> np.ndarray:
    """What a party sends for the CG start residual: Σ_{i ∈ u} (b_ui − (c_ui − 1) y_i·x_u) y_i."""
    X = np.ascontiguousarray(X, dtype=np.float64)
    return _terms(C, Y, X, residual=True)


def sparse_product(C: sp.csr_matrix, Y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """What a party sends for a CG step: Σ_{i ∈ u} (c_ui − 1)(y_i·p_u) y_i."""
    P = np.ascontiguousarray(P, dtype=np.float64)
    return _terms(C, Y, P, residual=False)


def block_residual(C: sp.csr_matrix, Y: np.ndarray, G: np.ndarray, X: np.ndarray) -> np.ndarray:
    """This block's whole part of r_u = Yᵀ C_u p_u − Yᵀ C_u Y x_u (without the λ term), G = YᵀY.

    The reference: in the protocol the party sends only :func:`sparse_residual` and the
    coordinator subtracts X·ΣG once for all blocks.
    """
    return sparse_residual(C, Y, X) - np.asarray(X, np.float64) @ G


def block_product(C: sp.csr_matrix, Y: np.ndarray, G: np.ndarray, P: np.ndarray) -> np.ndarray:
    """This block's whole part of Yᵀ C_u Y p_u (without the λ term); the reference of
    :func:`sparse_product` plus the coordinator's P·ΣG."""
    return sparse_product(C, Y, P) + np.asarray(P, np.float64) @ G


class FederatedALSParty:
    """One party: its confidence block and item factors, which never leave this object.

    Everything it hands out is a masked message (secure_agg) except its public identity.
    The same object runs in-process or behind `wenlv party serve` (training.remote) in its own process.
    """

    remote = False  # training.party_api.Party: called in this process

    def __init__(self, name: str, user_items: sp.csr_matrix, alpha: float = 1.0,
                 identity: Identity | None = None, state_dir=None):
        self.name = name
        self.state_dir = None if state_dir is None else Path(state_dir)  # where `save` keeps its item factors
        C = sp.csr_matrix(user_items, dtype=np.float32)
        C.sort_indices()
        if alpha != 1.0:
            C = (alpha * C).astype(np.float32)
        self._Ciu = C.T.tocsr()                       # items × users, for the item step
        self._Ciu.sort_indices()
        self._C = C
        self.identity = identity or Identity(name)
        self._masking: MaskingParty | None = None
        self._Y: np.ndarray | None = None
        self._G: np.ndarray | None = None
        self._cfg: dict = {}
        # work buffers, reused: fresh 8·users·factors-byte arrays cost page faults every stage
        self._local = threading.local()  # per masking thread: one block of users' terms
        self._payload = np.empty(0, dtype=np.uint64)

    # setup -----------------------------------------------------------------------------
    def describe(self) -> dict:
        """Public facts: shape of the block and the party's identity key (not its data)."""
        return {"name": self.name, "n_users": int(self._C.shape[0]), "n_items": int(self._C.shape[1]),
                "identity": self.identity.public_bytes}

    def setup(self, parties: list, identities: dict, factors: int, regularization: float, cg_steps: int,
              dtype: str, frac_bits: int, num_threads: int = 0, item_factors=None, random_state=None,
              ring_bits: int = 64) -> None:
        self._masking = MaskingParty(self.identity, tuple(parties), identities, frac_bits)
        self._cfg = dict(regularization=float(regularization), cg_steps=int(cg_steps), dtype=np.dtype(dtype),
                         num_threads=int(num_threads), ring_bits=int(ring_bits))
        self._threads = resolve_threads(num_threads)
        # confidences in the model's dtype, as implicit computes with them (float32 ~1.3x faster)
        self._data = self._C.data if self._cfg["dtype"] == np.float32 else self._C.data.astype(np.float64)
        self._item_data = self._Ciu.data if self._cfg["dtype"] == np.float32 else self._Ciu.data.astype(np.float64)
        if item_factors is None:
            item_factors = np.random.default_rng(random_state).random((self._C.shape[1], factors),
                                                                      dtype=np.dtype(dtype)) * 0.01
        if item_factors.shape != (self._C.shape[1], factors):
            raise WenlvError(f"{self.name}: initial item factors have shape {item_factors.shape}, "
                             f"expected {(self._C.shape[1], factors)}")
        self._set_items(np.array(item_factors, dtype=np.dtype(dtype), copy=True))

    def _set_items(self, Y: np.ndarray) -> None:
        self._Y = Y
        Y64 = Y.astype(np.float64)
        self._Y64, self._G = Y64, Y64.T @ Y64

    def _payload_buffer(self, size: int) -> np.ndarray:
        """The payload buffer, reused stage after stage (a fresh one would page-fault each time).

        Safe: the coordinator closes a stage (or aborts the round) before it asks for the
        next one, and keeps copies if it records what it saw.
        """
        if self._payload.size != size:
            self._payload = plain_pages_empty(size, np.uint64)
        return self._payload

    def _masked_terms(self, run_id: str, round_no: int, stage: str, V, residual: bool, progress=None):
        """Mask this block's sparse terms for V (residual or CG product) block of users by block
        of users, each block computed and masked while it is in cache. The dense part V·Y_pᵀY_p
        is not sent: the coordinator applies the summed gram matrix once for all parties.

        V may be still arriving (privacy.transport.StreamedArray: a block waits for its rows),
        and ``progress`` (see MaskingParty.mask_rows) hears of every finished block: over the
        network the masked rows go back while the next rows come in."""
        float32 = self._cfg["dtype"] == np.float32
        wait = getattr(V, "wait_rows", None)
        if wait is not None:
            if V.array.dtype != (np.float32 if float32 else np.float64):
                wait(V.array.shape[0])  # a dtype to convert: the whole array first
            V = V.array
        V = np.ascontiguousarray(V, dtype=np.float32 if float32 else np.float64)
        f = V.shape[1]
        C, data, Y = self._C, self._data, (self._Y if float32 else self._Y64)

        local = self._local

        def rows(lo: int, hi: int) -> np.ndarray:  # called from the masking threads
            u0, u1 = lo // f, hi // f
            if wait is not None:
                wait(u1)
            dense = getattr(local, "dense", None)
            if dense is None or dense.shape[0] < u1 - u0 or dense.shape[1] != f:
                dense = local.dense = np.empty((u1 - u0, f), dtype=np.float64)
            terms = dense[:u1 - u0]  # every row is written
            _sparse_terms(C.indptr[u0:u1 + 1], C.indices, data, Y, V[u0:u1], terms, residual)
            return terms.reshape(-1)

        return self._masking.mask_rows(run_id, round_no, stage, V.shape, rows, out=self._payload_buffer(V.size),
                                       threads=self._threads, ring_bits=self._cfg["ring_bits"], progress=progress)

    # secure aggregation rounds ------------------------------------------------------------
    def announce(self, run_id: str, round_no: int):
        return self._masking.announce(run_id, round_no)

    def receive_keys(self, run_id: str, round_no: int, announcements: list) -> None:
        self._masking.receive_keys(run_id, round_no, announcements)

    def support(self, run_id: str, round_no: int):
        """Masked, randomly weighted 'has an interaction here' flags (sum ≠ 0 ⇔ user not empty)."""
        has = np.diff(self._C.indptr) > 0
        weights = np.frombuffer(secrets.token_bytes(4 * has.size), dtype=np.uint32) % (1 << 16) + 1
        return self._masking.mask(run_id, round_no, "support", has * weights.astype(np.int64), integer=True)

    def gram(self, run_id: str, round_no: int):
        """Masked Y_pᵀY_p (factors × factors): the coordinator learns only Σ_p Y_pᵀY_p = YᵀY."""
        return self._masking.mask(run_id, round_no, "gram", self._G)

    def residual(self, run_id: str, round_no: int, stage: str, X: np.ndarray, progress=None):
        """Masked sparse_residual(X) (this block's sparse part of the CG start residual)."""
        return self._masked_terms(run_id, round_no, stage, X, residual=True, progress=progress)

    def product(self, run_id: str, round_no: int, stage: str, P: np.ndarray, progress=None):
        """Masked sparse_product(P) (this block's sparse part of A·p for a CG step)."""
        return self._masked_terms(run_id, round_no, stage, P, residual=False, progress=progress)

    def end_round(self, run_id: str, round_no: int) -> None:
        self._masking.end_round(run_id, round_no)

    # local item step ----------------------------------------------------------------------
    def item_step(self, X: np.ndarray, user_gram: np.ndarray | None = None) -> None:
        """Solve this block's item factors against the shared user factors (implicit's CG update,
        training.item_cg). ``user_gram`` = XᵀX, which the coordinator computes once for every
        party; a party computes it itself when it is not given."""
        cfg = self._cfg
        X = np.ascontiguousarray(X, dtype=cfg["dtype"])
        G = X.T @ X if user_gram is None else np.asarray(user_gram, dtype=cfg["dtype"])
        if G.shape != (X.shape[1], X.shape[1]):
            raise WenlvError(f"{self.name}: user gram has shape {G.shape}, expected {(X.shape[1], X.shape[1])}")
        Y = self._Y
        item_cg_step(self._Ciu, self._item_data, X, Y, with_ridge(G, cfg["regularization"]), cfg["cg_steps"],
                     self._threads)
        self._set_items(Y)

    def item_factors(self) -> np.ndarray:
        """The party's own item factors (it may publish them; the tourism POI factors go to serving)."""
        return self._Y.copy()

    def save(self, run_id: str) -> str:
        """Keep the item factors on this party's own disk (``<state_dir>/als/<run>/``); "" without one."""
        if self.state_dir is None or self._Y is None:
            return ""
        path = party_state_file(self.state_dir, "als", run_id, f"{self.name}_item_factors.npy")
        np.save(path, self._Y)
        return str(path)


# --------------------------------------------------------------------- the estimator
class FederatedALS:
    """implicit-style estimator: ``FederatedALS(...).fit({party: csr}) → .user_factors, .item_factors``.

    Parameters follow ``implicit.cpu.als.AlternatingLeastSquares`` (factors, regularization,
    alpha, dtype, iterations, random_state, cg_steps=3); ``num_threads`` (implicit's meaning: 0 =
    every core) is the thread count of each party's own work (masking, item step) and of the
    coordinator's (dense products, digests, sums) — results do not depend on it;
    ``fixed_point_bits`` sets the ring encoding (2^-bits resolution, ±2^(63-bits) range).
    ``ring_bits`` = 32 sends the CG stages' masked vectors on Z_2^32 (half the bytes; each value
    then within ±2^(31-bits)/parties, checked; e.g. 24 fractional bits: ±42, 6e-8 resolution).
    ``max_retries`` bounds re-keyed retries of a round after a dropout. ``audit_path``
    writes the hash-chained protocol log as JSON lines; ``record_view`` keeps every masked
    message the coordinator received in ``.transcript`` (for tests and audits).
    ``timings_`` splits a fit's wall time into coordinator and per-party seconds.
    ``collect_items`` names the parties whose item factors are handed back after the fit
    (default: all — an in-process simulation; in production only ``("tourism",)``, whose
    POI factors serving needs; the others keep theirs).
    ``party_threads`` runs in-process parties concurrently in that many threads (their
    kernels, BLAS, AES-CTR and BLAKE3 release the GIL); 1 (the default) calls them one after
    the other, each using ``num_threads``.
    Remote parties always run at once, each in its own process.
    """

    def __init__(self, factors: int = 64, regularization: float = 0.01, alpha: float = 1.0,
                 dtype=np.float32, iterations: int = 15, cg_steps: int = 3, random_state=None,
                 fixed_point_bits: int = DEFAULT_FRAC_BITS, num_threads: int = 0, max_retries: int = 3,
                 audit_path=None, record_view: bool = False, show_progress: bool = True,
                 run_id: str | None = None, collect_items=None, party_threads: int = 1, ring_bits: int = 64):
        self.factors, self.regularization, self.alpha = factors, regularization, alpha
        self.dtype, self.iterations, self.cg_steps = np.dtype(dtype), iterations, cg_steps
        self.random_state, self.fixed_point_bits, self.num_threads = random_state, fixed_point_bits, num_threads
        self.max_retries, self.audit_path, self.record_view = max_retries, audit_path, record_view
        self.show_progress, self.run_id = show_progress, run_id
        self.collect_items = collect_items
        if ring_bits not in RING_BITS:
            raise WenlvError(f"ring_bits must be one of {RING_BITS}, got {ring_bits}")
        self.ring_bits = int(ring_bits)
        if int(party_threads) < 1:
            raise WenlvError(f"party_threads must be at least 1, got {party_threads}")
        self.party_threads = int(party_threads)
        self._threads = resolve_threads(num_threads)  # the coordinator's own work
        self.timings_: dict = {}
        self.user_factors: np.ndarray | None = None
        self.item_factors: dict[str, np.ndarray] = {}
        self.parties_: list[str] = []
        self.audit_log: AuditLog | None = None
        self.transcript: list = []
        self.rounds_aborted_ = 0

    # public API -------------------------------------------------------------------------
    def fit(self, user_items: dict[str, sp.csr_matrix], init: tuple | None = None, callback=None):
        """Fit on aligned per-party blocks (same user rows, in the same order) run in-process.

        ``init`` = (user_factors, {party: item_factors}) starts from given factors (see
        :func:`init_factors`); by default they are drawn as ``implicit`` would draw them.
        """
        if not user_items:
            raise WenlvError("federated ALS needs at least one party block")
        shapes = {p: m.shape for p, m in user_items.items()}
        n_users = {s[0] for s in shapes.values()}
        if len(n_users) != 1:
            raise WenlvError(f"party blocks are not aligned on users: {shapes}")
        parties = {p: FederatedALSParty(p, m, alpha=self.alpha) for p, m in user_items.items()}
        return self.fit_parties(parties, init=init, callback=callback)

    def fit_parties(self, parties: dict[str, Party], init: tuple | None = None, callback=None):
        """Fit with :class:`~training.party_api.Party` handles: FederatedALSParty objects in
        process, or training.remote.RemoteParty over mutual TLS."""
        names = list(parties)
        self.timings_ = {"party_seconds": {}, "calls_sum": 0.0, "calls_max": 0.0, "calls_wall": 0.0,
                         "calls_cpu_sum": 0.0, "calls_cpu_max": 0.0, "cpu_measured": True}
        fit_cpu = time.process_time()
        self._work: dict[str, np.ndarray] = {}
        fit_start = time.perf_counter()
        info = self._each(parties, lambda name, party: party.describe())
        n_users = {i["n_users"] for i in info.values()}
        if len(n_users) != 1:
            raise WenlvError(f"party blocks are not aligned on users: { {p: i['n_users'] for p, i in info.items()} }")
        n_users = n_users.pop()
        if len(names) < 3 and len(names) not in _FEW_PARTIES_WARNED:
            # once per process and party count: a fit runs one iteration at a time in the
            # lockstep check and once per Shapley coalition, and the caveat does not change
            _FEW_PARTIES_WARNED.add(len(names))
            log.warning("federated ALS with %d part%s: pairwise masks do not hide a party's statistics from a "
                        "coordinator that is itself a party (see privacy/SECURE_AGGREGATION.md)",
                        len(names), "y" if len(names) == 1 else "ies")
        if init is None:
            init = init_factors(n_users, {p: info[p]["n_items"] for p in names}, self.factors,
                                self.random_state, self.dtype)
        X0, Y0 = init
        X = np.array(X0, dtype=self.dtype, copy=True)
        if X.shape != (n_users, self.factors):
            raise WenlvError(f"initial user factors have shape {X.shape}, expected {(n_users, self.factors)}")
        identities = {p: info[p]["identity"] for p in names}
        run_id = self.run_id or uuid.uuid4().hex
        self.run_id_ = run_id
        self.audit_log = AuditLog(self.audit_path)
        agg = Aggregator(run_id, tuple(names), identities, self.fixed_point_bits, audit=self.audit_log)
        agg.record_view = self.record_view
        self._each(parties, lambda name, party: party.setup(names, identities, self.factors, self.regularization,
                                                            self.cg_steps, self.dtype.str, self.fixed_point_bits,
                                                            self.num_threads, Y0[name], None, self.ring_bits))
        round_no = 0
        with tqdm(total=self.iterations, disable=not self.show_progress, desc="federated ALS") as bar:
            for iteration in range(self.iterations):
                for attempt in range(self.max_retries + 1):
                    round_no += 1
                    try:
                        X = self._user_round(parties, agg, run_id, round_no, X)
                        break
                    except DropoutError as exc:
                        agg.abort_round()
                        self.rounds_aborted_ += 1
                        log.warning("iteration %d: %s; re-keying", iteration, exc)
                        self._each(parties, lambda name, party: party.end_round(run_id, round_no), tolerate=True)
                        if attempt == self.max_retries:
                            raise SecureAggError(f"iteration {iteration}: {self.max_retries + 1} rounds aborted; "
                                                 f"giving up (last: {exc})") from exc
                XtX = self._user_gram(X)  # once for every party's item step
                self._each(parties, lambda name, party: party.item_step(X, XtX))
                bar.update(1)
                if callback:
                    callback(iteration)
        self.user_factors = X
        self._work = {}  # the CG work buffers (≈ 4 · 8 · users · factors bytes) are not kept after the fit
        self.parties_ = names
        collect = names if self.collect_items is None else [p for p in names if p in self.collect_items]
        self.saved_ = self._each(parties, lambda name, party: party.save(run_id))
        self.item_factors = self._each(parties, lambda name, party: party.item_factors(), only=collect)
        self.transcript = agg.view
        t = self.timings_
        t["wall_seconds"] = time.perf_counter() - fit_start
        t["coordinator_seconds"] = t["wall_seconds"] - t["calls_wall"]
        # the run re-read as if every party were its own machine (network time excluded)
        t["separate_machines_seconds"] = t["coordinator_seconds"] + t["calls_max"]
        if t["cpu_measured"]:
            # the same in CPU seconds (insensitive to other work on a shared machine): the
            # coordinator's own CPU plus, call after call, the busiest party's — the critical
            # path with every party on a machine of its own, network transfer excluded
            t["cpu_seconds"] = time.process_time() - fit_cpu
            t["coordinator_cpu_seconds"] = t["cpu_seconds"] - t["calls_cpu_sum"]
            t["separate_machines_cpu_seconds"] = t["coordinator_cpu_seconds"] + t["calls_cpu_max"]
        return self

    # one user step = one secure-aggregation round ---------------------------------------
    def _user_round(self, parties, agg: Aggregator, run_id: str, round_no: int, X_prev: np.ndarray) -> np.ndarray:
        names = list(parties)
        reg = float(np.float32(self.regularization))  # as implicit has it: λ passes through a C float
        agg.open_round(round_no)
        for ann in self._each(parties, lambda name, party: party.announce(run_id, round_no)).values():
            agg.receive_key(ann)
        keys = agg.keys()
        self._each(parties, lambda name, party: party.receive_keys(run_id, round_no, keys))

        nonempty = self._stage(parties, agg, "support", lambda party: party.support(run_id, round_no),
                               integer=True) != 0
        G = self._stage(parties, agg, "gram", lambda party: party.gram(run_id, round_no))  # YᵀY = Σ_p Y_pᵀY_p
        # CG state in the model's precision, as implicit keeps it (float32 halves the coordinator's
        # memory and traffic and what parties read), reused round after round
        work = self._work_dtype()
        # X: the round's output, in whichever of two buffers does not hold its input (the previous
        # output, needed again if this round aborts); a fresh array would page-fault every round
        x_name = "X1" if self._work.get("X0") is X_prev else "X0"
        X, r, p = (self._work_buffer(name, X_prev.shape, work) for name in (x_name, "r", "p"))
        np.copyto(X, X_prev)
        f = X.shape[1]
        rsold = np.empty(X.shape[0], dtype=np.float64)
        active = nonempty.copy()
        minus_A = (-(G + reg * np.eye(f))).astype(work)          # −(YᵀY + λI)
        gram = G.astype(work)

        # Each stage's sum streams out of close_stage a block of users at a time, and the dense
        # part (YᵀY once for all parties) and the CG update follow while the block is in cache.
        def start(lo: int, hi: int, sparse: np.ndarray) -> None:  # r = Σ_p sparse_p − (YᵀY + λI) x
            u = slice(lo // f, hi // f)
            np.matmul(X[u], minus_A, out=r[u])
            r[u] += sparse.reshape(-1, f)
            _cg_start(r[u], p[u], rsold[u], active[u], RS_EPS)

        def step(lo: int, hi: int, sparse: np.ndarray) -> None:   # Ap = Σ_p sparse_p + YᵀY p (λp: in _cg_update)
            u = slice(lo // f, hi // f)
            Ap = sparse.reshape(-1, f)
            Ap += p[u] @ gram
            _cg_update(X[u], r[u], p[u], Ap, reg, rsold[u], active[u], RS_EPS)

        self._stage(parties, agg, "r0", lambda party: party.residual(run_id, round_no, "r0", X), consume=start,
                    ring_bits=self.ring_bits)
        for k in range(self.cg_steps):
            if not active.any():
                break
            stage = f"ap{k + 1}"
            self._stage(parties, agg, stage, lambda party: party.product(run_id, round_no, stage, p), consume=step,
                        ring_bits=self.ring_bits)
        X[~nonempty] = 0.0  # users with no interaction anywhere get 0 (as in implicit)
        agg.close_round()
        self._each(parties, lambda name, party: party.end_round(run_id, round_no))
        return X

    def _user_gram(self, X: np.ndarray) -> np.ndarray:
        """XᵀX of the new user factors, which every party's item step needs (the parties get X
        anyway). Partial grams of fixed row blocks, summed in order: the coordinator's threads
        share the blocks, and the result does not depend on how many there are."""
        parts: dict[int, np.ndarray] = {}

        def rows(lo: int, hi: int) -> None:
            for start in range(lo, hi, _USER_GRAM_BLOCK_ROWS):
                block = X[start:min(start + _USER_GRAM_BLOCK_ROWS, hi)]
                parts[start] = block.T @ block

        run_segments(rows, segments(X.shape[0], _USER_GRAM_BLOCK_ROWS, self._threads))
        return sum(parts[k] for k in sorted(parts))

    def _work_dtype(self):
        return np.float32 if self.dtype == np.float32 else np.float64

    def _work_buffer(self, name: str, shape: tuple, dtype) -> np.ndarray:
        buf = self._work.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._work[name] = plain_pages_empty(shape, dtype)
        return buf

    def _stage(self, parties, agg: Aggregator, stage: str, send, integer: bool = False, consume=None,
               ring_bits: int = 64):
        """One stage: every party's masked message (``send(party)``), checked, summed, released."""
        agg.open_stage(stage, ring_bits)
        agg.submit_all(list(self._each(parties, lambda name, party: send(party)).values()))
        return agg.close_stage(integer=integer, threads=self._threads, consume=consume, dtype=self._work_dtype())

    # calling parties (in-process objects or remote proxies) -------------------------------
    def _each(self, parties: dict[str, Party], call, only=None, tolerate: bool = False) -> dict:
        """``call(name, party)`` for every party (or those in `only`), each a method of the
        :class:`~training.party_api.Party` protocol; a party that does not answer raises
        PartyUnavailable (ignored with ``tolerate``).

        Remote parties are called at once, in-process ones in ``party_threads`` threads (one
        after the other by default). Each call's duration per party goes to ``timings_``, so
        a run can also be read as if the parties were separate machines.
        """
        def one(name):
            start, cpu = time.perf_counter(), time.process_time()
            try:
                return call(name, parties[name])
            except PartyUnavailable:
                if tolerate:
                    return None
                raise
            finally:
                spent[name] = time.perf_counter() - start
                # one in-process party at a time: the process's CPU time is that party's
                cpu_spent[name] = time.process_time() - cpu

        args = list(parties) if only is None else [p for p in parties if p in only]
        spent: dict[str, float] = {}
        cpu_spent: dict[str, float] = {}
        remote = any(getattr(h, "remote", False) for h in parties.values())
        workers = len(args) if remote else min(len(args), self.party_threads)
        sequential_in_process = workers <= 1 and not remote
        wall = time.perf_counter()
        try:
            if workers <= 1:
                return {name: one(name) for name in args}
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = {name: pool.submit(one, name) for name in args}
                return {name: f.result() for name, f in futures.items()}
        finally:
            t = self.timings_
            t["calls_wall"] += time.perf_counter() - wall
            for name, sec in spent.items():
                t["party_seconds"][name] = t["party_seconds"].get(name, 0.0) + sec
            if spent:
                t["calls_sum"] += sum(spent.values())
                t["calls_max"] += max(spent.values())
            if cpu_spent and sequential_in_process:
                t["calls_cpu_sum"] += sum(cpu_spent.values())
                t["calls_cpu_max"] += max(cpu_spent.values())
            else:
                t["cpu_measured"] = False
