"""The CIKM'16 leave-one-trajectory-out evaluation of one city (evaluate_city), its held-out
queries run in this process or in forked workers (run_queries)."""
from __future__ import annotations

import multiprocessing
from dataclasses import dataclass

import numpy as np

from wenlv.bench.flickr.data import CityData
from wenlv.bench.flickr.decoding import _top, best_order, rank_markov_path, transition_logp
from wenlv.bench.flickr.features import N_FEATURES, Counts, Featurizer, _example
from wenlv.bench.flickr.learners import ENSEMBLE, POIRANK, FitCache, ensemble_score
from wenlv.bench.flickr.metrics import by_length, expected_random_f1, f1, pairs_f1
from wenlv.bench.flickr.selection import OURS_COLUMNS, choose_model, choose_scorer, cv_scorer, pick_scorer


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
