"""Independent feasibility check of a plan against its raw request.

Recomputes every leg and time from the POI table, coordinates and travel mode with its
own arithmetic; it shares no code with the solver or the planner's scheduling, only the
published meaning of a request (the travel-mode table, the meal windows, the rules
listed in itinerary/planner.py's docstring). Returns a list of violations: empty means
feasible.
"""
from __future__ import annotations

import math

from wenlv.geo import haversine_km
from wenlv.itinerary.travel import SAME_PLACE_KM, TRAVEL_MODES
from wenlv.timeofday import hhmm_to_minutes as _minutes


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(haversine_km(a[0], a[1], b[0], b[1]))


def leg_minutes(a: tuple[float, float], b: tuple[float, float], mode: str) -> int:
    speed, detour, fixed = TRAVEL_MODES[mode]
    km = _km(a, b)
    if km < SAME_PLACE_KM:
        return 0
    return int(math.ceil(fixed + km * detour / speed * 60.0 - 1e-9))


def check_plan(request, plan: dict) -> list[str]:
    """Every rule the plan breaks, named with the day and stop; [] when it is feasible.

    `request` is an itinerary.planner.PlanRequest (only its raw fields are read).
    """
    problems: list[str] = []
    pois = {str(r.poi_id): r for r in request.pois.itertuples(index=False)}
    mode = request.travel_mode
    home, end = tuple(request.start), tuple(request.end if request.end is not None else request.start)
    table = getattr(request, "travel_matrix", None)
    if table is not None:  # given travel times: places are row numbers, then start and end
        row = {str(p): i for i, p in enumerate(request.pois["poi_id"])}
        n = len(request.pois)

        def leg(a, b, _mode):
            return int(table[a, b])

        where0, end_place = n, n + 1
    else:
        leg = leg_minutes
        where0, end_place = home, end
    meals = [w for w in request.meal_windows if request.meals and request.day_start <= w[0] and w[1] <= request.day_end]
    seen: dict[str, int] = {}
    total_cost = 0.0
    if len(plan["days"]) != request.days:
        problems.append(f"plan has {len(plan['days'])} days, request asks for {request.days}")
    for day in plan["days"]:
        d = day["day"]
        where, t = where0, request.day_start
        sights, meal_starts = 0, []
        for k, stop in enumerate(day["stops"]):
            tag = f"day {d} stop {k + 1} ({stop['poi_id']})"
            poi = pois.get(stop["poi_id"])
            if poi is None:
                problems.append(f"{tag}: not in the POI table")
                continue
            if stop["poi_id"] in seen:
                problems.append(f"{tag}: already visited on day {seen[stop['poi_id']]}")
            seen[stop["poi_id"]] = d
            here = row[stop["poi_id"]] if table is not None else (float(poi.lat), float(poi.lon))
            minutes = leg(where, here, mode)
            if stop["travel_minutes"] != minutes:
                problems.append(f"{tag}: travel_minutes {stop['travel_minutes']} but the leg takes {minutes}")
            arrive, start, depart = _minutes(stop["arrive"]), _minutes(stop["start"]), _minutes(stop["depart"])
            if arrive != t + minutes:
                problems.append(f"{tag}: arrives {stop['arrive']} but leaving at {t} + {minutes} min gives {t + minutes}")
            if start < arrive:
                problems.append(f"{tag}: starts before arriving")
            if depart - start < int(poi.visit_minutes):
                problems.append(f"{tag}: stays {depart - start} min, the visit takes {poi.visit_minutes}")
            o, c = _minutes(poi.open_time), _minutes(poi.close_time)
            if c <= o:
                c += 1440
            if start < o or depart > c:
                problems.append(f"{tag}: {stop['start']}–{stop['depart']} outside opening {poi.open_time}–{poi.close_time}")
            if start < request.day_start:
                problems.append(f"{tag}: starts before the day starts")
            if poi.category == "hotel":
                problems.append(f"{tag}: a hotel is not a stop")
            if stop["poi_id"] in request.exclude:
                problems.append(f"{tag}: excluded by the visitor")
            if abs(float(stop["cost"]) - float(poi.price_cny)) > 1e-6:
                problems.append(f"{tag}: cost {stop['cost']} but the price is {poi.price_cny}")
            total_cost += float(poi.price_cny)
            if stop["kind"] == "meal":
                if poi.category != "restaurant":
                    problems.append(f"{tag}: a meal at a {poi.category}")
                meal_starts.append(start)
            elif stop["kind"] == "visit":
                if poi.category == "restaurant" and meals:
                    problems.append(f"{tag}: a restaurant as a sight while meals are planned")
                sights += 1
            else:
                problems.append(f"{tag}: unknown kind {stop['kind']!r}")
            where, t = here, depart
        back = leg(where, end_place, mode)
        if t + back > request.day_end:
            problems.append(f"day {d}: back at the end location at {t + back} min, after the day ends at {request.day_end}")
        if day.get("return_travel_minutes", back) != back:
            problems.append(f"day {d}: return_travel_minutes {day['return_travel_minutes']} but the leg takes {back}")
        if sights > request.max_stops:
            problems.append(f"day {d}: {sights} sights, pace allows {request.max_stops}")
        for w0, w1 in meals:
            inside = [s for s in meal_starts if w0 <= s <= w1]
            if len(inside) != 1:
                problems.append(f"day {d}: {len(inside)} meals start in the window {w0}–{w1} min (need exactly one)")
        if len(meal_starts) != len(meals):
            problems.append(f"day {d}: {len(meal_starts)} meals, {len(meals)} meal windows")
        stated = day.get("totals", {})
        if stated and abs(stated.get("cost_cny", 0.0) - sum(float(s["cost"]) for s in day["stops"])) > 1e-6:
            problems.append(f"day {d}: totals.cost_cny does not add up")
    if request.budget is not None and total_cost > request.budget + 1e-6:
        problems.append(f"spends {total_cost:.2f} CNY over the budget {request.budget}")
    for p in request.must_include:
        if p not in seen:
            problems.append(f"must-include POI {p} is missing")
    if abs(plan.get("totals", {}).get("cost_cny", total_cost) - total_cost) > 1e-6:
        problems.append("totals.cost_cny does not add up")
    return problems
