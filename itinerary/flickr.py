"""Trajectory recommendation on the Flickr photo trails, by the CIKM 2016 protocol.

Protocol (Chen, Ong, Xie, "Learning Points and Routes to Recommend Trajectories", CIKM
2016, public code computationalmedia/tour-cikm16): every trajectory with ≥ 3 POIs is
held out in turn; everything learned comes from all OTHER trajectories (short ones
included); the query is (start POI, end POI, number of POIs); queries whose start or end
never occurs in the training trajectories are skipped; F1 compares the recommended and
the real POI lists (start and end included), pairs-F1 their visiting order.
The authors' published means are over the queries that PersTour (an ILP that could time
out) also answered (parse_results.ipynb: keys of ijcai-CITY.pkl ∩ rank-CITY.pkl); that
subset is in binary result files we cannot read, so we average over all queries. Our
popularity baseline reproduces their PoiPopularity in Edin/Glas/Osak/Toro to 0.001, not
in Melbourne (.607 vs .620): there the published subset is evidently smaller. Results are
also kept by query length (by_length) with the exact expected Random F1, so that the
baselines can locate that subset (in Melbourne: the queries of at most about 7 POIs).

Our recommender: logistic POI rankers (pointwise and pairwise, averaged) on query features computed from training counts
(popularity, visit counts, co-occurrence with the start and end POI, transitions out of
the start and into the end, distances, categories) — or the authors' PoiRank feature set,
or both side by side (`Featurizer`) — then the best visiting order of the
chosen POIs under a smoothed first-order transition model (exact DP over subsets). With
markov_alpha < 1 the set and order are chosen jointly instead, as the authors' Rank+MarkovPath:
the simple path maximising alpha * log P(rank) + (1 - alpha) * log P(transition) (exact A*).
Counts are held as totals from which the held-out trajectory is subtracted, which makes
leave-one-out exact and cheap; the model is refitted for every held-out trajectory on
features computed without it (and without each training query's own trajectory).
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
from scipy.optimize import minimize

from wenlv.itinerary.flickr_options import FEATURE_SETS
from wenlv.errors import DataValidationError

CITIES = ("Edin", "Glas", "Melb", "Osak", "Toro")
PUBLISHED_BEST_F1 = {"Edin": 0.701, "Glas": 0.801, "Melb": 0.639, "Osak": 0.745, "Toro": 0.754}
PUBLISHED = {  # F1 from the table in ../shared/data/README.md (CIKM 2016)
    "Random": {"Edin": 0.570, "Glas": 0.632, "Melb": 0.558, "Osak": 0.621, "Toro": 0.621},
    "PoiPopularity": {"Edin": 0.701, "Glas": 0.745, "Melb": 0.620, "Osak": 0.663, "Toro": 0.678},
    "PersTour": {"Edin": 0.656, "Glas": 0.801, "Melb": 0.483, "Osak": 0.686, "Toro": 0.720},
    "PoiRank": {"Edin": 0.700, "Glas": 0.768, "Melb": 0.637, "Osak": 0.745, "Toro": 0.754},
    "Rank+MarkovPath": {"Edin": 0.697, "Glas": 0.762, "Melb": 0.639, "Osak": 0.732, "Toro": 0.751},
}


# ---------------------------------------------------------------- metrics (as the authors compute them)
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


# ---------------------------------------------------------------- data
@dataclass
class CityData:
    city: str
    poi_ids: np.ndarray  # original ids; index = position
    category: np.ndarray  # int code per POI
    lat: np.ndarray
    lon: np.ndarray
    trajs: list[list[int]]  # POI positions, in visiting order
    users: list[str]
    durations: list[list[float]]  # seconds per visit
    dropped: dict


def load_trajectories(data_dir: str | Path, city: str) -> CityData:
    """The authors' trajectory files: trajectories/traj-CITY.csv and trajectories/poi-CITY.csv."""
    base = Path(data_dir) / "trajectories"
    poi_file, traj_file = base / f"poi-{city}.csv", base / f"traj-{city}.csv"
    for f in (poi_file, traj_file):
        if not f.exists():
            raise DataValidationError(str(f), None, None, "file not found")
    with poi_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [int(r["poiID"]) for r in rows]
    index = {p: i for i, p in enumerate(ids)}
    cats = sorted({r["poiCat"] for r in rows})
    trips: dict[int, list] = {}
    with traj_file.open(newline="") as fh:
        for n, r in enumerate(csv.DictReader(fh), start=2):
            poi = int(r["poiID"])
            if poi not in index:
                raise DataValidationError(str(traj_file), n, "poiID", f"POI {poi} is not in {poi_file.name}")
            trips.setdefault(int(r["trajID"]), []).append(
                (float(r["startTime"]), index[poi], r["userID"], float(r["poiDuration"])))
    trajs, users, durs = [], [], []
    for tid in sorted(trips):
        visits = sorted(trips[tid], key=lambda v: v[0])
        trajs.append([v[1] for v in visits])
        users.append(visits[0][2])
        durs.append([v[3] for v in visits])
    return CityData(city, np.array(ids), np.array([cats.index(r["poiCat"]) for r in rows]),
                    np.array([float(r["poiLat"]) for r in rows]), np.array([float(r["poiLon"]) for r in rows]),
                    trajs, users, durs, {"rows": 0})


MIN_YEAR_SECONDS, MAX_YEAR_SECONDS = 946684800, 1893456000  # 2000-01-01 .. 2030-01-01


def load_visits(data_dir: str | Path, city: str) -> CityData:
    """The IJCAI'15 visit format: userVisits-CITY*.csv (photos) and POI-CITY.csv.

    A trajectory is one seqID; consecutive photos at the same POI are one visit (arrival =
    first photo, departure = last). Photos with absurd timestamps are dropped and counted.
    """
    base = Path(data_dir)
    visit_files = sorted(base.glob(f"**/userVisits-{city}*.csv"))
    poi_files = sorted(base.glob(f"**/POI-{city}.csv"))
    if not visit_files or not poi_files:
        raise DataValidationError(str(base), None, None, f"need userVisits-{city}*.csv and POI-{city}.csv under it")
    poi_rows = _read_semicolon(poi_files[0])
    ids = [int(r["poiID"]) for r in poi_rows]
    index = {p: i for i, p in enumerate(ids)}
    cat_col = "theme" if "theme" in poi_rows[0] else "poiTheme"
    cats = sorted({r[cat_col] for r in poi_rows})
    photos: dict[int, list] = {}
    dropped = {"bad_time": 0, "unknown_poi": 0}
    for n, r in enumerate(_read_semicolon(visit_files[0]), start=2):
        try:
            t, poi, seq = float(r["dateTaken"]), int(r["poiID"]), int(r["seqID"])
        except (KeyError, ValueError):
            raise DataValidationError(str(visit_files[0]), n, None, "cannot read dateTaken/poiID/seqID") from None
        if not MIN_YEAR_SECONDS <= t <= MAX_YEAR_SECONDS:
            dropped["bad_time"] += 1
            continue
        if poi not in index:
            dropped["unknown_poi"] += 1
            continue
        photos.setdefault(seq, []).append((t, index[poi], r["userID"]))
    trajs, users, durs = [], [], []
    for seq in sorted(photos):
        shots = sorted(photos[seq])
        visits: list[list] = []
        for t, poi, _ in shots:
            if visits and visits[-1][0] == poi:
                visits[-1][2] = t
            else:
                visits.append([poi, t, t])
        trajs.append([v[0] for v in visits])
        users.append(shots[0][2])
        durs.append([v[2] - v[1] for v in visits])
    lat_col, lon_col = "lat", "long" if "long" in poi_rows[0] else "lon"
    return CityData(city, np.array(ids), np.array([cats.index(r[cat_col]) for r in poi_rows]),
                    np.array([float(r[lat_col]) for r in poi_rows]), np.array([float(r[lon_col]) for r in poi_rows]),
                    trajs, users, durs, dropped)


def _read_semicolon(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    rows = list(csv.DictReader(text.splitlines(), delimiter=";", quotechar='"'))
    return [{k.strip(): (unquote(v).strip() if isinstance(v, str) else v) for k, v in r.items()} for r in rows]


# ---------------------------------------------------------------- counts with leave-one-out subtraction
class Counts:
    """Training statistics as totals; `features(q, exclude=t)` removes trajectory t on the fly."""

    def __init__(self, data: CityData, traj_ids: list[int]):
        n = len(data.poi_ids)
        self.data, self.n = data, n
        self.user_poi: dict[tuple[str, int], int] = {}
        self.visits = np.zeros(n)
        self.trans = np.zeros((n, n))
        self.co = np.zeros((n, n))
        self.contains = np.zeros(n)
        self.start_with = np.zeros((n, n))  # [s, p]: trajectories starting at s that contain p
        self.end_with = np.zeros((n, n))  # [e, p]
        self.starts = np.zeros(n)
        self.ends = np.zeros(n)
        self.dur_sum = np.zeros(n)
        self.co3 = np.zeros((n, n, n))  # [a, b, p]: trajectories holding a, b and p
        self.se_with = np.zeros((n, n, n))  # [s, e, p]: trajectories from s to e holding p
        for t in traj_ids:
            self._add(t, +1)
        self.pop = np.zeros(n)
        for (u, p), c in self.user_poi.items():
            if c > 0:
                self.pop[p] += 1

    def _add(self, t: int, sign: int) -> None:
        tr, u = self.data.trajs[t], self.data.users[t]
        s = set(tr)
        for p, d in zip(tr, self.data.durations[t]):
            self.visits[p] += sign
            self.dur_sum[p] += sign * d
        for p in s:
            self.user_poi[(u, p)] = self.user_poi.get((u, p), 0) + sign
            self.contains[p] += sign
        for a, b in zip(tr[:-1], tr[1:]):
            self.trans[a, b] += sign
        idx = np.fromiter(s, dtype=int)
        self.co[np.ix_(idx, idx)] += sign
        self.co3[np.ix_(idx, idx, idx)] += sign
        self.se_with[tr[0], tr[-1], idx] += sign
        self.start_with[tr[0], idx] += sign
        self.end_with[tr[-1], idx] += sign
        self.starts[tr[0]] += sign
        self.ends[tr[-1]] += sign

    def without(self, t: int | None):
        """Context manager-free LOO: returns a function restoring the counts."""
        if t is None:
            return lambda: None
        self._add(t, -1)
        u = self.data.users[t]
        lost = [p for p in set(self.data.trajs[t]) if self.user_poi[(u, p)] == 0]
        self.pop[lost] -= 1

        def restore():
            self._add(t, +1)
            self.pop[lost] += 1

        return restore


N_FEATURES = 18


def distance_km(data: CityData) -> np.ndarray:
    la, lo = np.radians(data.lat), np.radians(data.lon)
    a = np.sin((la[:, None] - la[None]) / 2) ** 2 + np.cos(la[:, None]) * np.cos(la[None]) * np.sin((lo[:, None] - lo[None]) / 2) ** 2
    return 2 * 6371.0088 * np.arcsin(np.sqrt(np.clip(a, 0, 1)))


def query_features(c: Counts, dist: np.ndarray, s: int, e: int, length: int) -> np.ndarray:
    """[n_pois, N_FEATURES] for the query (start s, end e, length)."""
    n = c.n
    cat = c.data.category
    total = max(c.contains.sum(), 1.0)
    p_pop = (c.contains + 1) / (total + n)
    feats = np.column_stack([
        np.log1p(c.pop), np.log1p(c.visits),
        np.log((c.co[s] + p_pop) / (c.contains[s] + 1)),  # P(p | trip has s)
        np.log((c.co[e] + p_pop) / (c.contains[e] + 1)),  # P(p | trip has e)
        np.log((c.start_with[s] + p_pop) / (c.starts[s] + 1)),  # P(p | trip starts at s)
        np.log((c.end_with[e] + p_pop) / (c.ends[e] + 1)),  # P(p | trip ends at e)
        np.log((c.trans[s] + p_pop) / (c.trans[s].sum() + 1)),  # P(next = p | s)
        np.log((c.trans[:, e] + p_pop) / (c.trans[:, e].sum() + 1)),  # P(prev = p | e)
        np.log1p(dist[s]), np.log1p(dist[e]),
        np.log1p(dist[s] + dist[e] - dist[s, e]),  # detour through p
        (cat == cat[s]).astype(float), (cat == cat[e]).astype(float),
        np.log1p(c.dur_sum / np.maximum(c.visits, 1) / 60.0),
        np.full(n, math.log(length)), np.log(p_pop),
        np.log((c.co3[s, e] + p_pop) / (c.co[s, e] + 1)),  # P(p | trip has s and e)
        np.log((c.se_with[s, e] + p_pop) / (c.se_with[s, e, s] + 1)),  # P(p | trip goes from s to e)
    ])
    return feats


def neighbourhoods(data: CityData, k: int = 5, seed: int = 987654321) -> np.ndarray:
    """k-means cluster of each POI on (lon, lat), Euclidean, as the authors' neighbourhoods (5 clusters)."""
    from scipy.cluster.vq import kmeans2

    xy = np.column_stack([data.lon, data.lat])
    _, labels = kmeans2(xy, min(k, len(xy)), seed=seed, minit="++")
    return labels


def _log10_or_small(x: np.ndarray) -> np.ndarray:
    return np.where(x < 1, -10.0, np.log10(np.maximum(x, 1)))  # the authors' LOG_SMALL for 0


def authors_features(c: Counts, dist: np.ndarray, clusters: np.ndarray, s: int, e: int, length: int) -> np.ndarray:
    """The CIKM'16 PoiRank features (rank_markov notebook, section 2.1) for query (s, e, length):
    ±1 one-hot category and neighbourhood, log10 popularity / visits / mean duration, length,
    same category / neighbourhood as s and e (±1), distance to s and e, and the raw
    differences in popularity, visits and mean duration from s and e."""
    cat = c.data.category
    ncat, ncl = int(cat.max()) + 1, int(clusters.max()) + 1
    pm = lambda b: np.where(b, 1.0, -1.0)  # noqa: E731
    dur = c.dur_sum / np.maximum(c.visits, 1)
    return np.column_stack([
        pm(cat[:, None] == np.arange(ncat)[None]), pm(clusters[:, None] == np.arange(ncl)[None]),
        _log10_or_small(c.pop), _log10_or_small(c.visits), _log10_or_small(dur), np.full(c.n, float(length)),
        pm(cat == cat[s]), pm(cat == cat[e]), dist[s], dist[e],
        c.pop - c.pop[s], c.pop - c.pop[e], c.visits - c.visits[s], c.visits - c.visits[e],
        dur - dur[s], dur - dur[e], pm(clusters == clusters[s]), pm(clusters == clusters[e]),
    ])



# The authors' PoiRank, replicated: pairwise ranker on authors_features with their RankSVM
# cost C = 10, i.e. an L2 weight of 1/C on the summed pair losses.
POIRANK = ("pairwise", 0.1)


class Featurizer:
    """Query features of one city by the named set: ours (query_features), the authors' (authors_features), or both."""

    def __init__(self, data: CityData, feature_set: str = "ours"):
        if feature_set not in FEATURE_SETS:
            raise ValueError(f"feature_set must be one of {FEATURE_SETS}, got {feature_set!r}")
        self.kind = "both" if feature_set in ("cv", "ours+poirank", "nested") else feature_set
        self.kind = "authors" if feature_set == "poirank" else self.kind
        self.dist = distance_km(data)
        self.clusters = neighbourhoods(data) if self.kind != "ours" else None

    def __call__(self, c: Counts, s: int, e: int, length: int) -> np.ndarray:
        parts = []
        if self.kind in ("ours", "both"):
            parts.append(query_features(c, self.dist, s, e, length))
        if self.kind in ("authors", "both"):
            parts.append(authors_features(c, self.dist, self.clusters, s, e, length))
        return np.hstack(parts)


class LogisticModel:
    """L2-regularised logistic regression (scipy L-BFGS) on standardised features."""

    def __init__(self, l2: float = 1.0):
        self.l2 = l2

    def fit(self, X: np.ndarray, y: np.ndarray) -> "LogisticModel":
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-9
        Z = np.column_stack([(X - self.mu) / self.sd, np.ones(len(X))])

        def loss(w):
            z = Z @ w
            p = 1 / (1 + np.exp(-z))
            nll = np.sum(np.logaddexp(0, z) - y * z) + 0.5 * self.l2 * np.sum(w[:-1] ** 2)
            grad = Z.T @ (p - y) + self.l2 * np.r_[w[:-1], 0.0]
            return nll, grad

        self.w = minimize(loss, np.zeros(Z.shape[1]), jac=True, method="L-BFGS-B").x
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mu) / self.sd) @ self.w[:-1] + self.w[-1]


class PairwiseModel:
    """RankSVM-like pairwise ranking: logistic loss on (visited − not visited) feature
    differences within each training query (the authors rank with RankSVM)."""

    def __init__(self, l2: float = 10.0):
        self.l2 = l2

    def fit_groups(self, groups: list[tuple[np.ndarray, np.ndarray]]) -> "PairwiseModel":
        X = np.vstack([g[0] for g in groups])
        self.mu, self.sd = X.mean(0), X.std(0) + 1e-9
        diffs = []
        for Xg, yg in groups:
            Z = (Xg - self.mu) / self.sd
            pos, neg = Z[yg > 0], Z[yg == 0]
            if len(pos) and len(neg):
                diffs.append((pos[:, None, :] - neg[None, :, :]).reshape(-1, Z.shape[1]))
        D = np.vstack(diffs)
        # The gradient is (-D.T) @ sigmoid(-z): `-D.T @ v` used to negate all of D at every
        # evaluation (half the fit's time); negated once here, the operands and so the bits
        # are the same. The two work buffers likewise save an allocation per evaluation.
        neg_dt, z, buf = -D.T, np.empty(len(D)), np.empty(len(D))

        def loss(w):
            np.matmul(D, w, out=z)
            nll = np.sum(np.logaddexp(0, np.negative(z, out=buf), out=buf)) + 0.5 * self.l2 * w @ w
            np.divide(1, np.add(1, np.exp(z, out=buf), out=buf), out=buf)
            return nll, neg_dt @ buf + self.l2 * w

        self.w = minimize(loss, np.zeros(D.shape[1]), jac=True, method="L-BFGS-B").x
        return self

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        return ((X - self.mu) / self.sd) @ self.w


# Model choices tuned per half of the queries (inner 5-fold CV), as the authors tune alpha.
GRID = (("pointwise", 1.0), ("pointwise", 10.0), ("pairwise", 1.0), ("pairwise", 10.0), ("pairwise", 100.0))


# The headline model: the mean of the z-scored pointwise and pairwise scores, fixed
# rather than tuned (averaging two differently-biased rankers lowers variance, which
# matters with a few dozen queries per city).
ENSEMBLE = (("pointwise", 1.0), ("pairwise", 10.0))


def ensemble_score(fitted: dict, X: np.ndarray) -> np.ndarray:
    total = np.zeros(len(X))
    for c in ENSEMBLE:
        v = fitted[c].decision_function(X)
        total += (v - v.mean()) / (v.std() + 1e-9)
    return total


def fit_model(choice: tuple[str, float], groups: list[tuple[np.ndarray, np.ndarray]]):
    kind, l2 = choice
    if kind == "pairwise":
        return PairwiseModel(l2).fit_groups(groups)
    return LogisticModel(l2).fit(np.vstack([g[0] for g in groups]), np.concatenate([g[1] for g in groups]))


class FitCache:
    """fit_model on one training set's columns, each (choice, columns) fitted once: for a held-out
    query the picked scorer, the tuned choice and the ensemble often need the same fit, and a
    refit would only repeat the same deterministic computation."""

    def __init__(self, groups: list[tuple[np.ndarray, np.ndarray]]):
        self.groups, self.fits = groups, {}

    def __call__(self, choice: tuple[str, float], cols: slice = slice(None)):
        key = (choice, cols.start, cols.stop, cols.step)
        if key not in self.fits:
            self.fits[key] = fit_model(choice, [(g[0][:, cols], g[1]) for g in self.groups])
        return self.fits[key]


# ---------------------------------------------------------------- route through the chosen POIs
def best_order(s: int, e: int, chosen: list[int], logp: np.ndarray) -> list[int]:
    """Most likely order of `chosen` between s and e under transition log-probabilities (exact DP)."""
    k = len(chosen)
    if k == 0:
        return [s, e]
    if k > 12:  # greedy beyond exact reach
        path, left = [s], list(chosen)
        while left:
            nxt = max(left, key=lambda p: logp[path[-1], p])
            path.append(nxt)
            left.remove(nxt)
        return path + [e]
    full = (1 << k) - 1
    dp = np.full((1 << k, k), -np.inf)
    parent = np.full((1 << k, k), -1, dtype=int)
    for i, p in enumerate(chosen):
        dp[1 << i, i] = logp[s, p]
    for mask in range(1, full + 1):
        for i in range(k):
            if dp[mask, i] == -np.inf or not mask >> i & 1:
                continue
            for j in range(k):
                if mask >> j & 1:
                    continue
                val = dp[mask, i] + logp[chosen[i], chosen[j]]
                nm = mask | 1 << j
                if val > dp[nm, j]:
                    dp[nm, j], parent[nm, j] = val, i
    last = int(np.argmax([dp[full, i] + logp[chosen[i], e] for i in range(k)]))
    order, mask = [], full
    while last != -1:
        order.append(chosen[last])
        prev = parent[mask, last]
        mask ^= 1 << last
        last = prev
    return [s] + order[::-1] + [e]


def transition_logp(c: Counts, smoothing: float = 1.0) -> np.ndarray:
    n = c.n
    prior = (c.contains + 1) / (c.contains.sum() + n)
    probs = (c.trans + smoothing * prior[None, :]) / (c.trans.sum(1, keepdims=True) + smoothing)
    return np.log(probs)


# ---------------------------------------------------------------- Rank+MarkovPath (CIKM'16 section 3-4)
MAX_EXPANSIONS, BEAM = 5000, 64


def best_path(s: int, e: int, length: int, cands: np.ndarray, node: np.ndarray, edge: np.ndarray,
              stats: dict | None = None) -> list[int]:
    """The simple path s -> ... -> e of `length` POIs (intermediates from `cands`, each once)
    maximising the sum of node[p] over intermediates plus edge[a, b] over its steps: exact A*
    whose heuristic is the best walk (repeats allowed) to e with the remaining steps, an upper
    bound. After MAX_EXPANSIONS expansions it falls back to a beam search (width BEAM, same
    heuristic), which is not guaranteed optimal; `stats` counts "exact" and "beam" answers."""
    import heapq

    r0 = length - 2
    if r0 <= 0:
        return [s, e]
    cands = [int(p) for p in cands if p != s and p != e]
    if len(cands) < r0:
        raise ValueError(f"{len(cands)} candidates cannot fill {r0} intermediate stops")
    ci = np.array(cands)
    step = edge[:, ci] + node[ci][None, :]  # [from, to-candidate]
    bound = [edge[:, e].astype(float)]  # bound[r][v]: best walk from v through r more intermediates to e
    for r in range(1, r0 + 1):
        inner = step + bound[r - 1][ci][None, :]
        inner[ci, np.arange(len(ci))] = -np.inf  # no immediate self-loop
        bound.append(inner.max(1))
    stats = {} if stats is None else stats
    heap = [(-bound[r0][s], 0, (s,), 0.0)]
    counter = 1
    while heap and counter <= MAX_EXPANSIONS:
        _, _, path, g = heapq.heappop(heap)
        r = r0 - (len(path) - 1)
        if r < 0:  # complete: its key was its exact value, every other key an upper bound
            stats["exact"] = stats.get("exact", 0) + 1
            return list(path)
        last = path[-1]
        if r == 0:
            g2 = g + edge[last, e]
            heapq.heappush(heap, (-g2, counter, path + (e,), g2))
            counter += 1
            continue
        seen = set(path)
        for j, u in enumerate(cands):
            if u in seen:
                continue
            g2 = g + step[last, j]
            if g2 == -np.inf:
                continue
            heapq.heappush(heap, (-(g2 + bound[r - 1][u]), counter, path + (u,), g2))
            counter += 1
    stats["beam"] = stats.get("beam", 0) + 1
    beam = [((s,), 0.0)]
    for r in range(r0, 0, -1):
        grown = [(g + step[path[-1], j] + bound[r - 1][u], k, path + (u,), g + step[path[-1], j])
                 for k, (path, g) in enumerate(beam) for j, u in enumerate(cands) if u not in path]
        grown.sort(key=lambda x: -x[0])  # stable: ties keep the earlier parent and candidate
        beam = [(path, g) for _, _, path, g in grown[:BEAM]]
    path, _ = max(beam, key=lambda pg: pg[1] + edge[pg[0][-1], e])
    return list(path) + [e]


def log_softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max()
    return z - np.log(np.exp(z).sum())


def rank_markov_path(s: int, e: int, length: int, cands: np.ndarray, score: np.ndarray, logp: np.ndarray,
                     alpha: float, stats: dict | None = None) -> list[int]:
    """Rank+MarkovPath: the simple path maximising alpha * sum log P_rank(p) + (1 - alpha) * sum
    log P(transition), P_rank the softmax of the ranking scores over the candidates. alpha = 1
    takes the top-ranked POIs and orders them by the transitions (best_order)."""
    if alpha >= 1.0:
        return best_order(s, e, top_k(cands, score, length - 2), logp)
    node = np.full(len(logp), -np.inf)
    node[cands] = alpha * log_softmax(score)
    return best_path(s, e, length, cands, node, (1 - alpha) * logp, stats)


# ---------------------------------------------------------------- the evaluation
@dataclass
class CityResult:
    city: str
    queries: int
    f1: float
    pairs_f1: float
    f1_popularity: float
    pairs_f1_popularity: float
    skipped: int
    trajectories: int
    models: list
    loops_not_queried: int = 0
    f1_tuned: float = 0.0
    pairs_f1_tuned: float = 0.0
    f1_std: float = 0.0  # population std over queries, as the authors report mean ± std
    f1_poirank_replica: float | None = None  # POIRANK alone, same queries (ours+poirank only)
    by_length: dict | None = None  # query length -> {queries, f1, pairs_f1, f1_popularity, ...}: subsets' means
    f1_random_expected: float = 0.0  # exact expectation of the Random baseline, same queries


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


def _example(data: CityData, counts: Counts, featurize: Featurizer, t: int):
    """Features and labels of trajectory t as a training query, its own counts removed."""
    restore = counts.without(t)
    try:
        tr = data.trajs[t]
        s, e = tr[0], tr[-1]
        if counts.contains[s] == 0 or counts.contains[e] == 0:
            return None
        mask = counts.contains > 0
        mask[[s, e]] = False
        label = np.zeros(counts.n)
        label[tr[1:-1]] = 1
        return featurize(counts, s, e, len(tr))[mask], label[mask], np.flatnonzero(mask)
    finally:
        restore()


def top_k(cands: np.ndarray, score: np.ndarray, k: int) -> list[int]:
    """The k best-scored candidates, ties in candidate order."""
    return [int(p) for p in cands[np.argsort(-score, kind="stable")][:k]]


def _top(data: CityData, t: int, cands: np.ndarray, score: np.ndarray) -> list[int]:
    """The candidates that fill query t's intermediate stops."""
    return top_k(cands, score, len(data.trajs[t]) - 2)


def choose_model(data: CityData, featurize: Featurizer, short_ids: list[int], tune_ids: list[int],
                 folds: int = 5) -> tuple[tuple[str, float], dict]:
    """Pick the model choice with the best 5-fold F1 on the tuning queries only.

    Statistics come from the short trajectories and the tuning half alone (each query's
    own trajectory removed), so the other half never influences the choice.
    """
    counts = Counts(data, short_ids + tune_ids)
    items = [(t, x) for t in tune_ids if (x := _example(data, counts, featurize, t)) is not None]
    if len(items) < 2 * folds:  # too few to tune: the plain default
        return GRID[0], {}
    scores = {}
    for choice in GRID:
        f1s = []
        for f in range(folds):
            model = fit_model(choice, [x[:2] for i, (_, x) in enumerate(items) if i % folds != f])
            for i, (t, x) in enumerate(items):
                if i % folds == f:
                    tr = data.trajs[t]
                    f1s.append(f1(tr, [tr[0]] + _top(data, t, x[2], model.decision_function(x[0])) + [tr[-1]]))
        scores[f"{choice[0]}:{choice[1]:g}"] = float(np.mean(f1s))
    best = max(GRID, key=lambda c: scores[f"{c[0]}:{c[1]:g}"])
    return best, scores


# Scorers "cv" and "nested" choose among, on featurize = Featurizer(data, "both") columns.
CV_SCORERS = ("ours", "both", "poirank", "poirank_both")
OURS_COLUMNS = slice(0, N_FEATURES)  # our features' columns in the "both" layout
_CV_COLUMNS = {"ours": OURS_COLUMNS, "both": slice(None), "poirank": slice(N_FEATURES, None),
               "poirank_both": slice(None)}


def cv_scorer(name: str, groups: list, fits: FitCache | None = None):
    """Scorer `name` fitted on `groups` (features of both sets side by side), as a function of a
    query's feature rows: "ours" and "both" are the ENSEMBLE on those columns; "poirank" is
    POIRANK (the authors' learner) on the authors' columns, "poirank_both" the same learner on both sets.
    `fits`, a FitCache of the same groups, lets other scorers reuse these fits."""
    cols, fits = _CV_COLUMNS[name], fits or FitCache(groups)
    if name.startswith("poirank"):
        model = fits(POIRANK, cols)
        return lambda X: model.decision_function(X[:, cols])
    fitted = {c: fits(c, cols) for c in ENSEMBLE}
    return lambda X: ensemble_score(fitted, X[:, cols])


def pick_scorer(data: CityData, items: list, folds: int = 5) -> tuple[str, dict]:
    """One of CV_SCORERS by 5-fold F1 over `items` [(trajectory id, _example output)] only;
    each scorer is fitted once per fold."""
    if len(items) < 2 * folds:
        return "ours", {}
    scores = {}
    for name in CV_SCORERS:
        f1s = []
        for f in range(folds):
            score = cv_scorer(name, [x[:2] for i, (_, x) in enumerate(items) if i % folds != f])
            for i, (t, x) in enumerate(items):
                if i % folds == f:
                    tr = data.trajs[t]
                    f1s.append(f1(tr, [tr[0]] + _top(data, t, x[2], score(x[0])) + [tr[-1]]))
        scores[name] = float(np.mean(f1s))
    return max(scores, key=scores.get), scores  # a tie keeps the earlier ("ours" first)


def choose_scorer(data: CityData, featurize: Featurizer, short_ids: list[int], tune_ids: list[int],
                  folds: int = 5) -> tuple[str, dict]:
    """pick_scorer on the tuning queries only (statistics as in choose_model)."""
    counts = Counts(data, short_ids + tune_ids)
    return pick_scorer(data, [(t, x) for t in tune_ids if (x := _example(data, counts, featurize, t)) is not None], folds)


@dataclass
class QueryOutcome:
    """What one held-out query contributes to a CityResult."""
    actual: list[int]
    rec: list[int]
    rec_tuned: list[int]
    rec_popularity: list[int]
    f1_random: float
    f1_poirank: float | None
    pick: str | None
    path_stats: dict


@dataclass
class HalfEvaluation:
    """Everything a held-out query of one half needs (all fixed before its queries run), so the
    queries can run in any process: counts are restored after each query."""
    data: CityData
    counts: Counts
    featurize: Featurizer
    long_ids: list[int]
    feature_set: str
    choice: tuple[str, float]
    cv_name: str | None
    markov_alpha: float

    def run(self, q: int) -> QueryOutcome | None:
        """Query q learned from all other trajectories; None when its start or end is unseen."""
        tr = self.data.trajs[q]
        restore = self.counts.without(q)
        try:
            if self.counts.contains[tr[0]] == 0 or self.counts.contains[tr[-1]] == 0:
                return None
            return self._recommend(q, tr[0], tr[-1], len(tr))
        finally:
            restore()

    def _recommend(self, q: int, s: int, e: int, length: int) -> QueryOutcome:
        data, counts, fs = self.data, self.counts, self.feature_set
        items = [(t, x) for t in self.long_ids if t != q and (x := _example(data, counts, self.featurize, t)) is not None]
        groups = [x[:2] for _, x in items]
        fits = FitCache(groups)
        known = counts.contains > 0
        known[[s, e]] = False
        cands = np.flatnonzero(known)
        X = self.featurize(counts, s, e, length)[cands]
        ours = OURS_COLUMNS if fs in ("cv", "nested", "ours+poirank") else slice(None)
        name = pick_scorer(data, items)[0] if fs == "nested" else self.cv_name
        if name is not None:
            score = cv_scorer(name, groups, fits)(X)
        elif fs == "poirank":
            score = fits(POIRANK).decision_function(X)
        else:
            score = ensemble_score({c: fits(c, ours) for c in ENSEMBLE}, X[:, ours])
        v = None
        if fs == "ours+poirank":
            v = fits(POIRANK, slice(N_FEATURES, None)).decision_function(X[:, N_FEATURES:])
            score = score + (v - v.mean()) / (v.std() + 1e-9)
        logp, path_stats = transition_logp(counts), {}
        rec = rank_markov_path(s, e, length, cands, score, logp, self.markov_alpha, path_stats)
        tuned = fits(self.choice, ours).decision_function(X[:, ours])
        tr = data.trajs[q]
        return QueryOutcome(tr, rec, best_order(s, e, _top(data, q, cands, tuned), logp),
                            [s] + _top(data, q, cands, counts.pop[cands]) + [e], expected_random_f1(tr, cands),
                            None if v is None else f1(tr, [s] + _top(data, q, cands, v) + [e]),
                            name if fs == "nested" else None, path_stats)


_WORKER_HALF: HalfEvaluation | None = None  # a forked worker's copy of the half it evaluates


def _run_in_worker(q: int) -> QueryOutcome | None:
    return _WORKER_HALF.run(q)


def run_queries(half: HalfEvaluation, queries: list[int], jobs: int = 1):
    """half.run(q) for each query, in the order given, in `jobs` forked processes (1: this one).
    Each query's result depends on nothing but q, so any split gives the same results."""
    global _WORKER_HALF
    if jobs <= 1 or len(queries) < 2:
        yield from map(half.run, queries)
        return
    import multiprocessing

    _WORKER_HALF = half  # inherited by the forked workers, never pickled
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(queries))) as pool:
            yield from pool.imap(_run_in_worker, queries)
    finally:
        _WORKER_HALF = None


def _show_progress(progress, f1s: list, pf1s: list, f1p: list, picks: dict) -> None:
    """One more query done; a bar that takes postfixes (tqdm) also shows the running means, so
    that a long run stopped early still says how it was going."""
    if progress is None:
        return
    if f1s and hasattr(progress, "set_postfix_str"):
        picked = " ".join(f"{k}:{v}" for k, v in picks.items())
        progress.set_postfix_str(f"F1 {np.mean(f1s):.4f} pairs-F1 {np.mean(pf1s):.4f} popularity F1 {np.mean(f1p):.4f} {picked}",
                                 refresh=False)
    progress.update(1)


def evaluate_city(data: CityData, seed: int = 1234567890, progress=None, feature_set: str = "ours",
                  markov_alpha: float = 1.0, jobs: int = 1) -> CityResult:
    """Leave-one-trajectory-out F1 and pairs-F1 of our recommender and of popularity.

    Two variants of the POI scorer are measured on the same queries: the fixed ENSEMBLE
    (the headline figure) and a GRID choice tuned per half: the queries are split in two
    halves (seeded) and the choice for one half is tuned on the other. For each held-out
    trajectory q every statistic and the model are re-learned without q: counts lose q,
    each training query's features are computed without q and without that query's own
    trajectory, and the models are refitted.

    feature_set (FEATURE_SETS): "ours" is the headline; "cv" replaces the fixed ensemble by
    one of CV_SCORERS chosen per half by 5-fold F1 on the other half (training queries only);
    "ours+poirank" adds POIRANK as a third ensemble member and reports it alone as well;
    "nested" picks one of CV_SCORERS for each held-out query by 5-fold F1 over all other queries;
    "poirank" scores with the PoiRank replica alone (POIRANK on the authors' features).

    markov_alpha < 1 replaces "top-ranked POIs, then their likeliest order" by Rank+MarkovPath
    (rank_markov_path) on the headline score and the empirical transitions, with that weight.
    jobs > 1 runs the held-out queries in that many forked processes; results are the same.
    """
    if not 0.0 < markov_alpha <= 1.0:
        raise ValueError(f"markov_alpha must be in (0, 1], got {markov_alpha}")
    all_ids = list(range(len(data.trajs)))
    long_ids = [t for t in all_ids if len(data.trajs[t]) >= 3]
    short_ids = [t for t in all_ids if len(data.trajs[t]) < 3]
    # pairs-F1 is defined for trips without a repeated POI (the CIKM'16 files have none);
    # trips with a loop stay in training but are not held out as queries.
    query_ids = [t for t in long_ids if len(set(data.trajs[t])) == len(data.trajs[t])]
    perm = [int(t) for t in np.random.default_rng(seed).permutation(query_ids)]
    halves = [sorted(perm[: len(perm) // 2]), sorted(perm[len(perm) // 2:])]
    featurize = Featurizer(data, feature_set)
    counts = Counts(data, all_ids)
    f1s, pf1s, f1p, pf1p, f1t, pf1t, f1r, skipped, chosen_models = [], [], [], [], [], [], [], 0, []
    f1_poirank, nested_picks, path_stats, lengths = [], {}, {}, []
    for h in (0, 1):
        picked = {}
        if feature_set == "cv":
            scorer, sc_cv = choose_scorer(data, featurize, short_ids, halves[1 - h])
            picked = {"scorer": scorer, "scorer_inner_cv_f1": sc_cv}
        ours_only = featurize
        if feature_set in ("cv", "ours+poirank", "nested"):  # the GRID choice stays on our own features
            ours_only = lambda c, s, e, n: featurize(c, s, e, n)[:, :N_FEATURES]  # noqa: E731
        choice, cv = choose_model(data, ours_only, short_ids, halves[1 - h])
        chosen_models.append({"choice": f"{choice[0]}:{choice[1]:g}", "inner_cv_f1": cv, **picked})
        half = HalfEvaluation(data, counts, featurize, long_ids, feature_set, choice, picked.get("scorer"), markov_alpha)
        for out in run_queries(half, halves[h], jobs):
            if out is None:
                skipped += 1
                _show_progress(progress, f1s, pf1s, f1p, nested_picks)
                continue
            tr = out.actual
            lengths.append(len(tr))
            f1t.append(f1(tr, out.rec_tuned)), pf1t.append(pairs_f1(tr, out.rec_tuned))
            f1s.append(f1(tr, out.rec)), pf1s.append(pairs_f1(tr, out.rec))
            f1p.append(f1(tr, out.rec_popularity)), pf1p.append(pairs_f1(tr, out.rec_popularity))
            f1r.append(out.f1_random)
            if out.f1_poirank is not None:
                f1_poirank.append(out.f1_poirank)
            if out.pick is not None:
                nested_picks[out.pick] = nested_picks.get(out.pick, 0) + 1
            for k, n in out.path_stats.items():
                path_stats[k] = path_stats.get(k, 0) + n
            _show_progress(progress, f1s, pf1s, f1p, nested_picks)
    if nested_picks:
        chosen_models.append({"nested_scorer_picks": nested_picks})
    if path_stats:
        chosen_models.append({"markov_alpha": markov_alpha, "path_decodes": path_stats})
    return CityResult(data.city, len(f1s), float(np.mean(f1s)), float(np.mean(pf1s)), float(np.mean(f1p)),
                      float(np.mean(pf1p)), skipped, len(all_ids), chosen_models, len(long_ids) - len(query_ids),
                      float(np.mean(f1t)), float(np.mean(pf1t)), float(np.std(f1s)),
                      float(np.mean(f1_poirank)) if f1_poirank else None,
                      by_length(lengths, f1=f1s, pairs_f1=pf1s, f1_popularity=f1p, f1_random_expected=f1r),
                      float(np.mean(f1r)))
