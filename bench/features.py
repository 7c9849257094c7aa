"""`wenlv bench features`: the Spark feature pipeline and its PSI, at two or more scales.

Prints one JSON object. For each scale: raw rows per second of the whole pipeline, and
PSI throughput. The peer, measured in the same run on this machine: the bare group
operations PSI cannot avoid — per item and per party one hash-to-group and two scalar
multiplications (blind own item, re-blind the other's) — timed in plain loops, one process
per Spark core, just before and just after each scale's run.

Goals (checked, reported under "goals"):
- pipeline time grows no faster than linearly in raw rows (time ratio ≤ rows ratio);
- PSI end to end within 1.5× of the bare group operations (same core count);
- at least 2,000 *matched* items per second per core (the issue's wording): identifiers
  that end with a token, over the PSI's wall time and cores. All PSI items per second (an
  item is one identifier of one party in one session, hashed and blinded by its owner,
  re-blinded by the peer) are reported too; with ~29% of items matched in the generated
  data, the matched goal needs PSI within ~1.26× of the bare group operations.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

PSI_STEPS = ("psi request", "psi respond", "psi finish")


def register(bench_sub) -> None:
    p = bench_sub.add_parser("features", help="Spark pipeline rows/s and PSI tokens/s vs bare group operations")
    p.add_argument("--scales", default="small,medium", help="comma-separated generator scales (default small,medium)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object (always JSON)")
    p.add_argument("--master", default=None, help="Spark master URL (default local[*])")
    p.add_argument("--seed", type=int, default=1, help="generator seed")
    p.add_argument("--workdir", type=Path, default=None, help="where data and features go (default: a temp dir)")
    p.add_argument("--bare-items", type=int, default=3000, help="items timed for the bare group operations")
    p.add_argument("--no-warmup", action="store_true", help="skip the untimed tiny run that warms the JVM up")
    p.set_defaults(func=main)


def _bare_loop(args) -> float:
    from wenlv.privacy import psi

    start, n = args
    phones = [f"86139{start + i:08d}" for i in range(n)]
    a, b = psi.new_secret(), psi.new_secret()
    started = time.perf_counter()
    for p in phones:
        psi.blind(psi.blind(psi.hash_to_group(psi.normalise_phone(p)), a), b)
    return time.perf_counter() - started


def bare_group_ops(n: int, workers: int = 1) -> dict:
    """Per-core seconds per item of hash-to-group + two scalar multiplications: `workers`
    plain processes, n items each, run at once (so they share the machine as Spark does)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # spawn, not fork: a forked child would inherit (and on exit disturb) the Spark gateway socket
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        seconds = list(pool.map(_bare_loop, [(w * n, n) for w in range(workers)]))
    per_item = max(seconds) / n
    return {"items": n * workers, "workers": workers, "us_per_item": round(per_item * 1e6, 1),
            "items_per_s_per_core": round(1 / per_item, 1)}


def run_scale(spark, scale: str, seed: int, workdir: Path, cores: int, bare_items: int) -> dict:
    """One scale: generate, run the pipeline; the bare group operations timed just before and after
    it (the machine is shared, so the peer is measured under the same load as the run)."""
    from wenlv.features import contracts
    from wenlv.features.generator import generate
    from wenlv.spark_jobs import features_job

    data_dir, out_dir = workdir / f"data-{scale}", workdir / f"features-{scale}"
    t0 = time.perf_counter()
    summary = generate(data_dir, scale=scale, seed=seed, progress=True)
    generate_s = time.perf_counter() - t0
    raw_rows = sum(v for k, v in summary["rows"].items() if k.split(".")[0] in contracts.PARTIES)
    stats: dict = {}
    bare_before = bare_group_ops(bare_items, cores)
    t0 = time.perf_counter()
    manifest = features_job.run(data_dir, out_dir, spark=spark, stats=stats)
    seconds = time.perf_counter() - t0
    bare_after = bare_group_ops(bare_items, cores)
    bare_per_item_s = (bare_before["us_per_item"] + bare_after["us_per_item"]) / 2 / 1e6
    psi_s = sum(stats["seconds"][s] for s in PSI_STEPS)
    items = sum(stats["psi_set_sizes"].values())  # each item is hashed+blinded by its owner, re-blinded by the peer
    matched = manifest["psi"]["tourism_carrier_matched"] + manifest["psi"]["internet_carrier_matched"]
    bare_s = items * bare_per_item_s / cores
    return {
        "scale": scale, "raw_rows": raw_rows, "generate_seconds": round(generate_s, 2),
        "seconds": round(seconds, 2), "rows_per_s": round(raw_rows / seconds, 1),
        "step_seconds": stats["seconds"],
        "psi": {"seconds": round(psi_s, 2), "items": items, "matched": matched,
                "items_per_s_per_core": round(items / psi_s / cores, 1),
                "matched_per_s_per_core": round(matched / psi_s / cores, 1),
                "bare_us_per_item_before_after": [bare_before["us_per_item"], bare_after["us_per_item"]],
                "bare_seconds_same_cores": round(bare_s, 2), "vs_bare": round(psi_s / bare_s, 3)},
    }


def main(args) -> int:
    from wenlv.spark_jobs.session import get_spark

    scales = [s.strip() for s in args.scales.split(",") if s.strip()]
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wenlv-bench-features-"))
    workdir.mkdir(parents=True, exist_ok=True)
    spark = get_spark(args.master, app_name="wenlv-bench-features")
    cores = spark.sparkContext.defaultParallelism
    if not args.no_warmup:
        print("[bench features] warm-up run (tiny, untimed) …", file=sys.stderr, flush=True)
        run_scale(spark, "tiny", args.seed, workdir / "warmup", cores, 200)
    results = []
    for scale in scales:
        print(f"[bench features] scale {scale} …", file=sys.stderr, flush=True)
        results.append(run_scale(spark, scale, args.seed, workdir, cores, args.bare_items))
    goals = {}
    if len(results) >= 2:
        lo, hi = results[0], results[-1]
        time_ratio, rows_ratio = hi["seconds"] / lo["seconds"], hi["raw_rows"] / lo["raw_rows"]
        goals["time_at_most_linear_in_rows"] = {"time_ratio": round(time_ratio, 2), "rows_ratio": round(rows_ratio, 2),
                                                "met": time_ratio <= rows_ratio}
    largest = results[-1]["psi"]
    goals["psi_within_1_5x_of_bare"] = {"vs_bare": largest["vs_bare"], "met": largest["vs_bare"] <= 1.5}
    goals["psi_2000_matched_per_s_per_core"] = {"matched_per_s_per_core": largest["matched_per_s_per_core"],
                                                "items_per_s_per_core": largest["items_per_s_per_core"],
                                                "met": largest["matched_per_s_per_core"] >= 2000}
    print(json.dumps({"bench": "features", "master": spark.sparkContext.master, "cores": cores,
                      "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
                      "scales": results, "goals": goals}))
    spark.stop()
    return 0
