"""`wenlv itinerary plan`: plan a trip from a model bundle (or a raw POI table) on the
command line, and say whether the independent checker accepts it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from wenlv.errors import WenlvError
from wenlv.features.contracts import POIS
from wenlv.features.io import read_pandas
from wenlv.itinerary import check, planner
from wenlv.training.bundle import ModelBundle


def register(sub) -> None:
    p = sub.add_parser("itinerary", help="multi-day itineraries (orienteering with time windows)")
    isub = p.add_subparsers(dest="itinerary_command", required=True, metavar="ACTION")
    plan = isub.add_parser("plan", help="plan a trip and check it")
    src = plan.add_mutually_exclusive_group(required=True)
    src.add_argument("--bundle", type=Path, help="model bundle folder (personal scores for --token)")
    src.add_argument("--data", type=Path, help="raw data folder with tourism/pois (popularity-free: equal scores)")
    plan.add_argument("--city", required=True, help="city whose POIs to plan over")
    plan.add_argument("--token", default=None, help="visitor token in the bundle (personal scores)")
    plan.add_argument("--days", type=int, default=1, help="trip length in days")
    plan.add_argument("--hours", default="09:00-21:00", help="daily start-end, HH:MM-HH:MM")
    plan.add_argument("--start", required=True, help="start location lat,lon")
    plan.add_argument("--mode", choices=("walk", "transit", "drive"), default="transit", help="how the visitor travels between stops")
    plan.add_argument("--pace", type=int, default=5, help="sights per day")
    plan.add_argument("--budget", type=float, default=None, help="CNY for the whole trip")
    plan.add_argument("--must", action="append", default=[], help="POI id that must be visited (repeatable)")
    plan.add_argument("--exclude", action="append", default=[], help="POI id to leave out (repeatable)")
    plan.add_argument("--no-meals", action="store_true", help="no lunch and dinner stops")
    plan.add_argument("--seed", type=int, default=0, help="solver random seed")
    plan.set_defaults(func=main)


def main(args) -> int:
    if args.bundle:
        bundle = ModelBundle.load(args.bundle)
        pois = bundle.pois
        scores = np.log1p(pois["popularity"].to_numpy(float)) if "popularity" in pois else np.ones(len(pois))
        if args.token:
            rows = np.flatnonzero(bundle.users["token"].astype(str).to_numpy() == args.token)
            if len(rows) == 0:
                raise WenlvError(f"token not in the bundle; use no --token for popularity")
            scores = bundle.poi_factors @ bundle.user_factors[rows[0]]
    else:
        pois = read_pandas(args.data, POIS)
        scores = np.ones(len(pois))
    mask = (pois["city"].astype(str).str.lower() == args.city.lower()).to_numpy()
    if not mask.any():
        raise WenlvError(f"no POIs in city {args.city!r}")
    try:
        lat, lon = (float(v) for v in args.start.split(","))
        h0, h1 = args.hours.split("-")
        req = planner.PlanRequest(
            pois=pois[mask].reset_index(drop=True), scores=np.asarray(scores, dtype=float)[mask], days=args.days,
            day_start=planner.hhmm_to_minutes(h0), day_end=planner.hhmm_to_minutes(h1), start=(lat, lon),
            travel_mode=args.mode, max_stops=args.pace, budget=args.budget, must_include=args.must,
            exclude=args.exclude, meals=not args.no_meals, seed=args.seed)
    except ValueError as exc:
        raise WenlvError(f"bad --start or --hours: {exc}") from None
    try:
        result = planner.plan(req)
    except planner.InfeasibleRequest as exc:
        print(json.dumps({"infeasible": exc.as_dict()}))
        return 1
    result["check"] = check.check_plan(req, result) or "ok"
    print(json.dumps(result, default=str))
    return 0
