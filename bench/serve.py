"""`wenlv bench serve`: the recommendation API under load over loopback, beside FAISS alone.

Shape (default): 10,000 POIs × 1,000,000 users, 64 factors (a synthetic bundle with taste
clusters: random-ish factors are fine for latency, clustered ones make ANN recall mean
something). A private redis-server on a spare port holds the materialised online store;
`wenlv serve` runs as its own process (uvicorn, one worker, uvloop + httptools); the load
comes from `hey` (fixed rate: one-connection streams of 25 req/s started 1/rate apart, so requests
arrive evenly spaced; per-request CSV) and `wrk`
(saturation, Lua-rotated tokens, 10% cold). Printed beside it: FAISS-only search latency,
in-process `ServingModel.recommend` latency and the same fixed rate on /healthz, so the
HTTP overhead and the machine's own floor are visible; the server's CPU ms per request
(from /proc, independent of other load); the same recommendation rate while 16 clients
keep 7-day itineraries being solved (mixed load, beside recommendations alone); ANN
recall@10 of approximate indexes vs exact.
"""
from __future__ import annotations

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOALS = {"p99_ms_at_300rps": 15.0, "recall_at_10": 0.95, "server_cpu_ms_per_recommendation": 0.9}
MIXED_ITINERARY_CLIENTS = 16
# The server's capacity, not the rate limits: off unless set in the environment (e.g. a huge rate, to time the check).
NO_RATE_LIMITS = {name: os.environ.get(name, "") for name in ("WENLV_RATE_LIMIT_KEY", "WENLV_RATE_LIMIT_TENANT")}
CACHE = Path(os.environ.get("WENLV_BENCH_CACHE", Path.home() / ".cache" / "wenlv" / "bench-serve"))


def register(sub) -> None:
    p = sub.add_parser("serve", help="recommendation API latency/throughput over loopback (needs hey and wrk)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--pois", type=int, default=10_000, help="synthetic POIs in the served model")
    p.add_argument("--users", type=int, default=1_000_000, help="synthetic users in the served model")
    p.add_argument("--factors", type=int, default=64, help="vector dimension")
    p.add_argument("--rate", type=int, default=300, help="fixed request rate (req/s)")
    p.add_argument("--duration", type=int, default=20, help="seconds per load phase")
    p.set_defaults(func=main)


def _pct(values, q) -> float:
    return round(float(np.percentile(np.asarray(values), q)), 3)


def _latencies(latencies: list[float], tool: str, stderr: bytes = b"") -> dict:
    """p50/p95/p99 of a phase; with no result at all (the tool got no answer, e.g. under heavy load) the percentiles
    are None and `error` says so, instead of a percentile of nothing crashing the run."""
    if latencies:
        return {"p50_ms": _pct(latencies, 50), "p95_ms": _pct(latencies, 95), "p99_ms": _pct(latencies, 99)}
    said = stderr.decode(errors="replace").strip().splitlines()[-3:]
    return {"p50_ms": None, "p95_ms": None, "p99_ms": None,
            "error": f"{tool} returned no results" + (f": {' | '.join(said)}" if said else "")}


def _tools() -> dict:
    missing = {t: f"apt-get install -y {t}" for t in ("hey", "wrk") if shutil.which(t) is None}
    for tool, fix in missing.items():
        print(f"bench serve: `{tool}` is not installed; install it with: {fix}", file=sys.stderr)
    return missing


def _bundle_dir(n_pois: int, n_users: int, factors: int) -> Path:
    from wenlv.bench.serving_fixtures import synthetic_bundle

    path = CACHE / f"bundle-{n_pois}x{n_users}x{factors}"
    if not (path / "digests.json").exists():  # bundles from before digests are refused: rebuild
        print(f"bench serve: synthesising a {n_pois}×{n_users} bundle in {path} …", file=sys.stderr)
        bundle = synthetic_bundle(n_pois=n_pois, n_users=n_users, factors=factors, seed=42, visits_per_user=3,
                                  clusters=64, version=f"bench-{n_pois}x{n_users}")
        bundle.save(path)
    return path


def _recall_section(model, bundle) -> dict:
    from wenlv.serving.indexes import build_index, recall_at_k

    rng = np.random.default_rng(7)
    out = {}
    if model.indexes.users is not None:
        held_out = bundle.poi_factors[rng.choice(len(bundle.poi_factors), 300, replace=False)]
        out["user_index"] = {**model.indexes.users.info,
                             "recall_at_10_held_out": round(recall_at_k(model.indexes.users, held_out, 10), 4)}
    queries = bundle.user_factors[rng.choice(len(bundle.user_factors), 600, replace=False)]
    for kind in ("hnsw", "ivf"):  # the POI catalogue is served exactly; these show what ANN would give
        idx = build_index(bundle.poi_factors, queries[:300], kind=kind)
        out[f"poi_{kind}"] = {**idx.info, "recall_at_10_held_out": round(recall_at_k(idx, queries[300:], 10), 4)}
    return out


def _in_process(model, bundle) -> dict:
    from wenlv.serving.filters import Filters

    rng = np.random.default_rng(3)
    rows = rng.choice(len(bundle.user_factors), 2000, replace=False)
    vectors = bundle.user_factors[rows]
    tokens = bundle.users["token"].to_numpy()[rows]
    mask = model.table.mask(Filters(category="museum"))
    timings = {"faiss_search": [], "faiss_search_filtered": [], "recommend_in_process": []}
    for v, t in zip(vectors, tokens):
        s = time.perf_counter()
        model.indexes.pois.search(v, 10)
        timings["faiss_search"].append((time.perf_counter() - s) * 1000)
        s = time.perf_counter()
        model.indexes.pois.search(v, 10, mask)
        timings["faiss_search_filtered"].append((time.perf_counter() - s) * 1000)
        s = time.perf_counter()
        model.recommend(str(t), 10)
        timings["recommend_in_process"].append((time.perf_counter() - s) * 1000)
    return {name: {"p50_ms": _pct(v, 50), "p95_ms": _pct(v, 95), "p99_ms": _pct(v, 99)} for name, v in timings.items()}


def _start_server(bundle_dir: Path, redis_url: str, keys: Path, prefix: str, port: int, env: dict):
    cmd = [sys.executable, "-m", "wenlv.cli", "serve", "--bundle", str(bundle_dir), "--redis-url", redis_url,
           "--keys", str(keys), "--prefix", prefix, "--host", "127.0.0.1", "--port", str(port)]
    log_path = Path(keys).parent / "serve.log"  # a file, not a pipe nobody reads: a full pipe would stall the server
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log_path.open("wb"))
    import httpx

    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("wenlv serve exited: " + log_path.read_text(errors="replace")[-2000:])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("wenlv serve did not become ready")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc): load-independent cost per request."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _measured(server, phase):
    """Run a load phase and add the server's CPU ms per request to its result."""
    before = _cpu_seconds(server.pid)
    out = phase()
    used = _cpu_seconds(server.pid) - before
    out["server_cpu_ms_per_request"] = round(1000 * used / out["requests"], 3) if out["requests"] else None
    out["server_cpu_share_of_one_core"] = round(used / out.get("duration_s", out.get("duration", 1)), 3)
    return out


STREAM_RPS = 25  # each hey stream's rate: one request per 40 ms, far above an answer's time (no closed-loop gaps)


def _hey_fixed_rate(base: str, key: str, urls: list[str], rate: int, duration: int) -> dict:
    """`rate` requests/s for `duration` s, spread evenly in time over the URLs.

    hey paces each of its workers with its own ticker, and starts them together: `-c 5 -q 20`
    sends five requests at once every 50 ms, so three such processes made bursts of 15
    simultaneous requests, six times a second. The server then answered the 15th after the
    other 14 (p50 6-8 ms, p99 11-15 ms for 1 ms of work each), a burst test rather than the
    rate. Instead: one-connection hey processes of `STREAM_RPS` each, started 1/rate apart,
    so the requests arrive one at a time, evenly spaced, as `rate` independent visitors would
    (on average) send them.
    """
    streams = max(len(urls), -(-rate // STREAM_RPS))
    streams += -streams % len(urls)  # every URL gets as many streams
    per_stream = rate / streams
    procs = []
    try:
        for i in range(streams):
            procs.append(subprocess.Popen(["hey", "-z", f"{duration}s", "-c", "1", "-q", f"{per_stream:g}", "-o", "csv",
                                           "-H", f"Authorization: Bearer {key}", base + urls[i % len(urls)]],
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            time.sleep(1 / rate)
        latencies, statuses, stderr = [], {}, b""
        for p in procs:
            out, err = p.communicate()
            stderr += err
            _read_hey_csv(out, latencies, statuses)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    errors = sum(n for s, n in statuses.items() if s != "200")
    return {"target_rps": rate, "achieved_rps": round(len(latencies) / duration, 1), "requests": len(latencies),
            "duration_s": duration, **_latencies(latencies, "hey", stderr),
            "errors": errors, "statuses": statuses, "tool": "hey", "streams": streams,
            "arrivals": "evenly spaced: one-connection streams started 1/rate apart"}


def _read_hey_csv(out: bytes, latencies: list[float], statuses: dict) -> None:
    for row in csv.DictReader(io.StringIO(out.decode(errors="replace"))):
        latencies.append(float(row["response-time"]) * 1000)
        statuses[row["status-code"]] = statuses.get(row["status-code"], 0) + 1


def _hey_itineraries(base: str, key: str, body_file: str, concurrency: int, duration: int) -> subprocess.Popen:
    """`concurrency` clients posting 7-day itineraries back to back for `duration` seconds (per-request CSV)."""
    return subprocess.Popen(["hey", "-z", f"{duration}s", "-c", str(concurrency), "-m", "POST", "-T", "application/json",
                             "-D", body_file, "-o", "csv", "-H", f"Authorization: Bearer {key}", base + "/v1/itineraries"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _mixed(base: str, key: str, urls: list[str], rate: int, duration: int, work: Path, token: str,
           alone_p99_ms: float | None) -> dict:
    """Recommendations at the fixed rate while 16 clients keep 7-day itineraries being solved."""
    body_file = work / "itinerary.json"
    body_file.write_text(json.dumps({"token": token, "city": "hangzhou", "start_date": "2026-05-01", "days": 7,
                                     "start_location": {"lat": 30.25, "lon": 120.17}, "pace": "moderate"}))
    itineraries = _hey_itineraries(base, key, str(body_file), MIXED_ITINERARY_CLIENTS, duration + 2)
    try:
        time.sleep(1.0)  # the solver queue fills first
        recs = _hey_fixed_rate(base, key, urls, rate, duration)
        out, err = itineraries.communicate()
    finally:
        if itineraries.poll() is None:  # the recommendation phase failed: no hey outlives the run
            itineraries.kill()
            itineraries.wait()
    latencies, statuses = [], {}
    _read_hey_csv(out, latencies, statuses)
    solved = _latencies(latencies, "hey", err)
    solved.pop("p95_ms")
    ratio = (None if recs["p99_ms"] is None or alone_p99_ms is None
             else round(recs["p99_ms"] / max(alone_p99_ms, 1e-9), 2))
    return {"recommendations": recs,
            "itineraries": {"clients": MIXED_ITINERARY_CLIENTS, "days": 7, "requests": len(latencies),
                            "statuses": statuses, **solved},
            "recommendation_p99_ratio_to_alone": ratio}


WRK_LUA = """
local tokens = {%s}
local i = 0
request = function()
  i = i + 1
  local t = tokens[(i %% #tokens) + 1]
  return wrk.format("GET", "/v1/visitors/" .. t .. "/recommendations?k=10")
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %%d, "duration_s": %%.3f, "p50_ms": %%.3f, "p95_ms": %%.3f, "p99_ms": %%.3f, "status_errors": %%d, "socket_errors": %%d}\\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(95) / 1000,
    latency:percentile(99) / 1000, e.status, e.connect + e.read + e.write + e.timeout))
end
"""


def _wrk_saturation(base: str, key: str, tokens: list[str], duration: int, connections: int = 16) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_LUA % ", ".join(f'"{t}"' for t in tokens))
        script = f.name
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", script,
                              "-H", f"Authorization: Bearer {key}", base], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script)
    line = next((l for l in out.splitlines() if l.startswith("WRKJSON ")), None)
    if line is None:
        return {"connections": connections, "requests": 0, "duration_s": duration, "tool": "wrk",
                "error": "wrk returned no results: " + " | ".join(out.strip().splitlines()[-3:])}
    r = json.loads(line[len("WRKJSON "):])
    return {"throughput_rps": round(r["requests"] / r["duration_s"], 1), "connections": connections, **r,
            "errors": r["status_errors"] + r["socket_errors"], "tool": "wrk"}


def run(n_pois: int, n_users: int, factors: int, rate: int, duration: int) -> dict:
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    import faiss

    faiss.omp_set_num_threads(1)
    from wenlv.serving.auth import KeyStore
    from wenlv.serving.materialize import materialize
    from wenlv.serving.model import ServingModel
    from wenlv.serving.online_store import RedisStore, ResilientStore
    from wenlv.serving.runtime import free_port, load_bundle_dir
    from wenlv.bench.private_redis import PrivateRedis
    from wenlv.bench.serving_fixtures import token_for

    missing = _tools()
    result: dict = {"shape": {"pois": n_pois, "users": n_users, "factors": factors}, "machine_cores": os.cpu_count(),
                    "niceness": os.nice(0),  # run under `nice -n -10` to stand for a machine of its own
                    "goals": GOALS, "missing_tools": missing,
                    "note": "the machine is shared: compare the HTTP figures with the load averages recorded beside them"}
    bundle_dir = _bundle_dir(n_pois, n_users, factors)
    bundle, version = load_bundle_dir(bundle_dir)
    index_cache = CACHE / "indexes"
    env = {**os.environ, "WENLV_INDEX_CACHE": str(index_cache), "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
           **NO_RATE_LIMITS}
    work = Path(tempfile.mkdtemp(prefix="wenlv-bench-serve-"))
    # The server's ledger (served lists) in the work folder: never the user's own database.
    env = {k: v for k, v in env.items() if k != "DATABASE_URL"} | {"WENLV_DATABASE_SQLITE": str(work / "ledger.sqlite")}
    redis_server = server = None
    try:
        redis_server = PrivateRedis().start()
        raw = RedisStore(redis_server.url, prefix="bench:")
        started = time.perf_counter()
        materialize(bundle, version, raw)
        result["materialize_s"] = round(time.perf_counter() - started, 1)
        started = time.perf_counter()
        model = ServingModel(bundle, version, ResilientStore(raw), index_cache=index_cache)
        result["model_build_s"] = round(time.perf_counter() - started, 1)
        result["ann_recall"] = _recall_section(model, bundle)
        result["in_process"] = _in_process(model, bundle)
        del model

        keys = KeyStore(work / "keys.sqlite")
        key = keys.create("visitor-app", "bench")
        port = free_port()
        server = _start_server(bundle_dir, redis_server.url, work / "keys.sqlite", "bench:", port, env)
        base = f"http://127.0.0.1:{port}"
        rng = np.random.default_rng(11)
        all_tokens = bundle.users["token"].to_numpy()
        tokens = [str(t) for t in all_tokens[rng.choice(len(all_tokens), 1000, replace=False)]]
        tokens[::10] = [token_for(i, "cold") for i in range(len(tokens[::10]))]  # 10% cold start
        if "wrk" not in missing:
            _wrk_saturation(base, key, tokens, 3)  # warm-up
        result["load_average_before_load_test"] = [round(x, 2) for x in os.getloadavg()]
        if "hey" not in missing:
            urls = [f"/v1/visitors/{tokens[1]}/recommendations?k=10",
                    f"/v1/visitors/{tokens[2]}/recommendations?k=10&category=museum&near=30.25,120.17&radius_km=8",
                    f"/v1/visitors/{tokens[0]}/recommendations?k=10"]  # cold
            result["fixed_rate"] = _measured(server, lambda: _hey_fixed_rate(base, key, urls, rate, duration))
            # Peer in the same run: the same rate on /healthz (no store, no FAISS) is the floor that the
            # machine, uvicorn and FastAPI set; the gap to it is what recommendations cost.
            result["fixed_rate_healthz_peer"] = _measured(server, lambda: _hey_fixed_rate(base, key, ["/healthz"] * 3, rate, duration))
            # Mixed: the same recommendation load while 16 clients keep 7-day itineraries being solved
            # (in worker processes); its p99 beside the one above is what itineraries cost recommendations.
            result["mixed_with_itineraries"] = _mixed(base, key, urls, rate, duration, work, tokens[1],
                                                      result["fixed_rate"]["p99_ms"])
        if "wrk" not in missing:
            result["saturation"] = _measured(server, lambda: _wrk_saturation(base, key, tokens, duration))
    finally:
        result.update(_cleanup(server, redis_server, work))
    result["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    fixed = result.get("fixed_rate") or {}
    p99, cpu = fixed.get("p99_ms"), fixed.get("server_cpu_ms_per_request")
    result["verdict"] = {
        "p99_at_fixed_rate_ok": None if p99 is None else bool(p99 <= GOALS["p99_ms_at_300rps"] and fixed["errors"] == 0),
        "server_cpu_per_recommendation_ok": None if cpu is None else bool(cpu <= GOALS["server_cpu_ms_per_recommendation"]),
        "user_index_recall_ok": bool(result["ann_recall"].get("user_index", {}).get("recall_at_10_held_out", 1.0) >= GOALS["recall_at_10"]),
    }
    return result


def _cleanup(server, redis_server, work: Path) -> dict:
    """Stop the server and the private Redis and remove the work folder, each whatever happened to the others;
    returns what did not go to plan."""
    notes = {}
    if server is not None:
        try:
            server.terminate()
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            notes["server_stop"] = "did not stop within 30 s of SIGTERM; killed"
            server.kill()
            server.wait(timeout=30)
        except Exception as exc:  # noqa: BLE001 - the Redis below must still be stopped
            notes["server_stop"] = f"{type(exc).__name__}: {exc}"
    try:
        if redis_server is not None:
            redis_server.stop()
    except Exception as exc:  # noqa: BLE001
        notes["redis_stop"] = f"{type(exc).__name__}: {exc}"
    shutil.rmtree(work, ignore_errors=True)
    return notes


def _raise_on_sigterm(signum, frame):
    raise SystemExit(f"bench serve: stopped by signal {signum}")  # so the cleanup in run() still runs


def main(args) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_on_sigterm)
    try:
        result = run(args.pois, args.users, args.factors, args.rate, args.duration)
    finally:
        signal.signal(signal.SIGTERM, previous)
    text = json.dumps(result, default=str)
    print(text if args.json else json.dumps(result, indent=2, default=str))
    return 0 if not result["missing_tools"] else 3
