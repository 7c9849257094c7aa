"""`wenlv bench events`: POST /v1/events under load over loopback, into SQLite and PostgreSQL.

The server is the real app (`serving.app.create_app`, every router and middleware; no model
is loaded, events do not need one) under uvicorn with `--workers` processes (uvloop +
httptools), each with its own connection pool. Two phases per database, on the same server:

- fixed_rate: the goal's latency. Batches of `--batch` events offered at `--rate` events/s
  (10,000: 100 requests/s) by an open-loop generator (`bench.open_loop`), each request's
  latency measured from when it was due, so queueing behind a slow answer counts
  (no coordinated omission). `hey` paces requests too but sends one body over and over
  (every event after the first request would be a duplicate), and wrk is a closed loop.
- saturation: the most the server sustains. `wrk` with `--connections` connections and a Lua
  script (unique event_ids per run nonce, wrk thread, request, position), each connection
  sending as soon as its last answer came; its latencies are mostly queueing (closed loop).

After each phase its events are counted in the database: lost = acknowledged but absent,
duplicated = stored more than once or acknowledged as duplicates although every id was new;
both must be 0. The top-level `events_per_s` is the saturation rate, `p50_ms`/`p99_ms` the
fixed-rate latencies (`p99_ms_phase` says so), as the goal reads: 10,000 events/s with p99 <= 50 ms.

Peers in the same run: on PostgreSQL, `pgbench` inserting the same batches (one multi-row
INSERT ... ON CONFLICT DO NOTHING RETURNING per transaction) into a table of the same shape,
the ceiling of the database itself, and the same at the fixed rate (`-R`) for the latency the
database alone gives there; on SQLite, the same statement from one in-process thread.
Each target gets a fresh database (PostgreSQL: CREATE DATABASE, dropped afterwards).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np
from sqlalchemy import create_engine, func, select, text

from wenlv.bench.open_loop import fixed_rate

DRAIN_S = 3.0  # pause after the closed-loop warm-up before the fixed-rate phase
SERVED_LISTS = 1000  # events name one of these recommendation ids, seeded as served lists (known, not flagged)
GOALS = {"postgresql_events_per_s": 10_000, "p99_ms": 50.0, "batch": 100,
         "p99_ms_phase": "fixed_rate (10,000 events/s offered, open loop)"}
PG_URL = "postgresql://postgres@127.0.0.1:5432/test"
TENANT = "bench"


def register(sub) -> None:
    p = sub.add_parser("events", help="POST /v1/events throughput, latency, lost/duplicated (needs wrk; pgbench for PG)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--duration", type=int, default=15, help="seconds of each measured phase per database")
    p.add_argument("--rate", type=int, default=GOALS["postgresql_events_per_s"],
                   help="events/s offered in the fixed-rate phase (in batches of --batch)")
    p.add_argument("--batch", type=int, default=100, help="events per request")
    p.add_argument("--workers", type=int, default=3, help="uvicorn worker processes")
    p.add_argument("--connections", type=int, default=64,
                   help="saturation phase: concurrent HTTP connections (wrk -c; pgbench gets as many): more concurrent "
                        "commits share a WAL flush")
    p.add_argument("--postgres-url", default=None,
                   help="PostgreSQL server to create the throwaway database on (default: $TEST_DATABASE_URL, else "
                        f"{PG_URL})")
    p.add_argument("--only", choices=("postgresql", "sqlite"), default=None, help="run one database only")
    p.set_defaults(func=main)


# ---------------------------------------------------------------- the server under test

def events_app():
    """uvicorn factory (one per worker): the app over the database of the environment, already migrated."""
    from wenlv.db.engine import make_engine
    from wenlv.serving.app import create_app
    from wenlv.serving.auth import KeyStore
    from wenlv.serving.state import ServingState

    engine = make_engine(pool_size=int(os.environ.get("WENLV_BENCH_POOL", "16")), max_overflow=8) \
        if os.environ.get("DATABASE_URL") else make_engine()
    return create_app(ServingState(), KeyStore(), db=engine)


def serve(port: int, workers: int) -> None:
    """Run `events_app` under uvicorn (one worker: in this process, so a SIGKILL kills the server itself)."""
    import uvicorn

    uvicorn.run("wenlv.bench.events:events_app", factory=True, host="127.0.0.1", port=port, workers=workers,
                loop="uvloop", http="httptools", access_log=False, log_level="warning")


def start_server(port: int, workers: int, env: dict) -> subprocess.Popen:
    """`serve` as a subprocess; returns once /healthz answers."""
    proc = subprocess.Popen([sys.executable, "-c", f"from wenlv.bench.events import serve; serve({port}, {workers})"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 180  # a cold start on a loaded 2-core machine can take a minute
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the events server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("the events server did not start within 180 s")
        time.sleep(0.2)


# ---------------------------------------------------------------- the load

WRK_LUA = r"""
local threads = {}
local counter = 0
local nonce = "%(nonce)s"
local batch = %(batch)d
local kinds = {"impression", "click", "booking", "visit"}
local LISTS = %(lists)d

function setup(thread)
  thread:set("tid", #threads)
  table.insert(threads, thread)
end

function init(args)
  acked, dups, rejected, flagged, bad_status = 0, 0, 0, 0, 0
  wrk.headers["Content-Type"] = "application/json"  -- beside -H Authorization (a headers table would replace both)
end

function request()
  counter = counter + 1
  local parts = {}
  for j = 1, batch do
    local kind = kinds[(j %% 4) + 1]
    local amount = ""
    if kind == "booking" or kind == "visit" then amount = ',"amount_cny":"88.50"' end
    parts[j] = string.format(
      '{"event_id":"%%s-%%d-%%d-%%d","kind":"%%s","token":"%%08x%%024x","poi_id":"P%%d"%%s,' ..
      '"occurred_at":"2026-05-01T10:00:00+08:00","recommendation_id":"%%032x"}',
      nonce, tid, counter, j, kind, tid, (counter * batch + j) %% 100000, j, amount, counter %% LISTS)
  end
  return wrk.format("POST", "/v1/events", nil, '{"events":[' .. table.concat(parts, ",") .. ']}')
end

function response(status, headers, body)
  if status == 200 then
    acked = acked + tonumber(body:match('"accepted":(%%d+)'))
    dups = dups + tonumber(body:match('"duplicates":(%%d+)'))
    if not body:find('"rejected":%%[%%]') then rejected = rejected + 1 end
    if not body:find('"flagged":%%[%%]') then flagged = flagged + 1 end
  else
    bad_status = bad_status + 1
  end
end

function done(summary, latency, requests)
  local a, d, r, f, b = 0, 0, 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("acked"); d = d + t:get("dups"); r = r + t:get("rejected"); b = b + t:get("bad_status")
    f = f + t:get("flagged")
  end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_s": %%.3f, "p50_ms": %%.3f, "p90_ms": %%.3f, ' ..
    '"p99_ms": %%.3f, "max_ms": %%.3f, "acknowledged": %%d, "acknowledged_duplicates": %%d, ' ..
    '"batches_with_rejections": %%d, "batches_with_flags": %%d, "non_200": %%d, "socket_errors": %%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(90) / 1000,
    latency:percentile(99) / 1000, latency.max / 1000, a, d, r, f, b, e.connect + e.read + e.write + e.timeout))
end
"""


def wrk_run(base: str, key: str, nonce: str, batch: int, duration: int, connections: int) -> dict:
    """One wrk run; its counts of acknowledged events come from the answers themselves."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA % {"nonce": nonce, "batch": batch, "lists": SERVED_LISTS})
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", script,
                              "-H", f"Authorization: Bearer {key}", base], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)
    line = next(l for l in out.splitlines() if l.startswith("WRKJSON "))
    return json.loads(line[len("WRKJSON "):])


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its descendants (the uvicorn workers), from /proc: what the
    server spent, whatever else the shared machine was doing."""
    parent_of, cpu = {}, {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parent_of[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parent_of.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(cpu.get(p, 0.0) for p in tree)


# ---------------------------------------------------------------- the peers

PGBENCH_SQL = """INSERT INTO events_pgbench (tenant, event_id, kind, token, poi_id, amount_cny, occurred_at,
  recommendation_id, campaign_id, received_at)
SELECT 'bench', md5(random()::text || clock_timestamp()::text || g), 'booking', md5(g::text), 'P' || g, 88.50,
  '2026-05-01T02:00:00Z', md5((g + 1)::text), NULL, now()
FROM generate_series(1, %d) g
ON CONFLICT DO NOTHING RETURNING event_id, recommendation_id IS NULL OR EXISTS (SELECT 1 FROM served_lists s
  WHERE s.recommendation_id = events_pgbench.recommendation_id AND s.tenant = events_pgbench.tenant);
"""


def _pgbench(url: str, script: str, duration: int, connections: int, *extra: str) -> str:
    """Run pgbench with `script` on the database at `url`; its stdout."""
    parts = httpx.URL(url.replace("postgresql://", "http://", 1))
    return subprocess.run(["pgbench", "-n", "-c", str(connections), "-j", "2", "-T", str(duration), "-f", script,
                           *extra, "-h", parts.host, "-p", str(parts.port or 5432), "-U", parts.username or "postgres",
                           parts.path.lstrip("/")], capture_output=True, text=True, check=True).stdout


def pgbench_log_latencies_ms(lines) -> list[float]:
    """Per-transaction latencies from pgbench's `-l` log, counted from the *scheduled* start under `-R`
    (elapsed time + schedule lag, as the open-loop generator counts from the due time).

    A line is `client transaction elapsed_us script epoch_s epoch_us [schedule_lag_us]`."""
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6:
            continue
        lag_us = int(fields[6]) if len(fields) > 6 else 0
        out.append((int(fields[2]) + lag_us) / 1000.0)
    return out


def pgbench_peer(url: str, batch: int, duration: int, connections: int, rate_tps: float,
                 fixed_clients: int = 8) -> dict:
    """pgbench into a copy of the events table (same columns, keys, indexes and checks): its insert rate
    with `connections` clients (the throughput ceiling) and its latency at the fixed rate the server is
    offered (`-R`, the latency peer: what PostgreSQL's commits alone cost at that rate on this disk)."""
    engine = create_engine(_psycopg(url))
    with engine.begin() as c:
        c.execute(text("CREATE TABLE events_pgbench (LIKE events INCLUDING ALL)"))
    logs = Path(tempfile.mkdtemp(prefix="wenlv-pgbench-"))
    with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
        f.write(PGBENCH_SQL % batch)
        script = f.name
    try:
        out = _pgbench(url, script, duration, connections)
        tps = float(re.search(r"tps = ([0-9.]+) \(without initial connection time\)", out).group(1))
        with engine.connect() as c:
            rows = c.execute(text("SELECT count(*) FROM events_pgbench")).scalar()
        _pgbench(url, script, duration, fixed_clients, "-R", str(rate_tps), "-l", "--log-prefix", str(logs / "tx"))
        latencies = [ms for log in sorted(logs.glob("tx*")) for ms in pgbench_log_latencies_ms(log.read_text().splitlines())]
    finally:
        os.unlink(script)
        shutil.rmtree(logs, ignore_errors=True)
        with engine.begin() as c:
            c.execute(text("DROP TABLE events_pgbench"))
        engine.dispose()
    pct = lambda q: round(float(np.percentile(latencies, q)), 3) if latencies else None  # noqa: E731
    return {"pgbench_rows_per_s": round(tps * batch, 1), "pgbench_tps": tps, "pgbench_rows": rows,
            "pgbench_connections": connections,
            "pgbench_fixed_rate": {"offered_tps": rate_tps, "clients": fixed_clients, "transactions": len(latencies),
                                   "p50_ms": pct(50), "p99_ms": pct(99), "max_ms": pct(100),
                                   "latency_from": "scheduled start (elapsed + schedule lag)"}}


def direct_rows_per_s(engine, batch: int, duration: float) -> float:
    """The same INSERT ... ON CONFLICT DO NOTHING RETURNING from one thread in this process (SQLite's peer)."""
    from wenlv.ledger.events import record_events

    nonce, n, started = uuid.uuid4().hex[:8], 0, time.perf_counter()
    while time.perf_counter() - started < duration:
        rows = [{"event_id": f"direct-{nonce}-{n + j}", "kind": "booking", "token": f"{(n + j) % 100000:032x}",
                 "poi_id": "P1", "amount_cny": "88.50", "occurred_at": "2026-05-01T10:00:00+08:00",
                 "recommendation_id": f"d{n % SERVED_LISTS:031x}"} for j in range(batch)]
        record_events(engine, "direct-peer", rows, max_batch=batch)
        n += batch
    return round(n / (time.perf_counter() - started), 1)


# ---------------------------------------------------------------- one database

def _psycopg(url: str) -> str:
    from wenlv.db.engine import normalise_url

    return normalise_url(url)


def seed_served_lists(engine) -> None:
    """The lists the load's events name (`SERVED_LISTS` per tenant), as the serving process would have recorded them."""
    from wenlv.db.schema import served_lists

    at = datetime(2026, 5, 1, tzinfo=timezone.utc)
    rows = [{"recommendation_id": f"{prefix}{i:0{32 - len(prefix)}x}", "tenant": tenant, "token": f"{i:032x}",
             "model_version": "bench", "arm": "treatment", "poi_ids": ["P1"], "served_at": at}
            for tenant, prefix in ((TENANT, ""), ("direct-peer", "d")) for i in range(SERVED_LISTS)]
    with engine.begin() as c:
        c.execute(served_lists.insert(), rows)


def phase_counts(engine, nonce: str, phase: dict) -> dict:
    """Lost and duplicated for one phase: its acknowledgements against its rows in the database."""
    from wenlv.db.schema import events

    mine = (events.c.tenant == TENANT) & events.c.event_id.like(f"{nonce}-%")
    with engine.connect() as c:
        rows = c.execute(select(func.count()).select_from(events).where(mine)).scalar()
        distinct = c.execute(select(func.count(func.distinct(events.c.event_id))).where(mine)).scalar()
    return {"acknowledged": phase["acknowledged"], "rows": rows, "lost": max(0, phase["acknowledged"] - rows),
            "duplicated": (rows - distinct) + phase["acknowledged_duplicates"],
            "stored_unacknowledged": max(0, rows - phase["acknowledged"])}  # cut off after its commit: harmless


def _cpu_measured(server, load) -> dict:
    """Run `load()`; its result with the server's CPU and the load average around it."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    cpu_before = tree_cpu_seconds(server.pid)
    result = load()
    cpu_used = tree_cpu_seconds(server.pid) - cpu_before
    result.update({"server_cpu_ms_per_request": round(1000 * cpu_used / max(1, result["requests"]), 2),
                   "server_cpu_cores_used": round(cpu_used / result["duration_s"], 2),
                   "load_average_before": load_before, "load_average_after": [round(x, 2) for x in os.getloadavg()]})
    return result


def measure(kind: str, url: str, work: Path, *, batch: int, duration: int, workers: int, connections: int,
            rate: int) -> dict:
    """Both phases on the database at `url` (migrated here); every acknowledged event checked after each."""
    from wenlv.db.engine import make_engine, migrate
    from wenlv.serving.auth import KeyStore
    from wenlv.serving.runtime import free_port

    engine = make_engine(url)
    migrate(engine)
    seed_served_lists(engine)
    keys_path = work / f"keys-{kind}.sqlite"
    key = KeyStore(keys_path).create("visitor-app", TENANT)
    env = {**os.environ, "WENLV_API_KEYS": str(keys_path), "OPENBLAS_NUM_THREADS": "1",
           "WENLV_RATE_LIMIT_KEY": "", "WENLV_RATE_LIMIT_TENANT": ""}  # the server's capacity, not the limits
    if kind == "postgresql":
        env["DATABASE_URL"] = url
    else:
        env.pop("DATABASE_URL", None)
        env["WENLV_DATABASE_SQLITE"] = url[len("sqlite:///"):]
    port = free_port()
    server = start_server(port, workers, env)
    base = f"http://127.0.0.1:{port}"
    nonces = {name: name[0] + uuid.uuid4().hex[:8] for name in ("warm", "fixed", "saturation")}
    try:
        phases = {"warm": wrk_run(base, key, nonces["warm"], batch, 2, connections)}  # every worker's pool filled
        time.sleep(DRAIN_S)  # wrk's last requests still queued in the server would open the fixed-rate phase
        phases["fixed_rate"] = _cpu_measured(server, lambda: fixed_rate(
            base, key, nonces["fixed"], batch, rate / batch, duration, lists=SERVED_LISTS))
        phases["saturation"] = _cpu_measured(server, lambda: wrk_run(
            base, key, nonces["saturation"], batch, duration, connections))
    finally:
        server.terminate()
        server.wait(timeout=30)
    for name, nonce in (("warm", nonces["warm"]), ("fixed_rate", nonces["fixed"]), ("saturation", nonces["saturation"])):
        phase = phases[name]
        phase.update(phase_counts(engine, nonce, phase))
        phase["events_per_s"] = round(phase["acknowledged"] / phase["duration_s"], 1)
        phase["requests_per_s"] = round(phase["requests"] / phase["duration_s"], 1)
    fixed, saturation = phases["fixed_rate"], phases["saturation"]
    fixed.update({"offered_events_per_s": rate, "generator": "open loop (bench.open_loop), latency from the due time"})
    saturation.update({"connections": connections, "generator": "wrk, closed loop: latency is mostly queueing"})
    result = {
        "events_per_s": saturation["events_per_s"], "events_per_s_phase": "saturation",
        "p50_ms": fixed["p50_ms"], "p99_ms": fixed["p99_ms"], "p99_ms_phase": "fixed_rate",
        "lost": sum(phases[p]["lost"] for p in phases), "duplicated": sum(phases[p]["duplicated"] for p in phases),
        "non_200": sum(phases[p]["non_200"] for p in phases),
        "socket_errors": sum(phases[p]["socket_errors"] for p in phases),
        "acknowledged": sum(phases[p]["acknowledged"] for p in phases),
        "batch": batch, "workers": workers,
        "fixed_rate": fixed, "saturation": saturation,
    }
    if kind == "postgresql":
        with engine.connect() as c:
            result["synchronous_commit"] = c.execute(text("SHOW synchronous_commit")).scalar()
        result.update(pgbench_peer(url, batch, min(duration, 10), connections, rate / batch))
        result["ratio"] = round(result["events_per_s"] / result["pgbench_rows_per_s"], 3)
    else:
        with engine.connect() as c:
            result["journal_mode"] = c.exec_driver_sql("PRAGMA journal_mode").scalar()
            result["synchronous"] = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[
                c.exec_driver_sql("PRAGMA synchronous").scalar()]
        result["direct_rows_per_s"] = direct_rows_per_s(engine, batch, min(duration, 5))
        result["pgbench_rows_per_s"] = None
        result["ratio"] = round(result["events_per_s"] / result["direct_rows_per_s"], 3)
        result["ratio_peer"] = "direct_rows_per_s (one in-process thread, the same statement)"
    engine.dispose()
    return result


def goal_met(pg: dict, rate: int) -> bool:
    """The goal as it reads: 10,000 events/s offered in batches of 100, every batch acknowledged (200),
    p99 acknowledgement <= 50 ms at that rate; and the server sustains at least that much at saturation."""
    fixed = pg["fixed_rate"]
    return bool(rate >= GOALS["postgresql_events_per_s"] and pg["batch"] == GOALS["batch"]
                and fixed["acknowledged"] == fixed["requests"] * pg["batch"]
                and fixed["p99_ms"] is not None and fixed["p99_ms"] <= GOALS["p99_ms"]
                and pg["events_per_s"] >= GOALS["postgresql_events_per_s"])


def run(*, batch: int, duration: int, workers: int, connections: int, rate: int, postgres_url: str | None,
        only: str | None) -> dict:
    missing = [tool for tool in ("wrk", "pgbench") if shutil.which(tool) is None]
    if "wrk" in missing:
        return {"missing_tools": missing, "error": "wrk is needed (apt-get install -y wrk)"}
    result: dict = {"bench": "events", "goals": GOALS, "machine_cores": os.cpu_count(), "missing_tools": missing,
                    "niceness": os.nice(0),  # run under `nice -n -10` to stand for a machine of its own
                    "load_average_start": [round(x, 2) for x in os.getloadavg()],
                    "note": "the machine is shared: read the rates beside the load averages recorded with them"}
    work = Path(tempfile.mkdtemp(prefix="wenlv-bench-events-"))
    shape = {"batch": batch, "duration": duration, "workers": workers, "connections": connections, "rate": rate}
    try:
        if only in (None, "postgresql") and "pgbench" not in missing:
            server_url = postgres_url or os.environ.get("TEST_DATABASE_URL", PG_URL)
            admin = create_engine(_psycopg(server_url), isolation_level="AUTOCOMMIT")
            name = f"wenlv_bench_{uuid.uuid4().hex[:8]}"
            with admin.connect() as c:
                c.execute(text(f"CREATE DATABASE {name}"))
            try:
                url = server_url.rsplit("/", 1)[0] + "/" + name
                result["postgresql"] = measure("postgresql", url, work, **shape)
            finally:
                with admin.connect() as c:
                    c.execute(text(f"DROP DATABASE {name} WITH (FORCE)"))
                admin.dispose()
        if only in (None, "sqlite"):
            result["sqlite"] = measure("sqlite", f"sqlite:///{work / 'ledger.sqlite'}", work, **shape)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    pg = result.get("postgresql")
    result["verdict"] = {
        "postgresql_goal_met": None if pg is None else goal_met(pg, rate),
        "nothing_lost_or_duplicated": all(result[k]["lost"] == 0 and result[k]["duplicated"] == 0
                                          for k in ("postgresql", "sqlite") if k in result),
        "every_request_answered_200": all(result[k]["non_200"] == 0 and result[k]["socket_errors"] == 0
                                          and result[k]["acknowledged"] > 0 for k in ("postgresql", "sqlite") if k in result),
    }
    result["measured_at"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return result


def main(args) -> int:
    result = run(batch=args.batch, duration=args.duration, workers=args.workers, connections=args.connections,
                 rate=args.rate, postgres_url=args.postgres_url, only=args.only)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    if "error" in result:
        return 3
    verdict = result["verdict"]
    return 0 if verdict["nothing_lost_or_duplicated"] and verdict["every_request_answered_200"] else 1
