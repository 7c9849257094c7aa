"""Validation-only probes behind docs/quality.md's "tried and not added" figures (ad hoc, not part of the product).

    python scripts/quality_probes.py backtest|own_knn|recency [--source DIR] [--cities Toro,Osak,Glas,Edin,Melb]

backtest: the pick rules compared without the test window — choose on the earlier
validation window (fit2 → val2), score on the later one (fit → val). own_knn: own visits
over the standardised item-kNN instead of popularity. recency: own visits decayed by
age for short and long τ. Every number is a pooled validation NDCG@10; nothing reads the
test window.
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from wenlv.bench.quality import CITIES, DEFAULT_SOURCE, flickr_dataset
from wenlv.training import model_selection as ms
from wenlv.training import recommenders as rec

K = 10


def _ndcg(build, data) -> tuple[float, list[float]]:
    values = [ms._score(build(w), w, K) for w in data.windows]
    return round(ms._metrics(values, K)[f"ndcg@{K}"], 4), [round(float(v["ndcg"].mean()), 4) for v in values]


def own_knn(data) -> None:
    n = data.n_targets

    def build(w, weight, neighbours, similarity):
        knn = rec.item_knn(w.matrix, n, similarity, neighbours)

        def score_rows(rows, X):
            own = sp.csr_matrix(X[rows][:, :n], dtype=np.float64)
            own.data = np.log1p(own.data)
            return weight * own.toarray() + rec._standardise(knn.scores(rows, X))
        return rec.Fitted("own_knn", n, score_rows)

    for weight in ms.OWN_VISIT_WEIGHTS:
        print("  personal_popularity", weight, _ndcg(lambda w: rec.personal_popularity(w.matrix, n, weight), data))
    for similarity in ("bm25", "cosine"):
        for neighbours in (10, 50):
            for weight in ms.OWN_VISIT_WEIGHTS:
                print("  own_knn", similarity, neighbours, weight,
                      _ndcg(lambda w: build(w, weight, neighbours, similarity), data))


def recency(data) -> None:
    for days in (None, 30.0, 180.0, 365.0, 1000.0, 3000.0):
        for weight in (3.0, 10.0):
            params = {"weight": weight, "recency_days": days}
            print("  tau", days, "w", weight,
                  _ndcg(lambda w: ms._fit("personal_popularity", params, w, data.n_targets, 0), data))


def backtest(data, totals: dict) -> None:
    peers = ms.tune_peers(data)
    later, earlier = data.windows
    fitted = [{n: ms._fit(kind, p, w, data.n_targets, 0) for n, (kind, p, _) in peers.items()} for w in (earlier, later)]
    first = {n: ms._score(fitted[0][n], earlier, K) for n in peers}
    order = sorted(peers, key=lambda n: (first[n]["ndcg"].mean(), first[n]["recall"].mean()), reverse=True)
    cands = {n: ([(n, 1.0)], [f[n] for f in fitted]) for n in peers}
    for other in order[1:]:
        for w in ms.BLEND_WEIGHTS:
            cands[f"{order[0]}+{other}@{w}"] = ([(order[0], w), (other, 1 - w)],
                                                [rec.blend(f[order[0]], f[other], w) for f in fitted])
    top = order[:ms.BLEND_TOP]
    for ws in ms.simplex(ms.BLEND_TOP):
        cands["+".join(top) + "@" + "/".join(f"{w:g}" for w in ws)] = (
            list(zip(top, ws)), [rec.blend_many([f[n] for n in top], ws) for f in fitted])
    E = {n: ms._score(m[1][0], earlier, K) for n, m in cands.items()}
    L = {n: ms._score(m[1][1], later, K) for n, m in cands.items()}
    size = {n: len(c[0]) for n, c in cands.items()}

    def key(n):
        return E[n]["ndcg"].mean(), E[n]["recall"].mean()

    best = max(cands, key=key)

    def se(n):
        d = E[best]["ndcg"] - E[n]["ndcg"]
        return d.std(ddof=1) / np.sqrt(len(d))

    half = np.random.default_rng(0).random(len(E[best]["ndcg"])) < 0.5
    halves = None
    for s in sorted(set(size.values())):
        challenger = max((n for n in cands if size[n] == s), key=key)
        if halves is None or (key(challenger) > key(halves) and all(
                E[challenger]["ndcg"][h].mean() > E[halves]["ndcg"][h].mean() for h in (half, ~half))):
            halves = challenger
    within = [n for n in cands if E[n]["ndcg"].mean() >= E[best]["ndcg"].mean() - se(n)]
    rules = {"best pooled": best, "both halves": halves,
             "one standard error": min(within, key=lambda n: (size[n], -E[n]["ndcg"].mean()))}
    for rule, n in rules.items():
        nd, rc = L[n]["ndcg"].mean(), L[n]["recall"].mean()
        others = [p for p in peers if not (size[n] == 1 and p == n)]
        beaten_by = [p for p in others if L[p]["ndcg"].mean() >= nd or L[p]["recall"].mean() >= rc]
        print(f"  {rule:18s} {n:55s} later window NDCG {nd:.4f} recall {rc:.4f}; not beaten by {beaten_by}")
        t = totals.setdefault(rule, [0, 0.0])
        t[0] += not beaten_by
        t[1] += nd


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("probe", choices=("backtest", "own_knn", "recency"))
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE)
    p.add_argument("--cities", default=",".join(CITIES))
    args = p.parse_args()
    logging.disable(logging.INFO)
    totals: dict = {}
    for city in args.cities.split(","):
        print(city)
        data = flickr_dataset(city, args.source)
        if args.probe == "backtest":
            backtest(data, totals)
        else:
            {"own_knn": own_knn, "recency": recency}[args.probe](data)
    if totals:
        print({rule: {"cities with the goal": t[0], "summed later-window NDCG": round(t[1], 3)} for rule, t in totals.items()})


if __name__ == "__main__":
    main()
