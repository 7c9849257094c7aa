"""F1 and pairs-F1 as the authors compute them, per-query figures by query length, the exact
expected Random F1, and the published figures with the query subset they plausibly cover."""
from __future__ import annotations

import numpy as np


CITIES = ("Edin", "Glas", "Melb", "Osak", "Toro")
PUBLISHED_BEST_F1 = {"Edin": 0.701, "Glas": 0.801, "Melb": 0.639, "Osak": 0.745, "Toro": 0.754}
PUBLISHED = {  # F1 from the table in ../shared/data/README.md (CIKM 2016)
    "Random": {"Edin": 0.570, "Glas": 0.632, "Melb": 0.558, "Osak": 0.621, "Toro": 0.621},
    "PoiPopularity": {"Edin": 0.701, "Glas": 0.745, "Melb": 0.620, "Osak": 0.663, "Toro": 0.678},
    "PersTour": {"Edin": 0.656, "Glas": 0.801, "Melb": 0.483, "Osak": 0.686, "Toro": 0.720},
    "PoiRank": {"Edin": 0.700, "Glas": 0.768, "Melb": 0.637, "Osak": 0.745, "Toro": 0.754},
    "Rank+MarkovPath": {"Edin": 0.697, "Glas": 0.762, "Melb": 0.639, "Osak": 0.732, "Toro": 0.751},
}


def f1(actual: list, recommended: list) -> float:
    """F1 over POIs; each actual occurrence matches at most one recommended POI."""
    if not actual or not recommended:
        raise ValueError("F1 needs two non-empty lists")
    matched = [False] * len(actual)
    for poi in recommended:
        for j, a in enumerate(actual):
            if not matched[j] and a == poi:
                matched[j] = True
                break
    hits = sum(matched)
    if hits == 0:
        return 0.0
    recall, precision = hits / len(actual), hits / len(recommended)
    return 2 * precision * recall / (precision + recall)


def pairs_f1(actual: list, recommended: list) -> float:
    """F1 over ordered POI pairs: a recommended pair counts when the real trip has it in that order."""
    if len(actual) != len(set(actual)):
        raise ValueError("pairs-F1 needs a trajectory without repeated POIs")
    n, nr = len(actual), len(recommended)
    order = {p: i for i, p in enumerate(actual)}
    correct = sum(1 for i in range(nr) for j in range(i + 1, nr)
                  if recommended[i] in order and recommended[j] in order and recommended[i] != recommended[j]
                  and order[recommended[i]] < order[recommended[j]])
    if correct == 0:
        return 0.0
    precision, recall = correct / (nr * (nr - 1) / 2), correct / (n * (n - 1) / 2)
    return 2 * precision * recall / (precision + recall)


def mean_up_to_length(by_len: dict, key: str) -> tuple[list[int], list[float]]:
    """From a by_length table (keys may be JSON strings): for each length L, the mean of `key`
    over the queries of at most L POIs."""
    rows = sorted((int(n), v) for n, v in by_len.items())
    lengths, means, total, count = [], [], 0.0, 0
    for n, v in rows:
        total, count = total + v["queries"] * v[key], count + v["queries"]
        lengths.append(n)
        means.append(total / count)
    return lengths, means


def expected_random_f1(actual: list, cands: np.ndarray) -> float:
    """Exact expected F1 of the Random baseline: start and end given, the len(actual) - 2 other
    stops drawn without replacement from `cands`. Both lists have the same length, so F1 is the
    share of matched POIs, and each actual stop among the candidates is drawn with probability
    (len(actual) - 2) / len(cands). The published Random is one draw of this."""
    hits = int(np.isin(cands, actual[1:-1]).sum())
    return (2 + (len(actual) - 2) * hits / len(cands)) / len(actual)


SUBSET_TOLERANCE = 0.0015  # published figures have 3 decimals (±.0005), plus tie-order noise


def published_subset(by_len: dict, published_popularity: float) -> dict:
    """The queries the published means plausibly cover, located by a baseline only: the longest
    prefix of query lengths (queries of at most L POIs) whose popularity F1 is within
    SUBSET_TOLERANCE of the published PoiPopularity, else the closest one. All queries when
    popularity already matches on all of them. Our model's scores play no part in the choice."""
    lengths, pop = mean_up_to_length(by_len, "f1_popularity")
    close = [n for n, v in zip(lengths, pop) if abs(v - published_popularity) <= SUBSET_TOLERANCE]
    limit = max(close) if close else lengths[int(np.argmin([abs(v - published_popularity) for v in pop]))]
    at = lengths.index(limit)
    keys = [k for k in next(iter(by_len.values())) if k != "queries"]
    return {"max_query_length": limit, "all_queries": limit == lengths[-1],
            "queries": sum(v["queries"] for n, v in by_len.items() if int(n) <= limit),
            **{k: round(mean_up_to_length(by_len, k)[1][at], 4) for k in keys}}


def by_length(lengths: list[int], **per_query: list[float]) -> dict:
    """Per-query figures averaged by query length (number of POIs), so that the mean over any
    subset of lengths (the published averages leave out the queries their ILP baseline did not
    solve) can be recomputed from the JSON; 6 decimals, so recombined means keep 4."""
    lengths_arr, columns = np.asarray(lengths), {k: np.asarray(v) for k, v in per_query.items()}
    out = {}
    for n in sorted(set(lengths)):
        sel = lengths_arr == n
        out[int(n)] = {"queries": int(sel.sum()), **{k: round(float(v[sel].mean()), 6) for k, v in columns.items()}}
    return out
