"""Solomon-based TOPTW benchmark instances (Righini & Salani; Vansteenwegen et al. 2009).

Format (toptw/FORMAT.txt): line 1 `k v N t`, line 2 `D Q` (may be missing), then one line
per point `i x y d S f a list… O C`; point 0 is start and end, its closing time is the
route's time budget; distances are Euclidean rounded DOWN to one decimal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wenlv.itinerary.core import Instance
from wenlv.errors import DataValidationError

# Best-known one-route scores cited in toptw/FORMAT.txt (Labadie et al. 2012).
BEST_KNOWN_CITED = {"c101": 320, "r101": 198, "rc101": 219}


@dataclass
class Point:
    i: int
    x: float
    y: float
    service: float
    profit: float
    open: float
    close: float


def parse(path: str | Path) -> list[Point]:
    """Points of one instance file, point 0 first; raises DataValidationError on a bad line."""
    path = Path(path)
    lines = [ln for ln in path.read_text().splitlines() if ln.strip()]
    if not lines:
        raise DataValidationError(str(path), None, None, "empty file")
    head = lines[0].split()
    if len(head) < 3:
        raise DataValidationError(str(path), 1, None, "first line must be `k v N t`")
    n_vertices = int(head[2])
    body = lines[1:]
    if body and len(body[0].split()) == 2:  # optional `D Q` line
        body = body[1:]
    points = []
    for row, line in enumerate(body, start=len(lines) - len(body) + 1):
        tok = line.split()
        try:
            i, x, y, d, s = int(tok[0]), float(tok[1]), float(tok[2]), float(tok[3]), float(tok[4])
            a = int(tok[6])
            rest = tok[7 + a:]
            o, c = float(rest[0]), float(rest[1])
        except (IndexError, ValueError) as exc:
            raise DataValidationError(str(path), row, None, f"cannot read point line {line!r}: {exc}") from None
        points.append(Point(i, x, y, d, s, o, c))
    if points[0].i != 0:
        raise DataValidationError(str(path), 2, None, "the first point must be vertex 0 (the depot)")
    if len(points) != n_vertices + 1 and len(points) != n_vertices:
        raise DataValidationError(str(path), None, None, f"header says {n_vertices} vertices, file has {len(points)} points")
    return points


def distance(p: Point, q: Point) -> float:
    """Euclidean, rounded down to one decimal (as the benchmark defines it)."""
    return math.floor(math.hypot(p.x - q.x, p.y - q.y) * 10.0 + 1e-9) / 10.0


def to_instance(points: list[Point]) -> Instance:
    depot, customers = points[0], points[1:]
    everyone = customers + [depot, depot]
    xy = np.array([[p.x, p.y] for p in everyone])
    raw = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1))
    travel = np.floor(raw * 10.0 + 1e-9) / 10.0
    return Instance(
        profit=np.array([p.profit for p in customers]),
        duration=np.array([p.service for p in customers]),
        early=np.array([p.open for p in customers]),
        late=np.array([p.close for p in customers]),
        travel=travel,
        day_start=depot.open,
        day_end=depot.close,
        n_days=1,
    )


def check_route(points: list[Point], route: list[int]) -> tuple[float, list[str]]:
    """Recompute a single route from the raw points (independent of the solver): (score, problems)."""
    problems = []
    depot = points[0]
    by_id = {p.i: p for p in points}
    t, prev, score = depot.open, depot, 0.0
    if len(set(route)) != len(route):
        problems.append("a point is visited twice")
    for i in route:
        p = by_id.get(i)
        if p is None or i == 0:
            problems.append(f"unknown point {i}")
            continue
        t += distance(prev, p)
        if t > p.close + 1e-6:
            problems.append(f"point {i}: arrives at {t:.1f} after its closing {p.close}")
        t = max(t, p.open) + p.service
        score += p.profit
        prev = p
    t += distance(prev, depot)
    if t > depot.close + 1e-6:
        problems.append(f"returns at {t:.1f} after the time budget {depot.close}")
    return score, problems
