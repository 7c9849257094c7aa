"""`wenlv bench als`: federated masked ALS vs centralised implicit ALS vs Spark MLlib ALS.

All three fit the same user × [POIs | areas | topics] confidence matrix with the same
factors, regularisation and iterations, in the same run, on one machine; the JSON on
stdout gives seconds per iteration (fit wall time / iterations; the goals are checked on
these), the steady cost of one more iteration (federated and implicit: median of
iterations 2..n, from their callbacks; Spark: from a second fit of one iteration,
(T_n − T_1) / (n − 1)), the ratios, and each
model's NDCG@10 on held-out tourism visits (training.evaluation: binary gain, seen POIs
excluded). Federated and implicit start from the same factors and get the same number of
threads (``--threads``, default 1; ``OPENBLAS_NUM_THREADS=1``): implicit ``num_threads``;
federated ``num_threads`` for each party's and the coordinator's own work, the three
in-process parties called one after the other; Spark runs ``local[2]`` (its default
parallelism here).

Spark MLlib's implicit ALS takes ratings r and uses confidence 1 + α·r: it is fed
r = c − 1 with α = 1, so its confidences equal the others'. It scales λ by each row's
count (ALS-WR), so it is the same task but not the same objective: compare its speed and
its NDCG, not its factors.

Data: the feature blocks of `wenlv features` (``--features DIR``, test window from
``tourism/test_interactions``) or a synthetic three-block implicit dataset (``--scale``;
the exact shape used is in the JSON).
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp

SCALES = {
    # users, POIs, carrier areas, internet topics; mean interactions per user in each block
    "tiny": dict(users=2_000, pois=200, areas=100, topics=40),
    "small": dict(users=50_000, pois=1_000, areas=500, topics=100),
    "medium": dict(users=300_000, pois=5_000, areas=2_000, topics=200),
}
MEAN_NNZ = {"tourism": 4.0, "carrier": 10.0, "internet": 6.0}
SHARE_WITH = {"tourism": 0.6, "carrier": 0.95, "internet": 0.75}
TEST_DRAWS = 2  # fresh POI draws per tourist in the test window (those already visited are dropped)


def visit_counts(conf: sp.csr_matrix) -> sp.csr_matrix:
    """Visit counts back from the generator's confidences (inverse of `confidence`)."""
    counts = sp.csr_matrix(conf, dtype=np.float64, copy=True)
    counts.data = np.rint(np.expm1((counts.data - 1.0) / 2.0))
    return counts


def confidence(counts: sp.csr_matrix, dtype=np.float32) -> sp.csr_matrix:
    """The generator's confidence of visit counts: 1 + 2·log1p(count)."""
    m = sp.csr_matrix(counts, dtype=np.float64, copy=True)
    m.data = 1.0 + 2.0 * np.log1p(m.data)
    return m.astype(dtype)


def synthesize(users: int, pois: int, areas: int, topics: int, themes: int = 12, seed: int = 0):
    """Three aligned implicit blocks drawn from one latent population, and held-out POI visits.

    Each user has a Dirichlet taste over themes; each item belongs to a theme and has a
    Zipf-like popularity inside it. A block's interactions draw a theme from the user's
    taste, then an item; repeated draws add up and confidence = 1 + 2·log1p(count). The
    test split is a fresh set of POI draws (TEST_DRAWS per tourism user, same POI themes)
    not seen in training.
    Returns ({party: csr}, test csr over POIs).
    """
    rng = np.random.default_rng(seed)
    taste = rng.dirichlet(np.full(themes, 0.3), size=users)
    cum = np.cumsum(taste, axis=1)

    def draw(item_theme: np.ndarray, user_ids: np.ndarray) -> np.ndarray:
        order = np.argsort(item_theme, kind="stable")
        starts = np.searchsorted(item_theme[order], np.arange(themes))
        sizes = np.bincount(item_theme, minlength=themes)
        u = rng.random(len(user_ids))
        theme = np.minimum((u[:, None] > cum[user_ids]).sum(axis=1), themes - 1)
        empty = sizes[theme] == 0
        theme[empty] = item_theme[0]
        pos = np.floor(sizes[theme] * rng.random(len(user_ids)) ** 2.5).astype(np.int64)
        return order[starts[theme] + pos]

    def block(party: str, n_items: int):
        members = rng.random(users) < SHARE_WITH[party]
        counts = np.where(members, rng.poisson(MEAN_NNZ[party], users) + 1, 0)
        user_ids = np.repeat(np.arange(users), counts)
        item_theme = rng.integers(0, themes, n_items)
        items = draw(item_theme, user_ids)
        m = sp.csr_matrix((np.ones(len(items), np.float32), (user_ids, items)), shape=(users, n_items))
        m.sum_duplicates()
        return confidence(m), members, item_theme

    blocks = {}
    blocks["tourism"], visitors, poi_theme = block("tourism", pois)
    blocks["carrier"], _, _ = block("carrier", areas)
    blocks["internet"], _, _ = block("internet", topics)
    # the same POI themes as the training visits: a tourist's new visits follow the tastes
    # the training visits show (a fresh theme draw here made the window taste-blind)
    test_users = np.repeat(np.flatnonzero(visitors), TEST_DRAWS)
    test_items = draw(poi_theme, test_users)
    test = sp.csr_matrix((np.ones(len(test_items), np.float32), (test_users, test_items)), shape=(users, pois))
    test.sum_duplicates()
    test = test - test.multiply(blocks["tourism"] > 0)
    test.eliminate_zeros()
    return blocks, sp.csr_matrix(test)


def ndcg10(user_factors: np.ndarray, poi_factors: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix,
           max_users: int = 5_000, seed: int = 0) -> float:
    """NDCG@10 of dot-product scores on held-out visits (training.evaluation definitions)."""
    from wenlv.training.evaluation import ndcg_at_k, top_k

    users = np.flatnonzero(np.diff(test.indptr) > 0)
    if len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    scores = np.asarray(user_factors[users], np.float64) @ np.asarray(poi_factors, np.float64).T
    items = np.arange(poi_factors.shape[0])
    recs = top_k(scores, users, items, 10, exclude=train[users])
    t = test[users].tocoo()
    truth = pd.DataFrame({"user": users[t.row], "item": t.col})
    return float(ndcg_at_k(truth, recs.astype({"user": np.int64, "item": np.int64}), 10))


def time_spark_als(blocks: dict, factors: int, iterations: int, regularization: float, seed: int,
                   marginal: bool = True) -> dict:
    """Spark MLlib implicit ALS on the concatenated blocks, in one local[2] session.

    Warmed up as the other two are: one untimed one-iteration fit first (JIT compilation,
    class loading), then the timed fit; with ``marginal``, a timed one-iteration fit after
    it gives the cost of each further iteration. Returns seconds per iteration of the timed
    fit, the one-iteration fit's seconds (or None), and the user and POI factors.
    """
    from pyspark.ml.recommendation import ALS

    from wenlv.spark_jobs.session import get_spark

    matrix = sp.hstack(list(blocks.values()), format="coo")
    frame = pd.DataFrame({"user": matrix.row.astype(np.int32), "item": matrix.col.astype(np.int32),
                          "rating": (matrix.data - 1.0).astype(np.float32)})
    spark = get_spark(master="local[2]", app_name="wenlv-bench-als")

    def als(max_iter: int):
        return ALS(rank=factors, maxIter=max_iter, regParam=regularization, implicitPrefs=True, alpha=1.0,
                   userCol="user", itemCol="item", ratingCol="rating", seed=seed, nonnegative=False,
                   coldStartStrategy="nan", numUserBlocks=4, numItemBlocks=4)

    def timed_fit(max_iter: int):
        start = time.perf_counter()
        model = als(max_iter).fit(df)  # eager: runs every iteration and materialises the factors
        return time.perf_counter() - start, model

    try:
        df = spark.createDataFrame(frame).repartition(4).cache()
        df.count()
        timed_fit(1)  # warm-up, untimed
        seconds, model = timed_fit(iterations)
        one = timed_fit(1)[0] if marginal else None
        users_pd = model.userFactors.toPandas()
        items_pd = model.itemFactors.toPandas()
    finally:
        spark.stop()
    n_users, n_pois = matrix.shape[0], blocks["tourism"].shape[1]
    U = np.zeros((n_users, factors), np.float32)
    U[users_pd["id"].to_numpy()] = np.stack(users_pd["features"].to_numpy())
    V = np.zeros((n_pois, factors), np.float32)
    keep = items_pd["id"].to_numpy() < n_pois
    V[items_pd["id"].to_numpy()[keep]] = np.stack(items_pd["features"].to_numpy()[keep])
    return {"seconds_per_iteration": seconds / iterations, "one_iteration_seconds": one, "U": U, "V": V}


def load_features(features_dir: str):
    from wenlv.training.als_data import load_party_matrices

    tokens, parts = load_party_matrices(features_dir)
    blocks = {p: b.matrix for p, b in parts.items()}
    test_frame = pd.read_parquet(os.path.join(features_dir, "tourism", "test_interactions.parquet"))
    row = pd.Series(np.arange(len(tokens)), index=tokens)
    col = pd.Series(np.arange(len(parts["tourism"].items)), index=parts["tourism"].items)
    known = test_frame["token"].isin(row.index) & test_frame["poi_id"].isin(col.index)
    test = sp.csr_matrix((np.ones(int(known.sum()), np.float32),
                          (row[test_frame.loc[known, "token"]].to_numpy(), col[test_frame.loc[known, "poi_id"]].to_numpy())),
                         shape=blocks["tourism"].shape)
    return blocks, test


def run(scale: str = "small", factors: int = 64, iterations: int = 5, regularization: float = 0.05,
        seed: int = 0, features: str | None = None, spark: bool = True, fixed_point_bits: int = 32,
        threads: int = 1, spark_marginal: bool = True) -> dict:
    from wenlv.training.central_als import CentralALS
    from wenlv.training.federated_als import FederatedALS, init_factors

    if features:
        blocks, test = load_features(features)
        shape = {"source": features}
    else:
        blocks, test = synthesize(**SCALES[scale], seed=seed)
        shape = {"source": f"synthetic:{scale}", **SCALES[scale]}
    n_users = blocks["tourism"].shape[0]
    shape.update(users=n_users, items={p: m.shape[1] for p, m in blocks.items()},
                 nnz={p: int(m.nnz) for p, m in blocks.items()}, test_pairs=int(test.nnz))
    print(f"[bench als] data {json.dumps(shape)}", file=sys.stderr, flush=True)
    init = init_factors(n_users, {p: m.shape[1] for p, m in blocks.items()}, factors, seed, np.float32)
    params = dict(factors=factors, regularization=regularization, iterations=iterations, dtype=np.float32,
                  random_state=seed)

    load_before = os.getloadavg()
    # Warm-up, the same for all three: one full-size iteration of each, untimed (Spark's in its
    # own session, time_spark_als), so that JIT and numba compilation (cached on disk) and the
    # first touch of fresh memory stay out of the timed fits. First touch is slow on these VMs
    # (≈ 2 s per GB: the host backs guest memory lazily), and the federated fit's work buffers
    # (≈ 1 GB at medium) would otherwise add ≈ 0.8 s to each of 3 timed iterations; a trainer
    # that runs fit after fit pays it once.
    warm = dict(params, iterations=1)
    CentralALS(num_threads=threads, **warm).fit(blocks, init=init)
    FederatedALS(fixed_point_bits=fixed_point_bits, show_progress=False, num_threads=threads, **warm).fit(
        blocks, init=init)
    marks = {"implicit": [], "federated": []}  # end of each iteration (callbacks)
    start, cpu = time.perf_counter(), time.process_time()
    central = CentralALS(num_threads=threads, **params).fit(
        blocks, init=init, callback=lambda *_: marks["implicit"].append(time.perf_counter()))
    t_central = (time.perf_counter() - start) / iterations
    cpu_central = (time.process_time() - cpu) / iterations
    print(f"[bench als] implicit {t_central:.3f} s/iteration", file=sys.stderr, flush=True)

    start, cpu = time.perf_counter(), time.process_time()
    fed = FederatedALS(fixed_point_bits=fixed_point_bits, show_progress=True, num_threads=threads,
                       **params).fit(blocks, init=init, callback=lambda *_: marks["federated"].append(time.perf_counter()))
    t_fed = (time.perf_counter() - start) / iterations
    cpu_fed = (time.process_time() - cpu) / iterations
    print(f"[bench als] federated {t_fed:.3f} s/iteration", file=sys.stderr, flush=True)
    # after the first: the cost of one more iteration, without the fit's one-off work (the
    # federated fit allocates ≈ 1 GB of masking and CG buffers at medium; implicit transposes)
    steady = {name: float(np.median(np.diff(m))) if len(m) > 1 else float("nan") for name, m in marks.items()}

    # Equality: the timed float32 fits drift apart over iterations (implicit's CG ALS is chaotic:
    # see training/README.md), so one iteration of each from the same state, in float64 as
    # `wenlv train` checks it, is what shows the protocol computes implicit's update.
    check = dict(params, iterations=1, dtype=np.float64)
    init64 = (init[0].astype(np.float64), {p: v.astype(np.float64) for p, v in init[1].items()})
    one_fed = FederatedALS(fixed_point_bits=fixed_point_bits, show_progress=False, num_threads=threads,
                           **check).fit(blocks, init=init64)
    one_central = CentralALS(num_threads=threads, **check).fit(blocks, init=init64)
    one_iteration_diff = max([float(np.max(np.abs(one_fed.user_factors - one_central.user_factors)))] +
                             [float(np.max(np.abs(one_fed.item_factors[p] - one_central.item_factors[p])))
                              for p in blocks])

    train = blocks["tourism"]
    result = {
        "benchmark": "als", "data": shape, "cpu_count": os.cpu_count(),
        "load_average_before_after": [list(load_before), list(os.getloadavg())],
        "params": {"factors": factors, "iterations": iterations, "regularization": regularization, "alpha": 1.0,
                   "cg_steps": 3, "fixed_point_bits": fixed_point_bits, "dtype": "float32",
                   "threads": {"federated": threads, "implicit": threads, "spark": "local[2]"}},
        "seconds_per_iteration": {"federated": t_fed, "implicit": t_central},
        # median seconds of iterations 2..n (fit wall time minus the fit's one-off work)
        "steady_seconds_per_iteration": steady,
        # CPU seconds of this process (all threads): less sensitive than wall time to other
        # work on a shared machine (not available for Spark, whose work runs in a JVM)
        "cpu_seconds_per_iteration": {"federated": cpu_fed, "implicit": cpu_central},
        "ndcg@10": {"federated": ndcg10(fed.user_factors, fed.item_factors["tourism"], train, test, seed=seed),
                    "implicit": ndcg10(central.user_factors, central.item_factors["tourism"], train, test, seed=seed)},
        "federated_vs_implicit_one_iteration_float64_max_abs_diff": one_iteration_diff,
        "federated_vs_implicit_max_abs_diff": {
            "user_factors": float(np.max(np.abs(fed.user_factors - central.user_factors))),
            "item_factors": float(max(np.max(np.abs(fed.item_factors[p] - central.item_factors[p])) for p in blocks)),
        },
        "audit_entries": len(fed.audit_log),
        # the same federated run, split: coordinator work, each party's work, and the wall time
        # it would take with each party on its own machine (network excluded; an estimate)
        "federated_breakdown_seconds_per_iteration": {
            "coordinator": fed.timings_["coordinator_seconds"] / iterations,
            "parties": {p: s / iterations for p, s in fed.timings_["party_seconds"].items()},
            "separate_machines_estimate": fed.timings_["separate_machines_seconds"] / iterations,
            # CPU critical path: coordinator CPU + the busiest party's CPU call after call
            "separate_machines_cpu": fed.timings_.get("separate_machines_cpu_seconds", float("nan")) / iterations,
            # what each party sends per iteration (masked vectors; network time is not in the figures)
            "bytes_sent_per_party": sum(e["size"] for e in fed.audit_log.entries if e["kind"] == "masked")
            / len(fed.parties_) / iterations,
        },
        "ratios": {"federated_over_implicit": t_fed / t_central,
                   "federated_over_implicit_cpu": cpu_fed / cpu_central,
                   "federated_over_implicit_steady": steady["federated"] / steady["implicit"]},
    }
    result["ndcg@10_abs_diff_federated_implicit"] = abs(result["ndcg@10"]["federated"] - result["ndcg@10"]["implicit"])
    if spark:
        spark_run = time_spark_als(blocks, factors, iterations, regularization, seed,
                                   marginal=spark_marginal and iterations > 1)
        t_spark = spark_run["seconds_per_iteration"]
        print(f"[bench als] spark {t_spark:.3f} s/iteration", file=sys.stderr, flush=True)
        result["seconds_per_iteration"]["spark_mllib"] = t_spark
        result["ndcg@10"]["spark_mllib"] = ndcg10(spark_run["U"], spark_run["V"], train, test, seed=seed)
        result["ratios"]["spark_over_federated"] = t_spark / t_fed
        if spark_run["one_iteration_seconds"] is not None:
            # Spark's fit is mostly fixed cost (blocking, shuffles, job start-up): a one-iteration
            # fit in the same warm session gives its cost per additional iteration, beside `steady`
            marginal = (t_spark * iterations - spark_run["one_iteration_seconds"]) / (iterations - 1)
            result["steady_seconds_per_iteration"]["spark_mllib"] = marginal
            result["ratios"]["spark_over_federated_steady"] = marginal / steady["federated"]
    result["goals"] = {"federated_le_1.5x_implicit": t_fed <= 1.5 * t_central}
    if spark:
        result["goals"]["federated_10x_faster_than_spark"] = result["ratios"]["spark_over_federated"] >= 10
    return result


def register(bench_sub) -> None:
    p = bench_sub.add_parser("als", help="federated masked ALS vs implicit ALS vs Spark MLlib ALS (s/iteration, NDCG@10)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (default: indented)")
    p.add_argument("--scale", choices=tuple(SCALES), default="small", help="generator scale of the data trained on")
    p.add_argument("--features", default=None, help="feature-block folder from `wenlv features` (instead of synthetic)")
    p.add_argument("--factors", type=int, default=64, help="latent factors")
    p.add_argument("--iterations", type=int, default=5, help="ALS iterations timed")
    p.add_argument("--regularization", type=float, default=0.05, help="ALS L2 regularisation")
    p.add_argument("--seed", type=int, default=0, help="generator and initialisation seed")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for implicit and for the federated parties alike (default 1)")
    p.add_argument("--no-spark", action="store_true", help="skip the Spark MLlib peer")
    p.add_argument("--no-spark-marginal", action="store_true",
                   help="skip the extra one-iteration Spark fit that gives Spark's cost per additional iteration")
    p.set_defaults(func=main)


def main(args) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    result = run(scale=args.scale, factors=args.factors, iterations=args.iterations,
                 regularization=args.regularization, seed=args.seed, features=args.features,
                 spark=not args.no_spark, threads=args.threads, spark_marginal=not args.no_spark_marginal)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0
