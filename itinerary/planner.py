"""Visitor itineraries: a request over a POI table → core instance → solved, readable plan.

Rules a plan follows (the checker in itinerary/check.py verifies each from the raw request):
- one route per day from the start location to the end location within the daily hours;
- a sight starts no earlier than opening and ends no later than closing (closing at or
  before opening means past midnight); a stay lasts the POI's visit_minutes;
- restaurants are meals: when a day's hours cover a meal window, that day holds exactly
  one restaurant whose meal starts inside the window (lunch 11:00–13:30, dinner 17:30–20:00);
- hotels are never stops (the hotel is the start/end location);
- at most `max_stops` sights per day (meals not counted); no POI twice in the trip;
- the sum of price_cny over all stops stays within the budget; must_include all appear,
  exclude never does.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from wenlv.itinerary import core
from wenlv.itinerary.travel import minutes_matrix
from wenlv.errors import WenlvError
from wenlv.features.contracts import POI_PLAN_COLUMNS
from wenlv.timeofday import hhmm_to_minutes, minutes_to_hhmm  # noqa: F401 - part of the planner's API

LUNCH = (11 * 60, 13 * 60 + 30)
DINNER = (17 * 60 + 30, 20 * 60)
PACE_STOPS = {"relaxed": 3, "moderate": 5, "packed": 7}
NOT_STOPS = {"hotel"}
MEAL_CATEGORY = "restaurant"


class InfeasibleRequest(WenlvError):
    """No plan can satisfy the request; `code` and `detail` say which requirement fails."""

    def __init__(self, code: str, reason: str, detail: dict | None = None):
        super().__init__(reason)
        self.code, self.reason, self.detail = code, reason, detail or {}

    def as_dict(self) -> dict:
        return {"code": self.code, "reason": self.reason, "detail": self.detail}


@dataclass
class PlanRequest:
    pois: pd.DataFrame
    scores: np.ndarray  # one per row of pois; higher is better
    days: int = 1
    day_start: int = 9 * 60
    day_end: int = 21 * 60
    start: tuple[float, float] = (0.0, 0.0)
    end: tuple[float, float] | None = None
    travel_mode: str = "walk"
    max_stops: int = 5
    budget: float | None = None
    must_include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    meals: bool = True
    meal_windows: tuple[tuple[int, int], ...] = (LUNCH, DINNER)
    seed: int = 0
    time_limit: float = 1.0
    max_iterations: int = 300
    # Optional given travel times in whole minutes, (len(pois)+2)², rows/cols = POI rows, then
    # the start and the end location; replaces the haversine model of `travel_mode`.
    travel_matrix: np.ndarray | None = None

    @property
    def end_location(self) -> tuple[float, float]:
        return self.end if self.end is not None else self.start

    def required_meals(self) -> list[tuple[int, int]]:
        """Meal windows the day's hours fully cover (a day ending 17:00 needs no dinner)."""
        if not self.meals:
            return []
        return [w for w in self.meal_windows if self.day_start <= w[0] and w[1] <= self.day_end]


def opening_minutes(open_time: str, close_time: str) -> tuple[int, int]:
    """(open, close) in minutes after midnight; a close at/before open is on the next day."""
    o, c = hhmm_to_minutes(open_time), hhmm_to_minutes(close_time)
    return (o, c + 1440) if c <= o else (o, c)


@dataclass
class _Built:
    inst: core.Instance
    node_row: np.ndarray  # row of req.pois per node
    node_kind: list[str]  # "visit" / "meal"
    slots: list[tuple[int, int]]


def _validate(req: PlanRequest) -> None:
    missing = [c for c in POI_PLAN_COLUMNS if c not in req.pois.columns]
    if missing:
        raise InfeasibleRequest("bad_poi_table", f"POI table lacks columns {missing}")
    if len(req.scores) != len(req.pois):
        raise InfeasibleRequest("bad_scores", f"{len(req.scores)} scores for {len(req.pois)} POIs")
    if not 1 <= req.days <= 14:
        raise InfeasibleRequest("bad_days", f"days must be 1..14, got {req.days}")
    if req.day_end <= req.day_start:
        raise InfeasibleRequest("bad_hours", "daily end must be after daily start")
    if req.max_stops < 1:
        raise InfeasibleRequest("bad_pace", "at least one stop per day")
    if req.travel_matrix is not None:
        m = np.asarray(req.travel_matrix, dtype=float)
        if m.shape != (len(req.pois) + 2, len(req.pois) + 2):
            raise InfeasibleRequest("bad_travel_matrix", f"travel_matrix must be {(len(req.pois) + 2,) * 2}, got {m.shape}")
        if not np.isfinite(m).all() or (m < 0).any() or (m != np.round(m)).any():
            raise InfeasibleRequest("bad_travel_matrix", "travel_matrix must hold non-negative whole minutes")
    if req.budget is not None and req.budget < 0:
        raise InfeasibleRequest("bad_budget", "budget_cny must not be negative")
    known = set(req.pois["poi_id"].astype(str))
    unknown = sorted({*req.must_include, *req.exclude} - known)
    if unknown:
        raise InfeasibleRequest("unknown_poi", f"unknown POI ids: {unknown}", {"poi_ids": unknown})
    both = sorted(set(req.must_include) & set(req.exclude))
    if both:
        raise InfeasibleRequest("conflict", f"POIs both required and excluded: {both}", {"poi_ids": both})
    cats = req.pois.set_index(req.pois["poi_id"].astype(str))["category"]
    hotels = sorted(p for p in req.must_include if cats.get(p) in NOT_STOPS)
    if hotels:
        raise InfeasibleRequest("must_include_impossible", f"hotels are not stops (use them as start_location): {hotels}",
                                {"poi_ids": hotels})
    sights = [p for p in req.must_include if cats.get(p) != MEAL_CATEGORY or not req.required_meals()]
    if len(sights) > req.days * req.max_stops:
        raise InfeasibleRequest("must_include_impossible",
                                f"{len(sights)} must-include sights exceed {req.days} day(s) × {req.max_stops} stops",
                                {"poi_ids": sights})


def build(req: PlanRequest) -> _Built:
    """Core instance of a request; raises InfeasibleRequest with a reason a visitor understands."""
    _validate(req)
    pois = req.pois.reset_index(drop=True)
    ids = pois["poi_id"].astype(str).to_numpy()
    excluded = np.isin(ids, list(req.exclude))
    slots = req.required_meals()
    rows, kinds, slot_of, early, late = [], [], [], [], []
    day_len = req.day_end - req.day_start
    for r in range(len(pois)):
        cat = pois.at[r, "category"]
        if excluded[r] or cat in NOT_STOPS:
            continue
        o, c = opening_minutes(pois.at[r, "open_time"], pois.at[r, "close_time"])
        dur = int(pois.at[r, "visit_minutes"])
        if cat == MEAL_CATEGORY and slots:
            for s, (w0, w1) in enumerate(slots):
                e, l = max(o, w0), min(c - dur, w1)
                if e <= l:
                    rows.append(r), kinds.append("meal"), slot_of.append(s), early.append(e), late.append(l)
        else:
            e, l = max(o, req.day_start), min(c - dur, req.day_end - dur)
            if e <= l and dur <= day_len:
                rows.append(r), kinds.append("visit"), slot_of.append(-1), early.append(e), late.append(l)
    rows = np.array(rows, dtype=int)
    if req.travel_matrix is not None:
        ix = np.r_[rows, len(pois), len(pois) + 1]
        travel = np.asarray(req.travel_matrix, dtype=float)[np.ix_(ix, ix)]
    else:
        lat = np.r_[pois["lat"].to_numpy(float)[rows], req.start[0], req.end_location[0]]
        lon = np.r_[pois["lon"].to_numpy(float)[rows], req.start[1], req.end_location[1]]
        travel = minutes_matrix(lat, lon, req.travel_mode)
    scores = np.asarray(req.scores, dtype=float)[rows] if len(rows) else np.zeros(0)
    profit = _positive(scores)
    budget = float("inf") if req.budget is None else float(req.budget)
    must_rows = set(np.flatnonzero(np.isin(ids, list(req.must_include))).tolist())
    inst = core.Instance(
        profit=profit, duration=pois["visit_minutes"].to_numpy(float)[rows] if len(rows) else np.zeros(0),
        early=np.array(early, dtype=float), late=np.array(late, dtype=float), travel=travel,
        day_start=req.day_start, day_end=req.day_end, n_days=req.days,
        cost=pois["price_cny"].to_numpy(float)[rows] if len(rows) else np.zeros(0), budget=budget,
        max_visits=req.max_stops, group=rows, slot=np.array(slot_of, dtype=int), n_slots=len(slots),
        must_groups=frozenset(must_rows),
    )
    built = _Built(inst, rows, kinds, slots)
    _precheck(req, built, ids)
    return built


def _positive(scores: np.ndarray) -> np.ndarray:
    """Map any scores to profits in [0.05, 1] (the insertion rule needs positive profits)."""
    if len(scores) == 0:
        return scores
    lo, hi = float(np.min(scores)), float(np.max(scores))
    if hi - lo < 1e-12:
        return np.ones_like(scores)
    return 0.05 + 0.95 * (scores - lo) / (hi - lo)


def _reachable(inst: core.Instance) -> np.ndarray:
    """Nodes a day can hold on their own (reach from start, window, back to the end in time)."""
    T = inst.travel
    arrive = inst.day_start + T[inst.start, : inst.n]
    s = np.maximum(arrive, inst.early)
    return (s <= inst.late) & (s + inst.duration + T[: inst.n, inst.end] <= inst.day_end)


def _precheck(req: PlanRequest, built: _Built, ids: np.ndarray) -> None:
    inst = built.inst
    ok = _reachable(inst) if inst.n else np.zeros(0, dtype=bool)
    sights_ok = ok & (inst.slot < 0)
    if not sights_ok.any():
        raise InfeasibleRequest("nothing_open", "no sight is open and reachable within the daily hours "
                                f"{minutes_to_hhmm(req.day_start)}–{minutes_to_hhmm(req.day_end)} by {req.travel_mode}")
    budget = inst.budget
    for p in req.must_include:
        r = int(np.flatnonzero(ids == p)[0])
        nodes = np.flatnonzero(built.node_row == r)
        if len(nodes) == 0 or not ok[nodes].any():
            raise InfeasibleRequest("must_include_impossible",
                                    f"must-include POI {p} is not open (long enough) and reachable within the daily hours",
                                    {"poi_ids": [p]})
        if inst.cost[nodes].min() > budget:
            raise InfeasibleRequest("budget_too_small", f"must-include POI {p} alone costs more than the budget",
                                    {"poi_ids": [p], "budget_cny": budget})
    for s, (w0, w1) in enumerate(built.slots):
        meal_nodes = np.flatnonzero((inst.slot == s) & ok)
        if len(np.unique(inst.group[meal_nodes])) < req.days:
            raise InfeasibleRequest("no_restaurant", f"fewer than {req.days} restaurant(s) open and reachable for the "
                                    f"meal window {minutes_to_hhmm(w0)}–{minutes_to_hhmm(w1)}",
                                    {"meal_window": [minutes_to_hhmm(w0), minutes_to_hhmm(w1)]})
    if built.slots:
        usable = np.unique(inst.group[np.flatnonzero((inst.slot >= 0) & ok)])
        need = req.days * len(built.slots)
        if len(usable) < need:
            raise InfeasibleRequest("no_restaurant", f"the trip needs {need} different restaurants ({len(built.slots)} "
                                    f"meal(s) × {req.days} day(s), no place twice) but only {len(usable)} fit the meal windows",
                                    {"restaurants_needed": need, "restaurants_available": int(len(usable))})
    if built.slots and budget < float("inf"):
        cheapest = _cheapest_meals(inst, req.days, ok)
        if cheapest > budget + 1e-9:
            raise InfeasibleRequest("budget_too_small", f"the meals alone cost at least {cheapest:.0f} CNY, "
                                    f"over the budget of {budget:.0f} CNY",
                                    {"min_meals_cny": cheapest, "budget_cny": budget})
    musts = sum(float(inst.cost[np.flatnonzero(built.node_row == int(np.flatnonzero(ids == p)[0]))].min())
                for p in req.must_include)
    if musts > budget + 1e-9:
        raise InfeasibleRequest("budget_too_small", f"the must-include POIs cost {musts:.0f} CNY, over the budget",
                                {"must_cny": musts, "budget_cny": budget})


def _cheapest_meals(inst: core.Instance, days: int, ok: np.ndarray) -> float:
    """A lower bound on the trip's meal spend: the cheapest distinct restaurants, slot by slot."""
    total, used = 0.0, set()
    for s in range(inst.n_slots):
        nodes = [j for j in np.flatnonzero((inst.slot == s) & ok) if inst.group[j] not in used]
        nodes.sort(key=lambda j: inst.cost[j])
        pick = nodes[:days]
        used.update(int(inst.group[j]) for j in pick)
        total += float(sum(inst.cost[j] for j in pick))
    return total


def plan(req: PlanRequest) -> dict:
    """A multi-day plan for the request, or InfeasibleRequest with a reason."""
    built = build(req)
    try:
        sol, stats = core.solve(built.inst, seed=req.seed, max_iterations=req.max_iterations,
                                time_limit=req.time_limit)
    except core.Infeasible as exc:
        raise _explain(req, exc) from None
    return render(req, built, sol, stats)


def _explain(req: PlanRequest, exc: core.Infeasible) -> InfeasibleRequest:
    pois = req.pois.reset_index(drop=True)
    if "must_group" in exc.detail:
        p = str(pois.at[exc.detail["must_group"], "poi_id"])
        return InfeasibleRequest("must_include_impossible",
                                 f"must-include POI {p} cannot be fitted together with the meals, pace, budget and hours",
                                 {"poi_ids": [p]})
    if "meal_slot" in exc.detail:
        w0, w1 = req.required_meals()[exc.detail["meal_slot"]]
        return InfeasibleRequest("no_restaurant",
                                 f"day {exc.detail['day']}: no restaurant fits the meal window "
                                 f"{minutes_to_hhmm(w0)}–{minutes_to_hhmm(w1)} within the budget, hours and pace "
                                 "(or every suitable restaurant is already used)",
                                 {"day": exc.detail["day"], "meal_window": [minutes_to_hhmm(w0), minutes_to_hhmm(w1)]})
    return InfeasibleRequest("infeasible", exc.reason)


def render(req: PlanRequest, built: _Built, sol: core.Solution, stats: core.SolveStats) -> dict:
    inst, pois = built.inst, req.pois.reset_index(drop=True)
    days, grand = [], {"stops": 0, "sights": 0, "meals": 0, "cost_cny": 0.0, "travel_minutes": 0, "score": 0.0}
    T = inst.travel
    for d, route in enumerate(sol.routes):
        stops, prev, t = [], inst.start, float(inst.day_start)
        for k, j in enumerate(route.nodes):
            r = int(built.node_row[j])
            travel = int(T[prev, j])
            arrive = t + travel
            start = float(route.start[k])
            depart = start + float(inst.duration[j])
            stops.append({
                "poi_id": str(pois.at[r, "poi_id"]), "name": str(pois.at[r, "name"]),
                "category": str(pois.at[r, "category"]), "kind": built.node_kind[j],
                "arrive": minutes_to_hhmm(arrive), "start": minutes_to_hhmm(start), "depart": minutes_to_hhmm(depart),
                "travel_minutes": travel, "cost": float(inst.cost[j]), "score": float(req.scores[r]),
            })
            prev, t = j, depart
        back = int(T[prev, inst.end])
        totals = {
            "stops": len(stops), "sights": sum(s["kind"] == "visit" for s in stops),
            "meals": sum(s["kind"] == "meal" for s in stops), "cost_cny": float(sum(s["cost"] for s in stops)),
            "travel_minutes": int(sum(s["travel_minutes"] for s in stops) + back),
            "score": float(sum(s["score"] for s in stops)),
        }
        days.append({"day": d + 1, "stops": stops, "return_travel_minutes": back,
                     "end_arrive": minutes_to_hhmm(t + back), "totals": totals})
        for key in grand:
            grand[key] += totals[key]
    return {"days": days, "totals": grand,
            "solver": {"iterations": stats.iterations, "seconds": round(stats.seconds, 4),
                       "stopped_by": stats.stopped_by, "seed": req.seed}}
