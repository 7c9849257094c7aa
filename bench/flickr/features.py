"""Training counts with leave-one-out subtraction, and the query features computed from them:
ours (query_features), the authors' PoiRank set (authors_features), or both (Featurizer)."""
from __future__ import annotations

import math

import numpy as np
from scipy.cluster.vq import kmeans2

from wenlv.bench.flickr.data import CityData
from wenlv.bench.flickr.options import FEATURE_SETS


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
