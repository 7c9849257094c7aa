"""`wenlv bench quality`: the tuned champion against strong peers, Flickr cities and `small`.

Peers, all tuned on the validation window of the same run (training.model_selection):
popularity, personal popularity (the user's own visits over popularity; only where
revisits are ranked, i.e. the Flickr cities — at `small` seen POIs are excluded, where it
would be popularity), item-kNN (implicit's Cosine and BM25 recommenders), EASE (closed form, λ on
validation), BPR (implicit, Optuna), ALS (implicit, Optuna over factors, regularisation,
alpha, weighting, iterations). The champion is chosen on validation only — a peer, a
blend of the best peer with another, or a three-way blend of the three best (weights on a
simplex grid), a larger blend only if it wins in every validation window — and every
model is then refitted on the whole training window and scored once on the test window:
NDCG@10 and recall@10 with 95% intervals over users, and the champion's paired
difference against each peer.

Data:
* Flickr cities (Toro, Osak, Glas, Edin, Melb; Lim et al., IJCAI 2015): visits in time
  order; the last 20% of time is the test window, the last 20% of the rest the validation
  window; every POI is ranked (a revisit counts), users must appear before the window.
* `small`: the synthetic three-block data of `bench als` (50k users; POIs | carrier areas |
  internet topics; every model sees all blocks and ranks POIs). Its test visits are two
  fresh draws per tourist minus the POIs already visited; the validation window is cut
  the same way from the training visits of 8,000 sampled tourists (two visits drawn by
  count, kept as truth where they are new: `hold_out_visits`; no time axis in that
  generator), and seen POIs are excluded from rankings.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

CITIES = ("Toro", "Osak", "Glas", "Edin", "Melb")
DATASETS = CITIES + ("small",)
DEFAULT_SOURCE = Path("../shared/data/flickr")
VALIDATION_USERS_SMALL = 8000  # tourists sampled for validation at `small` (its test window keeps every user)


def register(bench_sub) -> None:
    p = bench_sub.add_parser("quality", help="tuned champion vs popularity, personal popularity, item-kNN, EASE, "
                                             "BPR, ALS (NDCG/recall@10)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (default: indented)")
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {', '.join(DATASETS)}")
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="Flickr folder holding visits/ and pois/")
    p.add_argument("--als-trials", type=int, default=20, help="Optuna trials of the ALS search per dataset")
    p.add_argument("--bpr-trials", type=int, default=8, help="Optuna trials of the BPR search per dataset")
    p.add_argument("--small-trials", type=int, default=8, help="ALS trials at the `small` scale (slower fits)")
    p.add_argument("--seed", type=int, default=0, help="seed of the samplers, fits and the synthetic data")
    p.add_argument("--tracking-uri", default=None,
                   help="log every search as a parent MLflow run with nested trial runs there (default: not logged)")
    p.add_argument("--chart", type=Path, default=None, help="also draw the result as a PNG here")
    p.set_defaults(func=main)


# ---------------------------------------------------------------- datasets
def _time_split(visits: pd.DataFrame, fraction: float):
    t = pd.to_datetime(visits["arrived_at"])
    cut = t.quantile(1 - fraction)
    return visits[t < cut], visits[t >= cut]


def _counts(pairs: pd.DataFrame, users: pd.Index, items: pd.Index) -> sp.csr_matrix:
    pairs = pairs[pairs["visitor_id"].isin(users) & pairs["poi_id"].isin(items)]
    r, c = users.get_indexer(pairs["visitor_id"]), items.get_indexer(pairs["poi_id"])
    m = sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=(len(users), len(items)))
    m.sum_duplicates()
    return m


def flickr_dataset(city: str, source: Path, fraction: float = 0.2):
    from wenlv.features.flickr import build
    from wenlv.training.model_selection import Dataset, Window

    visits = build(city, source)[0]["visits"][["visitor_id", "poi_id", "arrived_at"]]
    items = pd.Index(np.sort(visits["poi_id"].unique()))
    train, test = _time_split(visits, fraction)
    fit, val = _time_split(train, fraction)
    fit2, val2 = _time_split(fit, fraction)  # an earlier validation window: twice the users to choose on

    def window(history, future):
        users = pd.Index(np.sort(history["visitor_id"].unique()))
        m = _counts(history, users, items)
        truth = _counts(future, users, items)
        truth.data[:] = 1.0
        seen = pd.to_datetime(history["arrived_at"])
        ages = (seen.max() - seen).dt.total_seconds().to_numpy() / 86400.0  # from the history's end: no future read
        visits = (users.get_indexer(history["visitor_id"]), items.get_indexer(history["poi_id"]), ages)
        return Window(matrix=m, truth=truth, exclude=None, visits=visits)

    return Dataset(city, len(items), validation=window(fit, val), test=window(train, test),
                   extra_validation=(window(fit2, val2),))


def hold_out_visits(counts: sp.csr_matrix, users: np.ndarray, draws: int, rng) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Hold out visits of `users` the way the synthetic test window arises → (kept counts, truth).

    The generator's test window is `draws` fresh visits per tourist from the distribution
    its training visits come from, minus the POIs the tourist already visited. A tourist's
    training visits are exchangeable draws of that distribution, so `draws` of them picked
    at random (a POI visited three times is three times as likely as one visited once),
    kept as truth only where none of the tourist's other visits reaches that POI, is the
    same window for a tourist with that many fewer visits: new POIs only, skewed to popular
    POIs as the test is. Every user keeps at least one visit (as every test user has one).
    """
    counts = sp.csr_matrix(counts, dtype=np.float64)
    heldout = sp.lil_matrix(counts.shape, dtype=np.float64)
    truth = sp.lil_matrix(counts.shape, dtype=np.float64)
    for u in users:
        lo, hi = counts.indptr[u], counts.indptr[u + 1]
        visits = np.repeat(counts.indices[lo:hi], counts.data[lo:hi].astype(np.int64))
        take = min(draws, len(visits) - 1)
        if take <= 0:
            continue
        picked = np.zeros(len(visits), dtype=bool)
        picked[rng.choice(len(visits), size=take, replace=False)] = True
        items, n = np.unique(visits[picked], return_counts=True)
        heldout[u, items] = n
        new = np.setdiff1d(items, visits[~picked])
        truth[u, new] = 1.0
    kept = counts - sp.csr_matrix(heldout)
    kept.eliminate_zeros()
    return sp.csr_matrix(kept), sp.csr_matrix(truth)


def small_dataset(seed: int = 0):
    """`bench als`'s `small` data; validation held out from training as its test window arises."""
    from wenlv.bench.als import SCALES, TEST_DRAWS, confidence, synthesize, visit_counts
    from wenlv.training.model_selection import Dataset, Window

    blocks, test = synthesize(**SCALES["small"], seed=seed)
    tourism = blocks["tourism"].tocsr()
    rng = np.random.default_rng(seed + 1)
    tourists = np.flatnonzero(np.diff(tourism.indptr) > 0)
    users = np.sort(rng.choice(tourists, size=min(VALIDATION_USERS_SMALL, len(tourists)), replace=False))
    kept, held = hold_out_visits(visit_counts(tourism), users, TEST_DRAWS, rng)
    fit_tourism = confidence(kept, tourism.dtype)
    full = sp.hstack([tourism, blocks["carrier"], blocks["internet"]], format="csr")
    fit = sp.hstack([fit_tourism, blocks["carrier"], blocks["internet"]], format="csr")
    return Dataset("small", tourism.shape[1],
                   validation=Window(matrix=fit, truth=held, exclude=fit_tourism),
                   test=Window(matrix=full, truth=test, exclude=tourism))


# ---------------------------------------------------------------- the run
def run(datasets=DATASETS, source: Path = DEFAULT_SOURCE, als_trials: int = 20, bpr_trials: int = 8,
        small_trials: int = 8, seed: int = 0, tracking_uri: str | None = None) -> dict:
    from wenlv.training.model_selection import evaluate

    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise WenlvError(f"--datasets: unknown {unknown}; known: {', '.join(DATASETS)}")
    out = {"bench": "quality", "k": 10, "load_before": os.getloadavg(), "datasets": {}}
    started = time.perf_counter()
    for name in datasets:
        t0 = time.perf_counter()
        print(f"quality: {name} …", file=sys.stderr, flush=True)
        data = small_dataset(seed) if name == "small" else flickr_dataset(name, source)
        trials = small_trials if name == "small" else als_trials
        out["datasets"][name] = evaluate(data, 10, trials, bpr_trials, seed, tracking_uri,
                                         log_runs=tracking_uri is not None)
        champ = out["datasets"][name]["champion"]
        print(f"quality: {name}: champion {champ['model']} NDCG@10 {champ['ndcg@10']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["load_after"] = os.getloadavg()
    out["goal_met"] = {n: d["champion"]["beats_every_peer"] for n, d in out["datasets"].items()}
    return out


def main(args) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    datasets = tuple(d.strip() for d in args.datasets.split(",") if d.strip())
    result = run(datasets, args.source, args.als_trials, args.bpr_trials, args.small_trials, args.seed,
                 args.tracking_uri)
    if args.chart:
        from wenlv.bench.charts import draw

        draw(result, args.chart)
    print(json.dumps(result, default=float) if args.json else json.dumps(result, indent=2, default=float))
    return 0
