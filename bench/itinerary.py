"""`wenlv bench itinerary`: itinerary quality on real public data, beside published figures.

- Flickr trajectories (CIKM 2016 protocol, leave-one-trajectory-out): F1 and pairs-F1 of
  our recommender and of POI popularity measured in the same run, beside the published
  best F1 (../shared/data/README.md).
- Solomon TOPTW instances, one route: our ILS against plain greedy insertion (measured in
  the same run) and the best-known scores; every route re-checked from the raw file.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm

from wenlv.bench.flickr.options import FEATURE_SETS
from wenlv.errors import WenlvError

MAX_ITERATIONS = 400  # per TOPTW instance: deterministic for a seed unless the time limit cuts in first
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Best-known one-route scores NOT cited in toptw/FORMAT.txt: recalled from the literature
# tables (Righini & Salani 2009; Labadie et al. 2012). Reported apart from the cited ones.
BEST_KNOWN_RECALLED = {
    "c102": 360, "c103": 400, "c104": 420, "c105": 340, "c106": 340, "c107": 370, "c108": 370, "c109": 380,
    "r102": 286, "r103": 293, "r104": 303, "r105": 247, "r106": 293, "r107": 299, "r108": 308, "r109": 277,
    "r110": 284, "r111": 297, "r112": 298,
    "rc102": 266, "rc103": 266, "rc104": 301, "rc105": 244, "rc106": 252, "rc107": 277, "rc108": 298,
}


def register(bench_sub) -> None:
    p = bench_sub.add_parser("itinerary", help="itinerary quality: Flickr CIKM'16 protocol and Solomon TOPTW")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--source", type=Path, default=None,
                   help="folder with the Flickr data (trajectories/ or userVisits-CODE*.csv + POI-CODE.csv)")
    p.add_argument("--city", action="append", default=None, help="city code(s); default the five published cities")
    p.add_argument("--format", choices=("auto", "trajectories", "visits"), default="auto",
                   help="auto: the CIKM'16 trajectory files when present, else the IJCAI'15 visits")
    p.add_argument("--features", choices=FEATURE_SETS, default="ours",
                   help="POI features: ours; authors (CIKM'16 PoiRank set); both side by side; cv (ours, both, the PoiRank replica or "
                        "the PoiRank learner on both sets, chosen per half by 5-fold F1 on the other half); ours+poirank (ours, plus a PoiRank "
                        "replica on the authors' features, pairwise, C=10, as a third ensemble member); nested (as cv, chosen "
                        "for each held-out query by 5-fold F1 over all other queries); poirank (the PoiRank replica alone)")
    p.add_argument("--markov-alpha", type=float, default=1.0,
                   help="Rank+MarkovPath weight of the ranking against the empirical transitions, in (0, 1]; "
                        "1 (the default) takes the top-ranked POIs and orders them by the transitions")
    p.add_argument("--jobs", type=int, default=1,
                   help="processes for the Flickr held-out queries (same results for any number)")
    p.add_argument("--toptw-dir", type=Path, default=None, help="folder of Solomon TOPTW .txt instances")
    p.add_argument("--skip-flickr", action="store_true", help="skip the Flickr CIKM'16 evaluation")
    p.add_argument("--skip-toptw", action="store_true", help="skip the Solomon TOPTW instances")
    p.add_argument("--time-limit", type=float, default=0.9, help="seconds per TOPTW instance")
    p.add_argument("--seed", type=int, default=0, help="solver random seed")
    p.set_defaults(func=main)


def model_label(features: str) -> str:
    """What scores the POIs under a --features choice (bench.flickr.protocol.evaluate_city)."""
    # Imported here, not at the top: `wenlv` imports this module for register() at start-up,
    # and the Flickr evaluation pulls in numpy and scipy.
    from wenlv.bench.flickr.selection import CV_SCORERS

    ensemble = "ensemble of pointwise (L2 1) and pairwise (L2 10) logistic rankers, fixed"
    return {
        "poirank": "PoiRank replica: pairwise logistic ranker, C=10, on the authors' features",
        "cv": f"one of {', '.join(CV_SCORERS)} per half of the queries, by 5-fold F1 on the other half",
        "nested": f"one of {', '.join(CV_SCORERS)} per held-out query, by 5-fold F1 over all other queries",
        "ours+poirank": ensemble + ", plus the PoiRank replica as a third member",
    }.get(features, f"{ensemble}, on the '{features}' features")


def run_flickr(source: Path, cities: list[str], fmt_choice: str = "auto", features: str = "ours",
               markov_alpha: float = 1.0, jobs: int = 1) -> dict:
    # Imported here, not at the top: `wenlv` imports this module for register() at start-up,
    # and the Flickr evaluation pulls in numpy and scipy.
    from wenlv.bench.flickr.data import load_trajectories, load_visits
    from wenlv.bench.flickr.metrics import PUBLISHED, PUBLISHED_BEST_F1, published_subset
    from wenlv.bench.flickr.protocol import evaluate_city

    out = {}
    for city in cities:
        has_traj = (source / "trajectories" / f"traj-{city}.csv").exists()
        if fmt_choice == "trajectories" or (fmt_choice == "auto" and has_traj):
            data, fmt = load_trajectories(source, city), "trajectories (CIKM 2016 files)"
        else:
            data, fmt = load_visits(source, city), "visits (IJCAI 2015 format), one trajectory per seqID"
        long = sum(len(t) >= 3 and len(set(t)) == len(t) for t in data.trajs)
        started = time.perf_counter()
        with tqdm(total=long, desc=f"flickr {city}", file=sys.stderr, leave=False) as bar:
            r = evaluate_city(data, progress=bar, feature_set=features, markov_alpha=markov_alpha, jobs=jobs)
        out[city] = {
            "f1": round(r.f1, 4), "pairs_f1": round(r.pairs_f1, 4), "queries": r.queries,
            "f1_std": round(r.f1_std, 4), "f1_standard_error": round(r.f1_std / max(r.queries, 1) ** 0.5, 4),
            "features": features, "markov_alpha": markov_alpha, "f1_poirank_replica_same_run": r.f1_poirank_replica and round(r.f1_poirank_replica, 4),
            "model": model_label(features),
            "route": "top-ranked POIs in their likeliest order" if markov_alpha >= 1 else f"Rank+MarkovPath, alpha {markov_alpha:g}",
            "f1_tuned_choice": round(r.f1_tuned, 4), "pairs_f1_tuned_choice": round(r.pairs_f1_tuned, 4),
            "published_best_f1": PUBLISHED_BEST_F1.get(city),
            "beats_published_best": (r.f1 > PUBLISHED_BEST_F1[city]) if city in PUBLISHED_BEST_F1 else None,
            "popularity_f1_same_run": round(r.f1_popularity, 4), "popularity_pairs_f1_same_run": round(r.pairs_f1_popularity, 4),
            "random_f1_expected": round(r.f1_random_expected, 4),
            "published_f1": {m: v[city] for m, v in PUBLISHED.items() if city in v},
            "skipped_queries": r.skipped, "trajectories": r.trajectories, "source_format": fmt,
            "loop_trajectories_not_queried": r.loops_not_queried, "by_query_length": r.by_length, "model_choice_per_half": r.models,
            "dropped_rows": data.dropped, "seconds": round(time.perf_counter() - started, 1),
        }
        popularity = PUBLISHED["PoiPopularity"].get(city)
        if popularity is not None and r.by_length:
            subset = published_subset(r.by_length, popularity)
            subset["beats_published_best"] = subset["f1"] > PUBLISHED_BEST_F1[city]
            out[city]["published_subset_estimate"] = subset
    return out


def run_toptw(folder: Path, time_limit: float, seed: int) -> dict:
    from wenlv.bench import toptw  # lazy, as the evaluation above: CLI start-up stays free of numpy
    from wenlv.itinerary import core

    files = sorted(folder.glob("*.txt"))
    if not files:
        raise WenlvError(f"no TOPTW instances (*.txt) in {folder}")
    per, gaps_cited, gaps_all, secs, greedy_gaps = {}, [], [], [], []
    for f in tqdm(files, desc="toptw", file=sys.stderr, leave=False):
        points = toptw.parse(f)
        inst = toptw.to_instance(points)
        t0 = time.perf_counter()
        greedy = core.initial_solution(inst)
        core.greedy_insert(inst, greedy)
        greedy_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        sol, stats = core.solve(inst, seed=seed, max_iterations=MAX_ITERATIONS, time_limit=time_limit,
                                max_no_improve=MAX_ITERATIONS)
        seconds = time.perf_counter() - t0
        route = [points[j + 1].i for j in sol.routes[0].nodes]
        score, problems = toptw.check_route(points, route)
        if problems:
            raise WenlvError(f"{f.name}: solver route fails the independent check: {problems}")
        name = f.stem
        cited = toptw.BEST_KNOWN_CITED.get(name)
        best = cited or BEST_KNOWN_RECALLED.get(name)
        row = {"score": score, "greedy_score": float(greedy.score()), "seconds": round(seconds, 3),
               "stopped_by": stats.stopped_by,
               "greedy_seconds": round(greedy_s, 4), "iterations": stats.iterations, "best_known": best,
               "best_known_source": "FORMAT.txt (Labadie et al. 2012)" if cited else ("recalled literature" if best else None)}
        if best:
            gap = (best - score) / best
            row["gap"] = round(gap, 4)
            gaps_all.append(gap)
            greedy_gaps.append((best - greedy.score()) / best)
            if cited:
                gaps_cited.append(gap)
        secs.append(seconds)
        per[name] = row
    mean = lambda xs: round(sum(xs) / len(xs), 4) if xs else None  # noqa: E731
    return {
        "mean_gap": mean(gaps_cited), "mean_gap_instances": len(gaps_cited),
        "mean_gap_incl_recalled_best_known": mean(gaps_all), "instances_with_best_known": len(gaps_all),
        "greedy_mean_gap_incl_recalled": mean(greedy_gaps),
        "mean_seconds": mean(secs), "max_seconds": round(max(secs), 3), "instances": len(files),
        "time_limit_seconds": time_limit,
        "published_ils_mean_gap_vansteenwegen_2009": 0.018,
        "per_instance": per,
    }


def main(args) -> int:
    data = DEFAULT_DATA
    result: dict = {}
    if not args.skip_flickr:
        source = args.source or data / "flickr"
        if not source.is_dir():
            raise WenlvError(f"Flickr data folder {source} not found (use --source)")
        from wenlv.bench.flickr.metrics import CITIES  # numpy: not at start-up (see run_flickr)

        result["flickr"] = run_flickr(source, args.city or list(CITIES), args.format, args.features, args.markov_alpha,
                                     args.jobs)
    if not args.skip_toptw:
        folder = args.toptw_dir or data / "toptw" / "solomon100"
        if not folder.is_dir():
            raise WenlvError(f"TOPTW folder {folder} not found (use --toptw-dir)")
        result["toptw"] = run_toptw(folder, args.time_limit, args.seed)
    if args.json:
        print(json.dumps(result))
    else:
        print(json.dumps(result, indent=2))
    return 0
