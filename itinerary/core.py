"""The orienteering core: one route per day, time windows, a budget, a pace and meal slots.

The instance is plain numpy arrays so the same solver runs Solomon TOPTW benchmarks and
visitor itineraries. Method: iterated local search in the style of Vansteenwegen et al.
(2009) — greedy insertion by profit²/shift using each visit's wait and MaxShift, and a
perturbation that removes a run of consecutive visits — strengthened with three moves
the original lacks: time-reducing 2-opt and relocate inside a route (which frees slack
for more insertions), a swap of a routed visit for a better unrouted one, and restarts
from the best plan with a seeded random perturbation. Deterministic for a seed as long
as the iteration cap, not the time limit, ends the search.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

INF = float("inf")
EPS = 1e-9


@dataclass
class Instance:
    """Nodes 0..n-1; travel is (n+2)×(n+2) with n = start depot and n+1 = end depot.

    `group` ties nodes that are one place (a restaurant's lunch and dinner copies): at
    most one node per group in the whole plan. `slot` is -1 for a sight and s ≥ 0 for
    meal slot s, which every day must hold exactly once (when `meals_required`).
    `must_groups` must each appear somewhere in the plan.
    """

    profit: np.ndarray
    duration: np.ndarray
    early: np.ndarray  # earliest start of service
    late: np.ndarray  # latest start of service
    travel: np.ndarray
    day_start: float
    day_end: float
    n_days: int = 1
    cost: np.ndarray | None = None
    budget: float = INF
    max_visits: int = 10**6  # sights per day (meals not counted)
    group: np.ndarray | None = None
    slot: np.ndarray | None = None
    n_slots: int = 0
    must_groups: frozenset = frozenset()

    def __post_init__(self):
        n = len(self.profit)
        self.profit = np.asarray(self.profit, dtype=float)
        self.duration = np.asarray(self.duration, dtype=float)
        self.early = np.asarray(self.early, dtype=float)
        self.late = np.asarray(self.late, dtype=float)
        self.travel = np.asarray(self.travel, dtype=float)
        self.cost = np.zeros(n) if self.cost is None else np.asarray(self.cost, dtype=float)
        self.group = np.arange(n) if self.group is None else np.asarray(self.group, dtype=int)
        self.slot = np.full(n, -1) if self.slot is None else np.asarray(self.slot, dtype=int)
        self._lists = None
        if self.travel.shape != (n + 2, n + 2):
            raise ValueError(f"travel must be {(n + 2, n + 2)}, got {self.travel.shape}")
        for name in ("duration", "early", "late", "cost", "group", "slot"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} entries for {n} nodes")

    def lists(self):
        """Plain-Python copies for the scalar scheduling loop (numpy scalars are slow there)."""
        if self._lists is None:
            self._lists = (self.travel.tolist(), self.early.tolist(), self.late.tolist(), self.duration.tolist())
        return self._lists

    @property
    def n(self) -> int:
        return len(self.profit)

    @property
    def start(self) -> int:
        return self.n

    @property
    def end(self) -> int:
        return self.n + 1


@dataclass
class Route:
    """One day's ordered nodes and, per node, service start, wait and MaxShift."""

    nodes: list[int] = field(default_factory=list)
    start: np.ndarray = field(default_factory=lambda: np.zeros(0))
    wait: np.ndarray = field(default_factory=lambda: np.zeros(0))
    max_shift: np.ndarray = field(default_factory=lambda: np.zeros(0))
    end_arrival: float = 0.0
    end_slack: float = 0.0  # how much later the route may reach the end depot

    def copy(self) -> "Route":
        return Route(list(self.nodes), self.start.copy(), self.wait.copy(), self.max_shift.copy(),
                     self.end_arrival, self.end_slack)


def schedule(inst: Instance, nodes: list[int]) -> Route | None:
    """Times of a node sequence (earliest schedule), or None when a window or the day breaks."""
    m = len(nodes)
    start = [0.0] * m
    wait = [0.0] * m
    prev, t = inst.start, inst.day_start
    T, early, late, dur = inst.lists()
    for k, j in enumerate(nodes):
        arrive = t + T[prev][j]
        s = arrive if arrive > early[j] else early[j]
        if s > late[j] + EPS:
            return None
        start[k], wait[k] = s, s - arrive
        t = s + dur[j]
        prev = j
    end_arrival = t + T[prev][inst.end]
    if end_arrival > inst.day_end + EPS:
        return None
    end_slack = inst.day_end - end_arrival
    max_shift = [0.0] * m
    nxt = end_slack  # wait + MaxShift of the following stop
    for k in range(m - 1, -1, -1):
        ms = late[nodes[k]] - start[k]
        max_shift[k] = ms if ms < nxt else nxt
        nxt = wait[k] + max_shift[k]
    return Route(list(nodes), np.array(start), np.array(wait), np.array(max_shift), end_arrival, end_slack)


def end_time(inst: Instance, nodes: list[int]) -> float:
    """Arrival at the end depot, or inf when the sequence breaks a window (cheap check)."""
    prev, t = inst.start, inst.day_start
    T, early, late, dur = inst.lists()
    for j in nodes:
        t += T[prev][j]
        if t < early[j]:
            t = early[j]
        elif t > late[j] + EPS:
            return INF
        t += dur[j]
        prev = j
    t += T[prev][inst.end]
    return t if t <= inst.day_end + EPS else INF


class Solution:
    """Routes plus the bookkeeping the moves need (used groups, spend, sights per day)."""

    def __init__(self, inst: Instance, routes: list[Route]):
        self.inst = inst
        self.routes = routes

    def copy(self) -> "Solution":
        return Solution(self.inst, [r.copy() for r in self.routes])

    def routed(self) -> list[int]:
        return [j for r in self.routes for j in r.nodes]

    def score(self) -> float:
        return float(sum(self.inst.profit[j] for j in self.routed()))

    def spend(self) -> float:
        return float(sum(self.inst.cost[j] for j in self.routed()))

    def used_groups(self) -> set[int]:
        return {int(self.inst.group[j]) for j in self.routed()}

    def sights(self, d: int) -> int:
        return sum(1 for j in self.routes[d].nodes if self.inst.slot[j] < 0)

    def key(self) -> tuple:
        return tuple(tuple(r.nodes) for r in self.routes)


def _insertion_table(inst: Instance, route: Route, cands: np.ndarray):
    """Shift and feasibility of inserting every candidate at every position of a route.

    Returns (shift [c, m+1], feasible [c, m+1]); position k means before route.nodes[k].
    """
    nodes = route.nodes
    m = len(nodes)
    prev_ids = np.array([inst.start] + nodes, dtype=int)
    next_ids = np.array(nodes + [inst.end], dtype=int)
    depart_prev = np.empty(m + 1)
    depart_prev[0] = inst.day_start
    if m:
        depart_prev[1:] = route.start + inst.duration[nodes]
    slack_next = np.empty(m + 1)
    slack_next[:m] = route.wait + route.max_shift
    slack_next[m] = route.end_slack
    T = inst.travel
    t_pc = T[np.ix_(prev_ids, cands)].T  # [c, m+1]
    t_cn = T[np.ix_(cands, next_ids)]  # [c, m+1]
    t_pn = T[prev_ids, next_ids]  # [m+1]
    arrive = depart_prev[None, :] + t_pc
    s = np.maximum(arrive, inst.early[cands][:, None])
    shift = t_pc + (s - arrive) + inst.duration[cands][:, None] + t_cn - t_pn[None, :]
    feasible = (s <= inst.late[cands][:, None] + EPS) & (shift <= slack_next[None, :] + EPS)
    return shift, feasible


def _candidates(inst: Instance, sol: Solution, d: int, sights_only: bool = True) -> np.ndarray:
    routed = sol.routed()
    room = inst.budget - float(inst.cost[routed].sum()) if routed else inst.budget
    used = np.zeros(int(inst.group.max()) + 1 if inst.n else 1, dtype=bool)
    if routed:
        used[inst.group[routed]] = True
    ok = (inst.cost <= room + EPS) & ~used[inst.group]
    if sights_only:
        ok &= inst.slot < 0
        if sol.sights(d) >= inst.max_visits:
            return np.zeros(0, dtype=int)
    return np.flatnonzero(ok)


def insert_at(inst: Instance, route: Route, j: int, pos: int) -> Route | None:
    return schedule(inst, route.nodes[:pos] + [j] + route.nodes[pos:])


def greedy_insert(inst: Instance, sol: Solution, rng: np.random.Generator | None = None, noise: float = 0.0,
                  power: float = 2.0) -> None:
    """Insert sights by the best profit²/shift until nothing fits (Vansteenwegen's rule)."""
    while True:
        best = None
        for d, route in enumerate(sol.routes):
            cands = _candidates(inst, sol, d)
            if len(cands) == 0:
                continue
            shift, feasible = _insertion_table(inst, route, cands)
            if not feasible.any():
                continue
            ratio = np.where(feasible, inst.profit[cands][:, None] ** power / np.maximum(shift, 1e-3), -np.inf)
            if noise and rng is not None:
                ratio = ratio * (1.0 + noise * rng.random(ratio.shape))
            ci, pos = np.unravel_index(int(np.argmax(ratio)), ratio.shape)
            if best is None or ratio[ci, pos] > best[0]:
                best = (ratio[ci, pos], d, int(cands[ci]), int(pos))
        if best is None:
            return
        _, d, j, pos = best
        new = insert_at(inst, sol.routes[d], j, pos)
        if new is None:  # numerical edge: drop this candidate's move by marking it unusable
            return
        sol.routes[d] = new


def cheapest_insert(inst: Instance, sol: Solution, cands: np.ndarray, days=None) -> tuple[int, int, int] | None:
    """(day, node, position) of the feasible insertion with the least shift among `cands`."""
    best = None
    for d in (range(len(sol.routes)) if days is None else days):
        if len(cands) == 0:
            continue
        shift, feasible = _insertion_table(inst, sol.routes[d], cands)
        if not feasible.any():
            continue
        # prefer high profit among near-equal shifts: shift minus a small profit credit
        val = np.where(feasible, shift - 1e-3 * inst.profit[cands][:, None], np.inf)
        ci, pos = np.unravel_index(int(np.argmin(val)), val.shape)
        if best is None or val[ci, pos] < best[0]:
            best = (val[ci, pos], d, int(cands[ci]), int(pos))
    return None if best is None else best[1:]


def _apply(inst: Instance, sol: Solution, move) -> bool:
    d, j, pos = move
    new = insert_at(inst, sol.routes[d], j, pos)
    if new is None:
        return False
    sol.routes[d] = new
    return True


def tighten(inst: Instance, route: Route) -> Route:
    """2-opt and relocate moves that make the day end earlier (more room for insertions): the first
    such move (2-opt before relocate), again from the new route, until none is left."""
    best = route
    while True:
        for cand in _neighbours(best.nodes):
            if end_time(inst, cand) < best.end_arrival - 1e-6:
                best = schedule(inst, cand)
                break
        else:
            return best


def _neighbours(nodes: list[int]):
    """Every 2-opt reversal of `nodes`, then every relocation of one node, in a fixed order."""
    m = len(nodes)
    for i in range(m - 1):
        for k in range(i + 1, m):
            yield nodes[:i] + nodes[i:k + 1][::-1] + nodes[k + 1:]
    for i in range(m):
        rest = nodes[:i] + nodes[i + 1:]
        for k in range(m):
            if k != i:
                yield rest[:k] + [nodes[i]] + rest[k:]


def swap_improve(inst: Instance, sol: Solution, protected: set[int]) -> bool:
    """Replace one routed sight with an unrouted one of more profit, where it fits."""
    improved_any = False
    for d in range(len(sol.routes)):
        i = 0
        while i < len(sol.routes[d].nodes):
            route = sol.routes[d]
            j_out = route.nodes[i]
            if inst.slot[j_out] >= 0 or int(inst.group[j_out]) in protected:
                i += 1
                continue
            without = schedule(inst, route.nodes[:i] + route.nodes[i + 1:])
            if without is None:
                i += 1
                continue
            saved = sol.routes[d]
            sol.routes[d] = without
            cands = _candidates(inst, sol, d)
            sol.routes[d] = saved
            cands = cands[inst.profit[cands] > inst.profit[j_out] + 1e-9]
            if len(cands):
                shift, feasible = _insertion_table(inst, without, cands)
                rows = feasible.any(axis=1)
                if rows.any():
                    gain = np.where(rows, inst.profit[cands], -np.inf)
                    ci = int(np.argmax(gain))
                    pos = int(np.argmin(np.where(feasible[ci], shift[ci], np.inf)))
                    new = insert_at(inst, without, int(cands[ci]), pos)
                    if new is not None:
                        sol.routes[d] = new
                        improved_any = True
                        continue
            i += 1
    return improved_any


class Infeasible(Exception):
    """The hard requirements (meals, must-visit places) cannot all be placed."""

    def __init__(self, reason: str, detail: dict | None = None):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail or {}


def _place_required(inst: Instance, sol: Solution, order: str, slot_major: bool = False,
                    scarce_first: bool = False) -> tuple[str, dict] | None:
    """Place meal slots and must-visit groups; returns None or (why it failed, detail).

    `slot_major` fills every day's lunch before any dinner; `scarce_first` prefers
    restaurants that fit only this meal slot, keeping two-slot ones for later.
    """
    flexible = np.bincount(inst.group, minlength=int(inst.group.max()) + 1)[inst.group] > 1 if inst.n else np.zeros(0, bool)

    def has_slot(d: int, s: int) -> bool:
        return any(inst.slot[j] == s for j in sol.routes[d].nodes)

    def meals() -> tuple[str, dict] | None:
        pairs = [(d, s) for d in range(inst.n_days) for s in range(inst.n_slots)]
        if slot_major:
            pairs.sort(key=lambda ds: (ds[1], ds[0]))
        for d, s in pairs:
            if has_slot(d, s):
                continue
            cands = _candidates(inst, sol, d, sights_only=False)
            cands = cands[inst.slot[cands] == s]
            if scarce_first and (~flexible[cands]).any():
                single = cands[~flexible[cands]]
                if cheapest_insert(inst, sol, single, days=[d]) is not None:
                    cands = single
            if len(cands) == 0:
                return (f"no restaurant left for meal slot {s} on day {d + 1} (all used, or over budget)",
                        {"meal_slot": s, "day": d + 1})
            move = cheapest_insert(inst, sol, cands, days=[d])
            if move is None or not _apply(inst, sol, move):
                return (f"no restaurant fits meal slot {s} on day {d + 1} (opening hours, travel time or the day's hours)",
                        {"meal_slot": s, "day": d + 1})
        return None

    def musts() -> tuple[str, dict] | None:
        for g in sorted(inst.must_groups):
            if g in sol.used_groups():
                continue
            nodes = np.flatnonzero((inst.group == g) & (inst.cost <= inst.budget - sol.spend() + EPS))
            best = None
            for d in range(inst.n_days):
                ok = [j for j in nodes if (inst.slot[j] < 0 and sol.sights(d) < inst.max_visits)
                      or (inst.slot[j] >= 0 and not has_slot(d, int(inst.slot[j])))]
                move = cheapest_insert(inst, sol, np.array(ok, dtype=int), days=[d]) if ok else None
                if move is not None:
                    shift, _ = _insertion_table(inst, sol.routes[d], np.array([move[1]]))
                    if best is None or shift[0, move[2]] < best[0]:
                        best = (shift[0, move[2]], move)
            if best is None or not _apply(inst, sol, best[1]):
                return f"must-include place {g} cannot be fitted", {"must_group": int(g)}
        return None

    steps = (meals, musts) if order == "meals" else (musts, meals)
    for step in steps:
        why = step()
        if why:
            return why
    return None


def initial_solution(inst: Instance) -> Solution:
    """Routes holding every required meal and must-visit place, or Infeasible with why."""
    reasons = []
    if schedule(inst, []) is None:
        raise Infeasible("the day is too short to leave the start and reach the end location")
    attempts = [(order, major, scarce) for scarce in (False, True) for major in (False, True) for order in ("meals", "musts")]
    if inst.n_slots == 0:
        attempts = attempts[:2]
    for order, major, scarce in attempts:
        sol = Solution(inst, [schedule(inst, []) for _ in range(inst.n_days)])
        why = _place_required(inst, sol, order, major, scarce)
        if why is None:
            return sol
        reasons.append(why)
    raise Infeasible(reasons[0][0], reasons[0][1])


@dataclass
class SolveStats:
    iterations: int
    seconds: float
    best_iteration: int
    stopped_by: str


def solve(inst: Instance, seed: int = 0, max_iterations: int = 400, time_limit: float = 1.0,
          max_no_improve: int = 120) -> tuple[Solution, SolveStats]:
    """Iterated local search; returns the best solution found and how the search went."""
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    protected = set(int(g) for g in inst.must_groups)
    current = initial_solution(inst)
    _improve(inst, current, protected)
    best = current.copy()
    best_score, best_iter = best.score(), 0
    size_s, start_r = 1, 0
    stopped_by, no_improve, it = "iterations", 0, 0
    removable_max = max(1, inst.n // (3 * max(1, inst.n_days)))
    for it in range(1, max_iterations + 1):
        if time.perf_counter() - started > time_limit:
            stopped_by = "time_limit"
            break
        if no_improve >= max_no_improve:
            stopped_by = "no_improvement"
            break
        if it % 2:
            _perturb(inst, current, size_s, start_r, protected)
        else:
            _perturb_random(inst, current, rng, protected)
        _improve(inst, current, protected, rng, noise=0.3 if it % 2 == 0 else 0.0, power=(2.0, 1.0, 1.5)[it % 3])
        score = current.score()
        if score > best_score + 1e-9:
            best, best_score, best_iter = current.copy(), score, it
            size_s, no_improve = 1, 0
        else:
            no_improve += 1
            start_r += size_s
            size_s += 1
            shortest = min((len(r.nodes) for r in current.routes), default=1) or 1
            if start_r >= shortest:
                start_r = start_r % shortest
            if size_s > removable_max:
                size_s = 1
            if no_improve % 10 == 0:  # restart from the best with a random start point
                current = best.copy()
                start_r = int(rng.integers(0, max(1, shortest)))
    stats = SolveStats(it, time.perf_counter() - started, best_iter, stopped_by)
    return best, stats


def _improve(inst: Instance, sol: Solution, protected: set[int], rng=None, noise: float = 0.0,
             power: float = 2.0) -> None:
    for _ in range(4):
        before = sol.score()
        greedy_insert(inst, sol, rng, noise, power)
        sol.routes = [tighten(inst, r) for r in sol.routes]
        greedy_insert(inst, sol)
        swapped = swap_improve(inst, sol, protected)
        if not swapped and sol.score() <= before + 1e-9:
            break


def _perturb(inst: Instance, sol: Solution, size_s: int, start_r: int, protected: set[int]) -> None:
    """Remove `size_s` consecutive removable sights from each day starting at `start_r`."""
    for d, route in enumerate(sol.routes):
        nodes = route.nodes
        removable = [k for k, j in enumerate(nodes) if inst.slot[j] < 0 and int(inst.group[j]) not in protected]
        if not removable:
            continue
        first = start_r % len(removable)
        drop = {removable[(first + t) % len(removable)] for t in range(min(size_s, len(removable)))}
        kept = [j for k, j in enumerate(nodes) if k not in drop]
        new = schedule(inst, kept)
        if new is None:  # removing never breaks windows under the triangle inequality; guard anyway
            continue
        sol.routes[d] = new


def _perturb_random(inst: Instance, sol: Solution, rng: np.random.Generator, protected: set[int]) -> None:
    """Remove a random 10-40 % of each day's removable sights (diversification)."""
    for d, route in enumerate(sol.routes):
        nodes = route.nodes
        removable = [k for k, j in enumerate(nodes) if inst.slot[j] < 0 and int(inst.group[j]) not in protected]
        if not removable:
            continue
        share = rng.uniform(0.1, 0.4)
        count = max(1, int(round(share * len(removable))))
        drop = set(rng.choice(removable, size=min(count, len(removable)), replace=False).tolist())
        new = schedule(inst, [j for k, j in enumerate(nodes) if k not in drop])
        if new is not None:
            sol.routes[d] = new
