"""`wenlv bench soak --minutes N --json`: mixed traffic at a steady rate against a real `wenlv serve`, for long enough
to see what a short benchmark cannot — a slow leak, a p99 that creeps, errors that only come after a while.

The deployment is the fault suite's (`bench.faults.harness.Deployment`: a private Redis, a private PostgreSQL or an
SQLite ledger, the `wenlv serve` process). Paced clients send recommendations, itineraries, event batches and the
dashboard's analytics API calls; a sampler reads the server's resident memory (VmRSS of its process and its solver
children, from /proc) and Redis's `used_memory_rss` every few seconds. Memory growth is the least-squares slope of
those samples, in MB per hour, over the whole run and over its second half (after warm-up).
Audience exports are not in the mix: a campaign with an audience needs the user index and a marketer's campaign
seeded through the campaign API, which the deployment does not build (`--no-user-index`).
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import redis


# lazy (below, in the functions that run the soak): the harness and serving load FAISS, whose OpenMP OpenBLAS would
# make implicit's ALS in the same process (e.g. `wenlv demo`, which builds every command's parser) warn about threads

ROUTES = ("recommendations", "itineraries", "events", "analytics")


class RouteStats:
    """Latencies and statuses of one kind of request (one thread writes, the report reads at the end)."""

    def __init__(self):
        self.latencies_ms: list[float] = []
        self.statuses: dict[str, int] = {}

    def add(self, ms: float, status: int | None) -> None:
        self.latencies_ms.append(ms)
        key = "no answer" if status is None else str(status)
        self.statuses[key] = self.statuses.get(key, 0) + 1

    def summary(self) -> dict:
        sent = len(self.latencies_ms)
        server_errors = sum(n for s, n in self.statuses.items() if s.startswith("5") or s == "no answer")
        other = sum(n for s, n in self.statuses.items() if s[0] in "34")
        lat = np.asarray(self.latencies_ms) if sent else np.zeros(1)
        return {"sent": sent, "errors_5xx_or_no_answer": server_errors, "errors_4xx": other,
                "error_rate": round((server_errors + other) / sent, 5) if sent else None,
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "statuses": dict(sorted(self.statuses.items()))}


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    except (OSError, StopIteration):
        return 0


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares growth of (seconds, MB) samples, in MB per hour."""
    if len(samples) < 3:
        return None
    t, mb = np.asarray(samples).T
    if np.ptp(t) == 0:
        return None
    return round(float(np.polyfit(t / 3600.0, mb, 1)[0]), 2)


class Soak:
    def __init__(self, dep: Deployment, analyst_key: str, rates: dict[str, float], sample_s: float = 5.0,
                 timeout_s: float = 10.0):
        self.dep, self.rates, self.sample_s, self.timeout_s = dep, rates, sample_s, timeout_s
        self.keys = {"app": dep.key, "analyst": analyst_key}
        self.stats = {name: RouteStats() for name in ROUTES}
        self.memory: dict[str, list[tuple[float, float]]] = {"server": [], "server_main": [], "redis": []}
        self._stop = threading.Event()
        from wenlv.serving.runtime import load_bundle_dir  # lazy: see the note at the imports

        bundle, _ = load_bundle_dir(dep.workdir / "bundle")
        city = bundle.pois.city.value_counts().index[0]
        here = bundle.pois[bundle.pois.city == city].iloc[0]
        self.itinerary = {"city": city, "start_date": "2026-05-01", "days": 1, "pace": 4, "travel_mode": "drive",
                          "start_location": {"lat": float(here.lat), "lon": float(here.lon)}}
        self.pois = [str(p) for p in bundle.pois.poi_id.head(50)]

    # -------------------------------------------------------------- traffic
    def _paced(self, name: str, key: str, request) -> None:
        rate = self.rates[name]
        if rate <= 0:
            return
        gap, i = 1.0 / rate, 0
        with httpx.Client(base_url=self.dep.base, headers={"Authorization": f"Bearer {self.keys[key]}"},
                          timeout=self.timeout_s) as http:
            next_at = time.monotonic()
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    status = request(http, i).status_code
                except httpx.HTTPError:
                    status = None
                self.stats[name].add((time.perf_counter() - started) * 1000, status)
                i += 1
                next_at += gap
                self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _recommendation(self, http, i):
        return http.get(f"/v1/visitors/{self.dep.tokens[i % len(self.dep.tokens)]}/recommendations", params={"k": 10})

    def _itinerary(self, http, i):
        return http.post("/v1/itineraries", json={**self.itinerary, "token": self.dep.tokens[i % len(self.dep.tokens)],
                                                  "seed": i % 7})

    def _events(self, http, i):
        run = self.run_id
        batch = [{"event_id": f"{run}-{i}-{j}", "kind": "booking" if j % 4 == 0 else "click",
                  "token": self.dep.tokens[(i * 10 + j) % len(self.dep.tokens)], "poi_id": self.pois[j % len(self.pois)],
                  "amount_cny": "128.00" if j % 4 == 0 else None, "occurred_at": "2026-11-01T10:00:00+08:00"}
                 for j in range(10)]
        return http.post("/v1/events", json={"events": batch})

    def _analytics(self, http, i):
        return http.get(("/v1/analytics/events", "/v1/analytics/revenue", "/v1/assets")[i % 3])

    # -------------------------------------------------------------- memory
    def _sample(self) -> None:
        r = redis.Redis.from_url(self.dep.redis.url, socket_timeout=2)
        t0 = time.monotonic()
        while True:
            pid = self.dep.api.pid
            main_kb = _rss_kb(pid)
            kb = main_kb + sum(_rss_kb(c) for c in _children(pid))
            now = time.monotonic() - t0
            self.memory["server"].append((now, kb / 1024))  # with its solver processes
            self.memory["server_main"].append((now, main_kb / 1024))
            try:
                self.memory["redis"].append((now, r.info("memory")["used_memory_rss"] / 2**20))
            except redis.RedisError:
                pass
            if self._stop.wait(self.sample_s):
                return

    def run(self, seconds: float) -> dict:
        self.run_id = f"soak{int(time.time())}"
        threads = [threading.Thread(target=self._sample, daemon=True)]
        threads += [threading.Thread(target=self._paced, args=(name, key, fn), daemon=True)
                    for name, key, fn in (("recommendations", "app", self._recommendation),
                                          ("itineraries", "app", self._itinerary), ("events", "app", self._events),
                                          ("analytics", "analyst", self._analytics))]
        for t in threads:
            t.start()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(min(30.0, max(0.0, deadline - time.monotonic())))
            done = sum(len(s.latencies_ms) for s in self.stats.values())
            print(f"bench soak: {done} requests, {max(0.0, deadline - time.monotonic()):.0f} s to go",
                  file=sys.stderr, flush=True)
        self._stop.set()
        for t in threads:
            t.join(timeout=self.timeout_s + 5)
        return self.report(seconds)

    def report(self, seconds: float) -> dict:
        routes = {name: s.summary() for name, s in self.stats.items()}
        sent = sum(r["sent"] for r in routes.values())
        failed = sum(r["errors_5xx_or_no_answer"] + r["errors_4xx"] for r in routes.values())
        memory = {}
        for name, samples in self.memory.items():
            half = [s for s in samples if s[0] >= seconds / 2]
            memory[name] = {"samples": len(samples), "start_mb": round(samples[0][1], 1) if samples else None,
                            "end_mb": round(samples[-1][1], 1) if samples else None,
                            "slope_mb_per_hour": slope_mb_per_hour(samples),
                            "slope_second_half_mb_per_hour": slope_mb_per_hour(half)}
        return {"seconds": round(seconds, 1), "rates_per_s": self.rates, "routes": routes, "sent": sent,
                "error_rate": round(failed / sent, 5) if sent else None,
                "errors_5xx_or_no_answer": sum(r["errors_5xx_or_no_answer"] for r in routes.values()),
                "memory": memory,
                "audience_export": "not in the mix: needs a seeded campaign audience and the user index (see the module doc)"}


def run(minutes: float, rates: dict[str, float], ledger: str = "postgresql", sample_s: float = 5.0,
        n_users: int = 2000) -> dict:
    from wenlv.bench.faults.harness import TENANT, Deployment  # lazy: see the note at the imports
    from wenlv.serving.auth import KeyStore

    work = Path(tempfile.mkdtemp(prefix="wenlv-bench-soak-"))
    load_before = [round(x, 2) for x in os.getloadavg()]
    try:
        print("bench soak: starting Redis, the ledger database and wenlv serve …", file=sys.stderr, flush=True)
        with Deployment(work, ledger=ledger, n_users=n_users) as dep:
            analyst = KeyStore(dep.workdir / "keys.sqlite").create("analyst", TENANT)
            result = Soak(dep, analyst, rates, sample_s=sample_s).run(minutes * 60)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "ledger": ledger, **result}


def register(sub) -> None:
    p = sub.add_parser("soak", help="mixed traffic at a steady rate against a real wenlv serve: error rate, p99 by route, "
                                    "memory growth per hour of the server and of Redis")
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run the traffic")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--rec-rate", type=float, default=40.0, help="recommendation requests per second")
    p.add_argument("--itinerary-rate", type=float, default=1.0, help="itinerary requests per second")
    p.add_argument("--event-rate", type=float, default=5.0, help="event batches (of 10) per second")
    p.add_argument("--analytics-rate", type=float, default=0.5, help="analytics API requests per second")
    p.add_argument("--sample-seconds", type=float, default=5.0, help="how often to sample memory")
    p.add_argument("--ledger", choices=("postgresql", "sqlite"), default="postgresql",
                   help="ledger database: a private PostgreSQL cluster or an SQLite file")
    p.set_defaults(func=main)


def main(args) -> int:
    rates = {"recommendations": args.rec_rate, "itineraries": args.itinerary_rate, "events": args.event_rate,
             "analytics": args.analytics_rate}
    result = run(args.minutes, rates, ledger=args.ledger, sample_s=args.sample_seconds)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result["errors_5xx_or_no_answer"] == 0 else 1
