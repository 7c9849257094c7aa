"""From POI scores to a route: the top-scored POIs in their likeliest order (best_order), or
set and order chosen jointly as the authors' Rank+MarkovPath (rank_markov_path)."""
from __future__ import annotations

import heapq

import numpy as np

from wenlv.bench.flickr.data import CityData
from wenlv.bench.flickr.features import Counts


def top_k(cands: np.ndarray, score: np.ndarray, k: int) -> list[int]:
    """The k best-scored candidates, ties in candidate order."""
    return [int(p) for p in cands[np.argsort(-score, kind="stable")][:k]]


def _top(data: CityData, t: int, cands: np.ndarray, score: np.ndarray) -> list[int]:
    """The candidates that fill query t's intermediate stops."""
    return top_k(cands, score, len(data.trajs[t]) - 2)


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
