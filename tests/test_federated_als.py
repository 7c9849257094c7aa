"""Federated ALS equals centralised implicit ALS, survives dropouts, and hides per-party statistics."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from wenlv.bench.als import ndcg10, synthesize
from wenlv.privacy.secure_agg import decode_fixed
from wenlv.training.als_data import load_party_block, load_party_matrices, load_users
from wenlv.training.central_als import CentralALS
from wenlv.training.federated_als import (FederatedALS, FederatedALSParty, PartyUnavailable, block_product,
                                    block_residual, init_factors, sparse_product, sparse_residual)
from wenlv.errors import WenlvError
from wenlv.training.pipeline import RELATIVE_TOLERANCE

PARAMS = dict(factors=16, regularization=0.05, iterations=8, random_state=11, num_threads=1)


@pytest.fixture(scope="module")
def data():
    blocks, test = synthesize(users=600, pois=60, areas=30, topics=15, seed=5)
    return blocks, test


def _max_diff(a, b):
    return max([float(np.max(np.abs(a.user_factors - b.user_factors)))] +
               [float(np.max(np.abs(a.item_factors[p] - b.item_factors[p]))) for p in a.item_factors])


def test_equals_implicit_als_in_float64(data):
    blocks, test = data
    fed = FederatedALS(dtype=np.float64, show_progress=False, **PARAMS).fit(blocks)
    central = CentralALS(dtype=np.float64, **PARAMS).fit(blocks)
    assert np.abs(central.user_factors).max() > 0.1          # a real model, not zeros
    assert _max_diff(fed, central) < 1e-5                     # fixed point: 2^-32 per value
    nd_fed = ndcg10(fed.user_factors, fed.item_factors["tourism"], blocks["tourism"], test)
    nd_central = ndcg10(central.user_factors, central.item_factors["tourism"], blocks["tourism"], test)
    assert nd_central > 0.05
    assert nd_fed == pytest.approx(nd_central, abs=1e-9)


def test_parties_in_threads_give_exactly_the_same_model(data):
    """Concurrent parties (fresh masks, reused buffers) sum to the same ring values bit for bit."""
    blocks, _ = data
    one = FederatedALS(dtype=np.float64, show_progress=False, **PARAMS).fit(blocks)
    two = FederatedALS(dtype=np.float64, show_progress=False, party_threads=2, record_view=True, **PARAMS).fit(blocks)
    assert np.array_equal(one.user_factors, two.user_factors)
    assert all(np.array_equal(one.item_factors[p], two.item_factors[p]) for p in blocks)
    assert len({m.payload.ctypes.data for m in two.transcript}) == len(two.transcript)  # kept copies
    assert two.timings_["coordinator_seconds"] > 0
    with pytest.raises(WenlvError, match="party_threads"):
        FederatedALS(party_threads=0)


def test_equals_implicit_als_in_float32_and_coarser_fixed_point_is_worse(data):
    blocks, test = data
    central = CentralALS(**PARAMS).fit(blocks)
    fed = FederatedALS(show_progress=False, **PARAMS).fit(blocks)
    coarse = FederatedALS(show_progress=False, fixed_point_bits=12, **PARAMS).fit(blocks)
    assert _max_diff(fed, central) < 1e-2
    assert _max_diff(coarse, central) > _max_diff(fed, central)
    nd = [ndcg10(m.user_factors, m.item_factors["tourism"], blocks["tourism"], test) for m in (fed, central)]
    assert abs(nd[0] - nd[1]) < 2e-3


def test_users_without_interactions_get_zero_factors():
    rng = np.random.default_rng(0)
    blocks = {}
    for p in ("tourism", "carrier"):
        m = sp.random(30, 8, density=0.3, random_state=rng, format="lil", dtype=np.float32)
        m[:3] = 0                                            # users 0..2 empty in every block
        m = sp.csr_matrix(m)
        m.eliminate_zeros()
        m.data = (1 + 4 * m.data).astype(np.float32)
        blocks[p] = m
    assert all(np.diff(m.indptr)[:3].sum() == 0 for m in blocks.values())
    fed = FederatedALS(show_progress=False, factors=4, iterations=3, random_state=0).fit(blocks)
    assert np.all(fed.user_factors[:3] == 0) and np.all(np.abs(fed.user_factors[3:]).sum(axis=1) > 0)


class FlakyParty:
    """A party that drops out once, on its `on_call`-th call of `method`."""

    def __init__(self, inner, method, on_call=1):
        self.inner, self.method, self.dropped, self.calls, self.on_call = inner, method, False, 0, on_call

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name == self.method and not self.dropped:
            self.calls += 1
            if self.calls == self.on_call:
                def drop(*args):
                    self.dropped = True
                    raise PartyUnavailable(f"{self.inner.name} went away")
                return drop
        return attr


@pytest.mark.parametrize("method,on_call", [("announce", 1), ("product", 1), ("product", 5), ("product", 6)])
def test_dropout_aborts_the_round_rekeys_and_gives_the_same_model(data, method, on_call):
    """A dropout in the first round, or mid-CG in the second (after the round's output buffer
    has been written), aborts the round; the retry restarts from the same factors."""
    blocks, _ = data
    init = init_factors(600, {p: m.shape[1] for p, m in blocks.items()}, 8, 3)
    params = dict(factors=8, iterations=3, show_progress=False)
    clean = FederatedALS(**params).fit(blocks, init=init)
    parties = {p: FederatedALSParty(p, m) for p, m in blocks.items()}
    parties["internet"] = FlakyParty(parties["internet"], method, on_call)
    model = FederatedALS(**params).fit_parties(parties, init=init)
    assert parties["internet"].dropped and model.rounds_aborted_ == 1
    assert np.array_equal(model.user_factors, clean.user_factors)
    for p in blocks:
        assert np.array_equal(model.item_factors[p], clean.item_factors[p])
    entries = model.audit_log.entries
    aborted = [e for e in entries if e["kind"] == "round-abort"]
    assert len(aborted) == 1
    # no partial sum: in the aborted round every released stage sum had all three parties in it,
    # the stage the party dropped from released nothing, and the next round re-keyed
    bad_round = aborted[0]["round"]
    in_round = [e for e in entries if e["round"] == bad_round]
    for e in in_round:
        if e["kind"] == "sum":
            senders = {m["sender"] for m in in_round if m["kind"] == "masked" and m["stage"] == e["stage"]}
            assert senders == set(blocks)
    released = {e["stage"] for e in in_round if e["kind"] == "sum"}
    # the dropped call: the first product of round 1, the second (5) or third (6) of round 2
    dropped_stage = {1: "ap1", 5: "ap2", 6: "ap3"}.get(on_call) if method == "product" else "support"
    stages = ["support", "gram", "r0", "ap1", "ap2", "ap3"]
    assert released == set(stages[:stages.index(dropped_stage)])
    assert any(e["kind"] == "key" and e["round"] == aborted[0]["round"] + 1 for e in entries)
    assert model.audit_log.verify()


def test_too_many_dropouts_give_up_with_a_clear_error(data):
    blocks, _ = data

    class Gone(FederatedALSParty):
        def product(self, *args):
            raise PartyUnavailable("carrier is gone")

    parties = {p: (Gone if p == "carrier" else FederatedALSParty)(p, m) for p, m in blocks.items()}
    with pytest.raises(WenlvError, match="rounds aborted"):
        FederatedALS(factors=4, iterations=1, max_retries=2, show_progress=False).fit_parties(parties)


def test_traffic_is_users_times_factors_per_stage(data):
    blocks, _ = data
    model = FederatedALS(factors=8, iterations=1, show_progress=False, record_view=True).fit(blocks)
    vectors = [m for m in model.transcript if m.stage not in ("support", "gram")]
    assert vectors and all(m.shape == (600, 8) and m.size == 600 * 8 * 8 for m in vectors)
    grams = [m for m in model.transcript if m.stage == "gram"]  # one factors × factors matrix per party
    assert len(grams) == 3 and all(m.shape == (8, 8) for m in grams)


@pytest.mark.parametrize("factors", [16, 7])
def test_sparse_terms_match_the_dense_formula(factors):
    """The compiled kernel (two items at a time, per factor count) against Σ_i coef_ui y_i in
    numpy, over users with 0, 1, 2 and odd numbers of items and negative confidences; in
    float32 (a float32 model's parties) to float32 precision."""
    from wenlv.training.federated_als import _sparse_terms

    rng = np.random.default_rng(8)
    C = sp.random(300, 40, density=0.08, random_state=rng, format="csr", dtype=np.float64) * 6 + 0
    C.data = np.where(rng.random(C.nnz) < 0.2, -C.data, C.data + 1.0)
    C.sort_indices()
    assert set(np.diff(C.indptr)[:300]) >= {0, 1, 2, 3}
    Y, V = rng.normal(size=(40, factors)), rng.normal(size=(300, factors))
    want_res, want_prod = np.zeros_like(V), np.zeros_like(V)
    for u in range(300):
        items, c = C.indices[C.indptr[u]:C.indptr[u + 1]], C.data[C.indptr[u]:C.indptr[u + 1]]
        d = (np.abs(c) - 1.0) * (Y[items] @ V[u])
        want_prod[u] = d @ Y[items]
        want_res[u] = (np.where(c > 0, c, 0.0) - d) @ Y[items]
    assert np.max(np.abs(sparse_product(C, Y, V) - want_prod)) < 1e-12
    assert np.max(np.abs(sparse_residual(C, Y, V) - want_res)) < 1e-12
    for residual, want in ((True, want_res), (False, want_prod)):
        got = np.empty_like(V)
        _sparse_terms(C.indptr, C.indices, C.data.astype(np.float32), Y.astype(np.float32), V, got, residual)
        assert np.max(np.abs(got - want)) < 1e-5 * np.abs(want).max()
    with pytest.raises(WenlvError, match="float32 but confidences are float64"):
        _sparse_terms(C.indptr, C.indices, C.data, Y.astype(np.float32), V, np.empty_like(V), True)


def test_parties_mask_their_block_terms_block_by_block():
    """A party's masked residual/product (computed a block of users at a time, in cache) plus the
    coordinator's V·ΣY_pᵀY_p sums to the reference block_residual/block_product over the
    parties, across several blocks; the masked grams sum to Σ_p Y_pᵀY_p."""
    from wenlv.privacy.secure_agg import MASK_CHUNK, Aggregator

    f = 16
    n_users = 2 * MASK_CHUNK // f + 37                      # two blocks of users and a bit
    rng = np.random.default_rng(3)
    blocks = {p: sp.random(n_users, k, density=0.05, random_state=rng, format="csr", dtype=np.float32) * 4
              for p, k in (("tourism", 20), ("carrier", 12), ("internet", 7))}
    for m in blocks.values():
        m.data += 1.0
    parties = {p: FederatedALSParty(p, m) for p, m in blocks.items()}
    ids = {p: party.describe()["identity"] for p, party in parties.items()}
    for party in parties.values():
        party.setup(list(parties), ids, f, 0.05, 3, "float64", 32, random_state=1)
    agg = Aggregator("r", tuple(parties), ids)
    agg.open_round(1)
    for party in parties.values():
        agg.receive_key(party.announce("r", 1))
    keys = agg.keys()
    for party in parties.values():
        party.receive_keys("r", 1, keys)
    V = rng.normal(scale=0.1, size=(n_users, f))
    agg.open_stage("gram")
    for party in parties.values():
        agg.submit(party.gram("r", 1))
    G = agg.close_stage()
    assert np.max(np.abs(G - sum(party._Y64.T @ party._Y64 for party in parties.values()))) < 1e-8
    for stage, method, reference, sign in (("r0", "residual", block_residual, -1),
                                           ("ap1", "product", block_product, 1)):
        agg.open_stage(stage)
        for party in parties.values():
            agg.submit(getattr(party, method)("r", 1, stage, V))
        got = agg.close_stage() + sign * (V @ G)
        want = sum(reference(party._C, party._Y64, party._G, V) for party in parties.values())
        assert got.shape == (n_users, f) and np.abs(want).max() > 1e-3
        assert np.max(np.abs(got - want)) < 1e-8


def _attack_accuracy(residuals: np.ndarray, truth: np.ndarray) -> float:
    """Membership inference on one party's per-user residual r_u = Σ_i (c − (c−1) y_i·x_u) y_i − G x_u.

    A user without items in the block has only −G x_u, tiny next to the Σ c·y_i of a user
    with items: guess "has items" when the residual's norm is above the median. Returns the
    balanced accuracy of that guess.
    """
    norm = np.linalg.norm(residuals, axis=1)
    guess = norm > np.median(norm)
    return 0.5 * (np.mean(guess[truth]) + np.mean(~guess[~truth]))


def test_interaction_inference_works_on_plain_statistics_and_fails_on_masked_ones():
    rng = np.random.default_rng(2)
    n = 800
    has_carrier = rng.random(n) < 0.5
    carrier = sp.random(n, 20, density=0.25, random_state=rng, format="csr", dtype=np.float32)
    carrier = sp.csr_matrix(carrier.multiply(has_carrier[:, None]))
    carrier.eliminate_zeros()
    carrier.data = (1 + 9 * carrier.data).astype(np.float32)
    blocks = {"tourism": sp.random(n, 12, density=0.3, random_state=rng, format="csr", dtype=np.float32),
              "carrier": carrier,
              "internet": sp.random(n, 6, density=0.5, random_state=rng, format="csr", dtype=np.float32)}
    for p in ("tourism", "internet"):
        blocks[p].data = (1 + 4 * blocks[p].data).astype(np.float32)
    truth = np.diff(blocks["carrier"].indptr) > 0
    X0, Y0 = init_factors(n, {p: m.shape[1] for p, m in blocks.items()}, 8, 0, np.float64)
    model = FederatedALS(factors=8, iterations=1, dtype=np.float64, show_progress=False,
                         record_view=True).fit(blocks, init=(X0, Y0))
    # what an unmasked protocol would show the coordinator: the carrier's own residual
    Yc = Y0["carrier"]
    plain = block_residual(blocks["carrier"], Yc, Yc.T @ Yc, X0)
    assert _attack_accuracy(plain, truth) > 0.95
    # what the coordinator actually saw from the carrier in the same stage
    masked_msg = next(m for m in model.transcript if m.sender == "carrier" and m.stage == "r0")
    masked = decode_fixed(masked_msg.payload).reshape(masked_msg.shape)
    assert abs(_attack_accuracy(masked, truth) - 0.5) < 0.08


# ------------------------------------------------------------------ loading the party blocks
def _write_blocks(root, rows: dict[str, pd.DataFrame], tokens):
    from wenlv.features import contracts

    (root / "carrier").mkdir(parents=True)
    (root / "tourism").mkdir()
    (root / "internet").mkdir()
    users = pd.DataFrame({"token": tokens, "in_tourism": True, "in_internet": True, "is_prospect": False})
    (root / "carrier" / "users.parquet").mkdir()             # a folder of parts, as Spark writes it
    users.iloc[:1].to_parquet(root / "carrier" / "users.parquet" / "part-00000.parquet")
    users.iloc[1:].to_parquet(root / "carrier" / "users.parquet" / "part-00001.parquet")
    pd.DataFrame({"poi_id": ["p1", "p2", "p3"], "category": "museum", "popularity": 1.0, "summer_share": 0.1,
                  "weekend_share": 0.2}).to_parquet(root / "tourism" / "poi_features.parquet")
    for party, frame in rows.items():
        frame.to_parquet(root / party / f"{contracts.INTERACTION_TABLE[party].name}.parquet")


def test_party_blocks_load_aligned_from_own_folders(tmp_path):
    tokens = ["t3", "t1", "t2"]
    _write_blocks(tmp_path, {
        "tourism": pd.DataFrame({"token": ["t1", "t3"], "poi_id": ["p2", "p1"], "visits": 1, "spend_cny": 1.0,
                                 "dwell_minutes": 1.0, "recency_days": 1.0, "confidence": [2.0, 3.0]}),
        "carrier": pd.DataFrame({"token": ["t2"], "area_id": ["a9"], "days": 1, "dwell_minutes": 1.0,
                                 "confidence": [4.0]}),
        "internet": pd.DataFrame({"token": ["t1", "t1"], "topic": ["food", "art"], "events": 1,
                                  "confidence": [5.0, 6.0]}),
    }, tokens)
    order, parts = load_party_matrices(tmp_path)
    assert list(order) == ["t1", "t2", "t3"]
    assert list(parts["tourism"].items) == ["p1", "p2", "p3"]     # every POI, visited or not
    assert parts["tourism"].matrix.toarray().tolist() == [[0, 2, 0], [0, 0, 0], [3, 0, 0]]
    assert parts["carrier"].matrix.toarray().tolist() == [[0], [4], [0]]
    assert list(parts["internet"].items) == ["art", "food"]
    assert parts["internet"].matrix.toarray().tolist() == [[6, 5], [0, 0], [0, 0]]


@pytest.mark.parametrize("problem,match", [
    ("unknown_token", "not in carrier/users"),
    ("bad_confidence", "confidence"),
    ("duplicate", "duplicate"),
    ("stray_poi", "poi_id not in"),
])
def test_bad_party_blocks_stop_with_a_named_error(tmp_path, problem, match):
    frame = pd.DataFrame({"token": ["t1", "t2"], "poi_id": ["p1", "p2"], "visits": 1, "spend_cny": 1.0,
                          "dwell_minutes": 1.0, "recency_days": 1.0, "confidence": [2.0, 3.0]})
    if problem == "unknown_token":
        frame.loc[1, "token"] = "nobody"
    elif problem == "bad_confidence":
        frame.loc[1, "confidence"] = -1.0
    elif problem == "duplicate":
        frame.loc[1, ["token", "poi_id"]] = ["t1", "p1"]
    elif problem == "stray_poi":
        frame.loc[1, "poi_id"] = "p404"
    _write_blocks(tmp_path, {"tourism": frame}, ["t1", "t2"])
    with pytest.raises(WenlvError, match=match):
        load_party_block(tmp_path, "tourism", load_users(tmp_path))
    with pytest.raises(WenlvError, match="missing"):
        load_party_block(tmp_path, "carrier", load_users(tmp_path))


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_als_runs_and_reports_its_peer(threads):
    """`wenlv bench als` on the tiny scale (without Spark): every figure present and consistent."""
    from wenlv.bench.als import run

    result = run(scale="tiny", factors=8, iterations=2, spark=False, threads=threads)
    assert result["params"]["threads"]["federated"] == result["params"]["threads"]["implicit"] == threads
    spi = result["seconds_per_iteration"]
    assert spi["federated"] > 0 and spi["implicit"] > 0
    assert result["ratios"]["federated_over_implicit"] == pytest.approx(spi["federated"] / spi["implicit"])
    steady = result["steady_seconds_per_iteration"]      # one timed interval after the first iteration
    assert 0 < steady["federated"] <= 2 * spi["federated"] and 0 < steady["implicit"] <= 2 * spi["implicit"]
    assert result["data"]["users"] == 2000 and sum(result["data"]["nnz"].values()) > 0
    assert result["ndcg@10_abs_diff_federated_implicit"] < 5e-3
    assert result["federated_vs_implicit_max_abs_diff"]["user_factors"] < 1e-2
    breakdown = result["federated_breakdown_seconds_per_iteration"]
    assert set(breakdown["parties"]) == {"tourism", "carrier", "internet"}
    assert breakdown["separate_machines_estimate"] <= spi["federated"] + 1e-9


def _item_problem(dtype, seed=3):
    """items × users confidences (some negative: c < 0 means preference 0), an unused item, factors."""
    rng = np.random.default_rng(seed)
    C = sp.random(300, 2000, density=0.02, random_state=seed, format="csr", dtype=np.float64)
    C.data = 1 + 5 * C.data
    C.data[::7] *= -1
    C = C.tolil()
    C[17, :] = 0                                              # an item nobody used gets a zero factor
    C = C.tocsr().astype(np.float32)
    return C, rng.random((2000, 16)).astype(dtype) * 0.1, rng.random((300, 16)).astype(dtype) * 0.1


@pytest.mark.parametrize("threads", [1, 2])
def test_item_step_kernel_is_implicits_cg_update(threads):
    from implicit.cpu import _als

    from wenlv.training.item_cg import item_cg_step, nnz_balanced_ranges, with_ridge

    C, X, Y = _item_problem(np.float64)
    expected = Y.copy()
    _als.least_squares_cg(C, expected, X, 0.05, num_threads=1, cg_steps=3)
    got = Y.copy()
    item_cg_step(C, C.data.astype(np.float64), X, got, with_ridge(X.T @ X, 0.05), 3, threads)
    assert np.abs(expected).max() > 0.1 and not np.array_equal(expected, Y)
    assert np.abs(got - expected).max() < 1e-10
    assert not got[17].any()
    ranges = nnz_balanced_ranges(C.indptr, 2)
    assert ranges[0][0] == 0 and ranges[-1][1] == C.shape[0] and len(ranges) == 2
    with pytest.raises(WenlvError, match="dtype"):
        item_cg_step(C, C.data, X, Y.copy(), with_ridge(X.T @ X, 0.05), 3)   # float32 data, float64 factors


def test_item_step_uses_the_coordinators_user_gram_or_its_own():
    C, X, Y = _item_problem(np.float64)
    party = FederatedALSParty("tourism", C.T.tocsr())
    party.setup(["tourism"], {"tourism": party.identity.public_bytes}, 16, 0.05, 3, "<f8", 32, 1, Y)
    other = FederatedALSParty("tourism", C.T.tocsr())
    other.setup(["tourism"], {"tourism": other.identity.public_bytes}, 16, 0.05, 3, "<f8", 32, 1, Y)
    party.item_step(X)
    other.item_step(X, X.T @ X)
    assert np.array_equal(party.item_factors(), other.item_factors())
    with pytest.raises(WenlvError, match="user gram"):
        other.item_step(X, np.eye(3))


def test_thread_count_does_not_change_the_model(data, monkeypatch):
    """Several row blocks per thread (small blocks here) and items split by interactions:
    the float32 model is the same bit for bit with one or two threads."""
    import wenlv.training.federated_als as fa

    monkeypatch.setattr(fa, "_USER_GRAM_BLOCK_ROWS", 128)
    blocks, _ = data
    params = dict(PARAMS, iterations=3)
    one = FederatedALS(show_progress=False, **params).fit(blocks)
    two = FederatedALS(show_progress=False, **dict(params, num_threads=2)).fit(blocks)
    assert np.array_equal(one.user_factors, two.user_factors)
    assert all(np.array_equal(one.item_factors[p], two.item_factors[p]) for p in blocks)


def test_narrow_ring_halves_the_cg_bytes_and_gives_the_same_sums(data):
    """On Z_2^32 (low halves of the Z_2^64 elements) every stage sum is the same integer, so the
    model equals the 64-bit ring's bit for bit at the same fractional bits, within the pipeline's
    tolerance of implicit; a value that could wrap the narrow sum raises instead."""
    blocks, _ = data
    params = dict(PARAMS, iterations=3)
    wide = FederatedALS(show_progress=False, fixed_point_bits=24, record_view=True, **params).fit(blocks)
    narrow = FederatedALS(show_progress=False, fixed_point_bits=24, ring_bits=32, record_view=True, **params).fit(blocks)
    assert np.array_equal(wide.user_factors, narrow.user_factors)
    assert all(np.array_equal(wide.item_factors[p], narrow.item_factors[p]) for p in blocks)
    cg = [m for m in narrow.transcript if m.stage == "r0" or m.stage.startswith("ap")]
    assert cg and all(m.payload.dtype == np.uint32 and m.size == 600 * 16 * 4 for m in cg)
    assert all(m.payload.dtype == np.uint64 for m in narrow.transcript if m.stage in ("support", "gram"))
    # the pipeline's check (training.factors): one float64 iteration from the same state as implicit's
    state = (narrow.user_factors.astype(np.float64), {p: v.astype(np.float64) for p, v in narrow.item_factors.items()})
    one = dict(params, iterations=1)
    step = FederatedALS(show_progress=False, fixed_point_bits=24, ring_bits=32, dtype=np.float64, **one).fit(
        blocks, init=state)
    central = CentralALS(dtype=np.float64, **one).fit(blocks, init=state)
    assert _max_diff(step, central) / np.abs(central.user_factors).max() < RELATIVE_TOLERANCE
    with pytest.raises(WenlvError, match="overflows the ring"):   # ±2^(31-28)/3 ≈ 2.7: too narrow
        FederatedALS(show_progress=False, fixed_point_bits=28, ring_bits=32, max_retries=0, **params).fit(blocks)
    with pytest.raises(WenlvError, match="ring_bits"):
        FederatedALS(ring_bits=16)
