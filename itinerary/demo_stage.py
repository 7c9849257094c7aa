"""Demo stage `itinerary`: plan a few dozen synthetic requests over the demo's POIs and
check every plan with the independent checker.

Scores: the trained bundle's personal scores (POI factors · user factors) when the train
stage left a bundle, else the POIs' popularity (visit counts in the raw data when
present), else a neutral score.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.features.contracts import POIS, VISITS
from wenlv.features.io import read_pandas
from wenlv.itinerary import check, planner
from wenlv.training.bundle import ModelBundle

N_REQUESTS = {"tiny": 24, "small": 48}


def _load(ctx) -> tuple[pd.DataFrame, np.ndarray | None, str, np.ndarray | None]:
    bundle_dir = ctx.results.get("train", {}).get("_paths", {}).get("bundle_dir")
    if bundle_dir and (Path(bundle_dir) / "bundle.json").exists():
        bundle = ModelBundle.load(bundle_dir)
        return bundle.pois.reset_index(drop=True), bundle.user_factors, "bundle", bundle.poi_factors
    data_dir = ctx.results.get("data", {}).get("_paths", {}).get("data_dir")
    if not data_dir:
        raise RuntimeError("itinerary demo stage: neither a model bundle nor the demo data folder is available")
    pois = read_pandas(data_dir, POIS)
    try:
        visits = read_pandas(data_dir, VISITS, columns=["poi_id"])
        counts = visits["poi_id"].value_counts()
        pois["popularity"] = pois["poi_id"].map(counts).fillna(0).to_numpy(float)
    except Exception:  # noqa: BLE001 - popularity is optional; the plan then ranks POIs equally
        pois["popularity"] = 1.0
    return pois.reset_index(drop=True), None, "data", None


def run(ctx) -> dict:
    pois, user_factors, source, poi_factors = _load(ctx)
    rng = np.random.default_rng(ctx.seed)
    cities = sorted(pois["city"].astype(str).unique()) if "city" in pois else [None]
    n = N_REQUESTS.get(ctx.scale, 24)
    pop = np.log1p(pois["popularity"].to_numpy(float)) if "popularity" in pois else np.ones(len(pois))
    plans, feasible, stops_per_day, solve_ms, infeasible = 0, 0, [], [], {}
    for i in range(n):
        city = cities[i % len(cities)]
        mask = (pois["city"].astype(str) == city).to_numpy() if city is not None else np.ones(len(pois), bool)
        city_pois = pois[mask].reset_index(drop=True)
        personal = user_factors is not None and i % 3 != 0  # every third request non-personalised
        if personal:
            scores = poi_factors[mask] @ user_factors[int(rng.integers(0, len(user_factors)))]
        else:
            scores = pop[mask]
        centre = (float(city_pois["lat"].median()), float(city_pois["lon"].median()))
        req = planner.PlanRequest(
            pois=city_pois, scores=np.asarray(scores, dtype=float), days=int(rng.integers(1, 4)),
            day_start=int(rng.choice([8 * 60, 9 * 60, 10 * 60])), day_end=int(rng.choice([18 * 60, 21 * 60, 22 * 60])),
            start=centre, travel_mode=str(rng.choice(["walk", "transit", "drive"], p=[0.2, 0.5, 0.3])),
            max_stops=int(rng.choice([3, 5, 7])), budget=float(rng.choice([300.0, 800.0, 2000.0])) if i % 2 else None,
            seed=ctx.seed + i, time_limit=0.5, max_iterations=150,
        )
        started = time.perf_counter()
        try:
            plan = planner.plan(req)
        except planner.InfeasibleRequest as exc:
            infeasible[exc.code] = infeasible.get(exc.code, 0) + 1
            continue
        solve_ms.append((time.perf_counter() - started) * 1000)
        plans += 1
        problems = check.check_plan(req, plan)
        if problems:
            ctx.log(f"itinerary plan {i} breaks {len(problems)} rule(s): {problems[:3]}")
        else:
            feasible += 1
        stops_per_day.extend(d["totals"]["stops"] for d in plan["days"])
    ctx.log(f"itinerary: {plans} plans from {source} scores, {feasible} pass the independent check")
    return {
        "requests": n, "plans": plans, "infeasible_requests": infeasible, "score_source": source,
        "feasible_share": round(feasible / plans, 4) if plans else 0.0,
        "mean_stops_per_day": round(float(np.mean(stops_per_day)), 2) if stops_per_day else 0.0,
        "mean_solve_ms": round(float(np.mean(solve_ms)), 1) if solve_ms else 0.0,
    }
