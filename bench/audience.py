"""`wenlv bench audience`: audience selection speed, prospect quality and uplift, with peers in the same run.

* select — a 100,000-person audience among 1,000,000 and 10,000,000 users (64 factors),
  consent (80%) and frequency-cap (5% capped) filters on: FAISS flat inner-product search
  with an ID-selector bitmap (the product's `marketing.select.faiss_top_k`) beside a plain
  NumPy scan (`numpy_top_k`), one thread each, median wall and CPU ms of `--repeats`; goals
  < 100 ms at one million and < 1 s at ten million;
* prospects — `marketing.prospects.evaluate` on generated `small` data (seed 7): the
  federated destination propensity's top 5% against random, each single-party signal and
  a logistic regression on the three (fitted on the earlier window), 95% bootstrap intervals;
  and, beside it, the Qini of an uplift model on a randomised campaign simulated from
  `truth/people.campaign_response` (ceiling: ranking by the true response);
* hillstrom — Qini and uplift@30% of our uplift model and of a gradient-boosted T-learner
  on the same 70/30 split of the real Hillstrom experiment, over several splits.
Load average is recorded before and after: the machine is shared.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOALS = {"select_ms_at_1000000": 100.0, "select_ms_at_10000000": 1000.0, "prospect_lift_vs_random": 2.5,
         "hillstrom_qini": 0.087}
DEFAULT_SHARED = Path(os.environ.get("WENLV_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def register(sub) -> None:
    p = sub.add_parser("audience", help="audience selection (FAISS vs NumPy), prospect lift, Hillstrom Qini")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--sizes", default="1000000,10000000", help="comma list of user counts")
    p.add_argument("--audience", type=int, default=100_000, help='people to select')
    p.add_argument("--factors", type=int, default=64, help='factors per user vector')
    p.add_argument("--repeats", type=int, default=5, help='timed repeats (the median is reported)')
    p.add_argument("--data", type=Path, default=None, help="generated small data (default: generate into a temp dir)")
    p.add_argument("--hillstrom", type=Path, default=DEFAULT_SHARED / "uplift" / "hillstrom.csv", help='the Hillstrom e-mail experiment CSV (uplift: Qini against a T-learner)')
    p.add_argument("--splits", type=int, default=5, help="Hillstrom train/test splits")
    p.add_argument("--skip", default="", help="comma list of sections to skip: select, prospects, hillstrom")
    p.set_defaults(func=main)


def _log(message: str) -> None:
    print(f"[bench audience] {message}", file=sys.stderr, flush=True)


def select_timings(n: int, audience: int, factors: int, repeats: int, seed: int = 0) -> dict:
    import faiss  # lazy: the CLI loads every benchmark module at start-up

    from wenlv.marketing.select import faiss_top_k, flat_index, numpy_top_k

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, factors), dtype=np.float32)
    consent = rng.random(n) < 0.8
    capped_rows = rng.choice(n, size=n // 20, replace=False)  # what caps.capped_tokens returns, as rows
    query = rng.standard_normal(factors, dtype=np.float32)
    index = flat_index(vectors)

    def mask():
        m = consent.copy()
        m[capped_rows] = False
        return m

    timings = {"faiss": [], "numpy": []}
    cpu = {"faiss": [], "numpy": []}  # CPU time of this process: what the load of others does not inflate
    results = {}
    for _ in range(repeats):
        for name, run in (("faiss", lambda m: faiss_top_k(index, query, audience, m)),
                          ("numpy", lambda m: numpy_top_k(vectors, query, audience, m))):
            started, started_cpu = time.perf_counter(), time.process_time()
            rows, _ = run(mask())
            timings[name].append((time.perf_counter() - started) * 1000)
            cpu[name].append((time.process_time() - started_cpu) * 1000)
            results[name] = rows
    same = float(np.isin(results["faiss"], results["numpy"]).mean())
    eligible = mask()
    assert eligible[results["faiss"]].all() and eligible[results["numpy"]].all()
    del index, vectors
    return {"faiss_ms": round(float(np.median(timings["faiss"])), 2), "numpy_ms": round(float(np.median(timings["numpy"])), 2),
            "faiss_cpu_ms": round(float(np.median(cpu["faiss"])), 2), "numpy_cpu_ms": round(float(np.median(cpu["numpy"])), 2),
            "faiss_ms_all": [round(t, 2) for t in timings["faiss"]], "numpy_ms_all": [round(t, 2) for t in timings["numpy"]],
            "same_audience_share": round(same, 6), "eligible": int(eligible.sum()), "audience": audience}


def prospect_quality(data: Path | None) -> dict:
    from wenlv.features.generator import generate
    from wenlv.marketing import prospects

    if data is None:
        data = Path(tempfile.mkdtemp(prefix="wenlv-bench-audience-")) / "small"
        _log(f"generating small data (seed 7) in {data} …")
        generate(data, scale="small", seed=7, progress=False)
    started = time.perf_counter()
    result = prospects.evaluate(data, progress=True)
    out = {k: v for k, v in result.items() if not k.startswith("_")}
    out["seconds"] = round(time.perf_counter() - started, 1)
    out["data"] = str(data)
    _log("uplift on the synthetic truth …")
    out["synthetic_uplift"] = prospects.synthetic_uplift(data)
    return out


def hillstrom(path: Path, splits: int) -> dict:
    from wenlv.marketing import uplift

    reports = [uplift.hillstrom(path, seed=s).as_dict() for s in range(splits)]
    first = reports[0]
    return {**first, "splits": splits,
            "qini_by_split": [r["qini"] for r in reports], "tlearner_qini_by_split": [r["tlearner_qini"] for r in reports],
            "qini_mean": round(float(np.mean([r["qini"] for r in reports])), 4),
            "tlearner_qini_mean": round(float(np.mean([r["tlearner_qini"] for r in reports])), 4),
            "ours_above_tlearner_in_splits": sum(r["qini"] > r["tlearner_qini"] for r in reports)}


def run(sizes, audience: int, factors: int, repeats: int, data: Path | None, hillstrom_path: Path, splits: int,
        skip=()) -> dict:
    out: dict = {"load_average_before": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
                 "threads": 1, "goals": GOALS}
    if "select" not in skip:
        out["select"] = {}
        for n in sizes:
            _log(f"selecting {audience:,} among {n:,} ({factors} factors) …")
            out["select"][str(n)] = select_timings(n, audience, factors, repeats if n <= 1_000_000 else max(3, repeats // 2))
    if "prospects" not in skip:
        _log("prospect quality at small …")
        out["prospects"] = prospect_quality(data)
    if "hillstrom" not in skip:
        _log("Hillstrom uplift …")
        out["hillstrom"] = hillstrom(hillstrom_path, splits)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    return out


def main(args) -> int:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    result = run(sizes, args.audience, args.factors, args.repeats, args.data, args.hillstrom, args.splits, skip)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    return 0
