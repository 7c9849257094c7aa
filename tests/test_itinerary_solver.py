"""Itinerary solver: every plan passes the independent checker; infeasible requests say why."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wenlv.itinerary import check, core, planner

CATS = ["scenic_area", "museum", "heritage_street", "theme_park", "hotel", "restaurant", "nightlife"]


def make_pois(seed: int, n: int = 30, spread: float = 0.02) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cats = rng.choice(CATS, n, p=[0.25, 0.15, 0.1, 0.05, 0.05, 0.3, 0.1])
    return pd.DataFrame({
        "poi_id": [f"p{i}" for i in range(n)], "name": [f"POI {i}" for i in range(n)], "category": cats,
        "lat": 30.25 + rng.normal(0, spread, n), "lon": 120.16 + rng.normal(0, spread, n),
        "open_time": rng.choice(["07:30", "08:00", "09:00", "10:00", "11:00", "17:00"], n),
        "close_time": rng.choice(["12:00", "17:00", "18:00", "21:00", "22:00", "02:00"], n),
        "visit_minutes": rng.integers(20, 150, n), "price_cny": rng.integers(0, 150, n).astype(float),
        "popularity": rng.random(n),
    })


def fast(req: planner.PlanRequest) -> planner.PlanRequest:
    req.max_iterations, req.time_limit = 25, 30.0
    return req


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), days=st.integers(1, 3), mode=st.sampled_from(["walk", "transit", "drive"]),
       start=st.sampled_from([8 * 60, 9 * 60, 10 * 60]), end=st.sampled_from([16 * 60, 19 * 60, 21 * 60, 22 * 60]),
       pace=st.integers(1, 6), budget=st.one_of(st.none(), st.floats(50, 2000)), meals=st.booleans(),
       n_must=st.integers(0, 2), n_excl=st.integers(0, 4))
def test_every_plan_passes_the_independent_checker(seed, days, mode, start, end, pace, budget, meals, n_must, n_excl):
    pois = make_pois(seed)
    rng = np.random.default_rng(seed + 1)
    sights = pois.loc[~pois["category"].isin(["hotel", "restaurant"]), "poi_id"].tolist()
    shuffled = list(rng.permutation(sights))
    must, excl = shuffled[:n_must], shuffled[n_must:n_must + n_excl]
    req = fast(planner.PlanRequest(pois=pois, scores=rng.normal(size=len(pois)), days=days, day_start=start,
                                   day_end=end, start=(30.25, 120.16), travel_mode=mode, max_stops=pace,
                                   budget=budget, must_include=must, exclude=excl, meals=meals, seed=seed))
    try:
        plan = planner.plan(req)
    except planner.InfeasibleRequest as exc:
        assert exc.code and exc.reason  # a named reason, never an empty plan
        return
    assert check.check_plan(req, plan) == []
    assert all(day["totals"]["sights"] <= pace for day in plan["days"])


def test_checker_catches_a_broken_plan():
    pois = make_pois(3)
    req = fast(planner.PlanRequest(pois=pois, scores=pois["popularity"].to_numpy(), days=2, start=(30.25, 120.16),
                                   max_stops=3, travel_mode="transit"))
    plan = planner.plan(req)
    assert check.check_plan(req, plan) == []
    stop = plan["days"][0]["stops"][0]
    stop["arrive"] = "06:00"
    plan["days"][1]["stops"].append(dict(plan["days"][0]["stops"][1]))  # a repeat
    problems = check.check_plan(req, plan)
    assert any("arrives" in p for p in problems)
    assert any("already visited" in p for p in problems)


def test_plans_are_deterministic_for_a_seed():
    pois = make_pois(5, n=40)
    scores = pois["popularity"].to_numpy()
    a = planner.plan(fast(planner.PlanRequest(pois=pois, scores=scores, days=2, start=(30.25, 120.16), seed=11)))
    b = planner.plan(fast(planner.PlanRequest(pois=pois, scores=scores, days=2, start=(30.25, 120.16), seed=11)))
    assert a["days"] == b["days"]


def test_meals_land_in_their_windows_every_day():
    pois = make_pois(8, n=40)
    req = fast(planner.PlanRequest(pois=pois, scores=pois["popularity"].to_numpy(), days=2, start=(30.25, 120.16),
                                   day_start=9 * 60, day_end=21 * 60, travel_mode="drive"))
    plan = planner.plan(req)
    for day in plan["days"]:
        starts = sorted(planner.hhmm_to_minutes(s["start"]) for s in day["stops"] if s["kind"] == "meal")
        assert len(starts) == 2
        assert planner.LUNCH[0] <= starts[0] <= planner.LUNCH[1]
        assert planner.DINNER[0] <= starts[1] <= planner.DINNER[1]


@pytest.mark.parametrize("change, code", [
    (dict(budget=1.0), "budget_too_small"),
    (dict(day_start=2 * 60, day_end=5 * 60, meals=False), "nothing_open"),
    (dict(must_include=["nope"]), "unknown_poi"),
    (dict(must_include=["p1"], exclude=["p1"]), "conflict"),
])
def test_infeasible_requests_name_their_reason(change, code):
    pois = make_pois(4)
    pois.loc[1, "category"] = "museum"
    base = dict(pois=pois, scores=pois["popularity"].to_numpy(), days=1, start=(30.25, 120.16))
    with pytest.raises(planner.InfeasibleRequest) as err:
        planner.plan(fast(planner.PlanRequest(**{**base, **change})))
    assert err.value.code == code
    assert err.value.reason


def test_a_must_include_that_is_closed_all_day_is_refused():
    pois = make_pois(4)
    pois.loc[2, ["category", "open_time", "close_time", "visit_minutes"]] = ["museum", "09:00", "09:30", 60]
    req = fast(planner.PlanRequest(pois=pois, scores=pois["popularity"].to_numpy(), start=(30.25, 120.16),
                                   must_include=["p2"]))
    with pytest.raises(planner.InfeasibleRequest) as err:
        planner.plan(req)
    assert err.value.code == "must_include_impossible"
    assert "p2" in err.value.reason


def test_a_must_include_is_always_planned():
    pois = make_pois(6, n=40)
    low = pois.loc[pois["category"] == "museum", "poi_id"].iloc[0]
    scores = pois["popularity"].to_numpy().copy()
    scores[pois["poi_id"] == low] = -5.0  # least wanted, but required
    req = fast(planner.PlanRequest(pois=pois, scores=scores, days=1, start=(30.25, 120.16), travel_mode="drive",
                                   must_include=[low]))
    plan = planner.plan(req)
    assert low in {s["poi_id"] for d in plan["days"] for s in d["stops"]}
    assert check.check_plan(req, plan) == []


def test_core_beats_plain_greedy_insertion_on_a_random_instance():
    rng = np.random.default_rng(0)
    n = 60
    xy = rng.uniform(0, 100, (n + 2, 2))
    xy[-2:] = 50
    travel = np.sqrt(((xy[:, None] - xy[None]) ** 2).sum(-1))
    inst = core.Instance(profit=rng.integers(1, 30, n), duration=rng.uniform(5, 20, n), early=np.zeros(n),
                         late=rng.uniform(100, 400, n), travel=travel, day_start=0, day_end=400)
    greedy = core.initial_solution(inst)
    core.greedy_insert(inst, greedy)
    best, stats = core.solve(inst, seed=1, max_iterations=60, time_limit=30)
    assert best.score() >= greedy.score()
    assert stats.iterations >= 1


def test_a_given_travel_table_replaces_the_haversine_model():
    pois = make_pois(12, n=30)
    n = len(pois)
    rng = np.random.default_rng(12)
    table = rng.integers(5, 40, (n + 2, n + 2)).astype(float)
    table = np.maximum(table, table.T)
    np.fill_diagonal(table, 0)
    for k in range(n + 2):  # shortest paths: the removal step relies on the triangle inequality
        table = np.minimum(table, table[:, [k]] + table[[k], :])
    req = fast(planner.PlanRequest(pois=pois, scores=pois["popularity"].to_numpy(), days=2, start=(0.0, 0.0),
                                   travel_matrix=table, max_stops=4))
    plan = planner.plan(req)
    assert check.check_plan(req, plan) == []
    first = plan["days"][0]["stops"][0]
    row = int(np.flatnonzero(pois["poi_id"] == first["poi_id"])[0])
    assert first["travel_minutes"] == int(table[n, row])
    with pytest.raises(planner.InfeasibleRequest, match="travel_matrix"):
        planner.plan(fast(planner.PlanRequest(pois=pois, scores=pois["popularity"].to_numpy(), travel_matrix=table[:3, :3])))
