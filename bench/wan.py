"""`wenlv bench wan`: federated ALS with every party its own process behind an emulated WAN link.

Each party runs `wenlv party serve` in its own network namespace as its own uid
(bench.netns, bench.party_procs); the coordinator (this process) reaches them through a
middle namespace where, per link profile, htb limits each party's link to the rate in both
directions (this kernel has no netem) and a delaying TCP relay of ours
(bench.wan_tools) adds half the round-trip time in each direction. Before each run a plain
transfer through the same path checks the achieved RTT (median of 1-byte echoes) and
throughput (a bulk send to a sink). The same data is fitted in process in the same run.

Reported per link: seconds per iteration, the in-process seconds per iteration and their
ratio, bytes sent and received per party per iteration (as the coordinator counts them on
the wire, TLS excluded), the share of the fit spent waiting on the network (per party:
call time minus the party's own compute time, over the fit's wall time), and per CG stage
the bytes against the floor users × factors × ring bytes of one masked message.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.bench.als import SCALES, synthesize
from wenlv.bench.netns import Topology, have_netns
from wenlv.bench.party_procs import FIRST_UID, PartyProcess, party_folders
from wenlv.features import contracts
from wenlv.privacy import tls
from wenlv.training.als_data import load_party_matrices
from wenlv.training.federated_als import FederatedALS, init_factors
from wenlv.training.remote import RemoteParty, WireStats

PARTIES = contracts.PARTIES
LINKS = {"1gbit_2ms": (1000.0, 2.0), "100mbit_20ms": (100.0, 20.0), "20mbit_60ms": (20.0, 60.0)}
TAG, BASE = "wl17b", 60          # namespaces wl17b-*, addresses 10.231.60-63.x: this bench's own
SERVICE_PORT, PROBE_PORT = 8443, 9100


def write_features(blocks: dict, out: Path) -> Path:
    """The synthetic blocks as contract-shaped feature files (only the columns training reads)."""
    n_users = next(iter(blocks.values())).shape[0]
    tokens = np.array([f"u{i:08d}" for i in range(n_users)])
    (out / "carrier").mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"token": tokens}).to_parquet(out / "carrier" / "users.parquet")
    for party, m in blocks.items():
        coo = m.tocoo()
        col = contracts.ITEM_COLUMN[party]
        items = np.array([f"{col[:3]}{j:06d}" for j in range(m.shape[1])])
        (out / party).mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"token": tokens[coo.row], col: items[coo.col], "confidence": coo.data.astype(np.float32)}
                     ).to_parquet(out / party / f"{contracts.INTERACTION_TABLE[party].name}.parquet")
        if party == "tourism":
            pd.DataFrame({"poi_id": items}).to_parquet(out / "tourism" / "poi_features.parquet")
    return out


def _per_iteration(fit) -> tuple[float, list[float]]:
    """Run `fit(callback)`; seconds per iteration (wall / iterations) and each iteration's seconds."""
    marks = [time.perf_counter()]
    fit(lambda it: marks.append(time.perf_counter()))
    laps = list(np.diff(marks))
    return (marks[-1] - marks[0]) / max(len(laps), 1), laps


def probe_link(host: str, port: int, rate_mbit: float) -> dict:
    """RTT (median of 15 one-byte echoes) and throughput (bulk send of ~1.5 s of nominal traffic)."""
    rtts = []
    with socket.create_connection((host, port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"e")
        for _ in range(15):
            t = time.perf_counter()
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError("echo probe failed")
            rtts.append(time.perf_counter() - t)
    n = max(int(rate_mbit * 1e6 / 8 * 1.5), 1 << 20)
    with socket.create_connection((host, port), timeout=60) as s:
        chunk = b"\0" * (1 << 16)
        t = time.perf_counter()
        s.sendall(b"s" + struct.pack(">Q", n))
        left = n
        while left > 0:
            left -= s.send(chunk[:min(len(chunk), left)])
        if s.recv(1) != b"k":
            raise RuntimeError("sink probe failed")
        seconds = time.perf_counter() - t
    rtt = statistics.median(rtts)
    return {"rtt_ms": round(rtt * 1e3, 2), "throughput_mbit": round(n * 8 / max(seconds - rtt, 1e-9) / 1e6, 1),
            "probe_bytes": n}


VARIANTS = {  # name: (ring bits of the CG stages, fractional bits, arrays by reference, duplex CG stages)
    "baseline": (64, 32, False, False),      # the protocol as it was: Z_2^64, 2^-32, every array sent, one way at a time
    "ring32_refs": (32, 24, True, False),    # + Z_2^32 CG vectors (half the bytes up; within the pipeline's tolerance)
    #                                          + the CG start's user factors by reference (the party holds them)
    "ring32_refs_duplex": (32, 24, True, True),  # + P up its own stream while the masked rows stream back
}


def run(scale: str = "small", factors: int = 32, iterations: int = 3, links=tuple(LINKS), seed: int = 0,
        variants=tuple(VARIANTS), progress=print) -> dict:
    why_not = have_netns()
    if why_not:
        raise RuntimeError(f"bench wan: {why_not}")
    blocks, _ = synthesize(**SCALES[scale], seed=seed)
    work = Path(tempfile.mkdtemp(prefix="wl17b-", dir="/tmp"))
    work.chmod(0o711)  # the parties (own uids) traverse to their own 0700 folders
    procs: dict[str, PartyProcess] = {}
    out = {"scale": {"name": scale, **SCALES[scale]}, "factors": factors, "iterations": iterations,
           "dtype": "float32",
           "variants": {v: dict(zip(("ring_bits", "frac_bits", "by_reference", "duplex"), VARIANTS[v])) for v in variants},
           "reported_variant": variants[-1], "load_average_before": os.getloadavg(), "links": {}}
    try:
        features = write_features(blocks, work / "features")
        _, parts = load_party_matrices(features)
        mats = {p: parts[p].matrix for p in PARTIES}
        n_users = next(iter(mats.values())).shape[0]
        init = init_factors(n_users, {p: m.shape[1] for p, m in mats.items()}, factors, seed)
        base = dict(factors=factors, iterations=iterations, show_progress=False, num_threads=1)
        FederatedALS(**{**base, "iterations": 1}).fit(mats, init=init)   # warm-up (kernels, pages)
        local = {}
        out["in_process"] = {}
        for v in variants:
            ring, frac, refs, duplex = VARIANTS[v]
            params = dict(base, ring_bits=ring, fixed_point_bits=frac)
            model = FederatedALS(**params)
            seconds, laps = _per_iteration(lambda cb: model.fit(mats, init=init, callback=cb))
            local[v] = (params, model, seconds, dict(references=refs, duplex=duplex))
            out["in_process"][v] = {"seconds_per_iteration": round(seconds, 3),
                                    "iteration_seconds": np.round(laps, 3).tolist()}
            progress(f"in process ({v}): {seconds:.2f} s/iteration")
        out["users"] = n_users
        certs = work / "certs"
        tls.make_deployment(certs, PARTIES)
        with Topology(TAG, BASE, PARTIES) as topo:
            homes = party_folders(features, work / "parties", PARTIES, certs)
            for k, p in enumerate(PARTIES):
                procs[p] = PartyProcess(topo, p, homes[p], FIRST_UID + k, port=SERVICE_PORT)
            probes = [subprocess.Popen([*topo.exec_prefix(p), sys.executable, "-m", "wenlv.bench.wan_tools", "probe",
                                        "--listen", f"{topo.addr[p]}:{PROBE_PORT}"], stdout=subprocess.PIPE,
                                       env=dict(os.environ)) for p in PARTIES]
            for pr in probes:
                pr.stdout.readline()
            try:
                # warm-up on the plain links: each party process compiles its kernels (numba) once
                warm = {p: RemoteParty(p, f"https://{topo.addr[p]}:{SERVICE_PORT}", certs, timeout=600) for p in PARTIES}
                FederatedALS(collect_items=(), **{**base, "iterations": 1}).fit_parties(warm, init=init)
                for h in warm.values():
                    h.close()
                for link in links:
                    rate, rtt = LINKS[link]
                    runs = {v: _run_link(topo, link, rate, rtt, init, *local[v], certs, progress) for v in variants}
                    out["links"][link] = {**runs[variants[-1]], "variants": {
                        v: {k: r[k] for k in ("seconds_per_iteration", "in_process_seconds_per_iteration", "ratio",
                                              "bytes_per_party", "equal_to_in_process", "per_stage")}
                        for v, r in runs.items()}}
            finally:
                for pr in probes:
                    pr.terminate()
                    pr.wait(timeout=15)
    finally:
        for proc in procs.values():
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)
    out["load_average_after"] = os.getloadavg()
    return out


def _run_link(topo, link, rate, rtt, init, params, local_model, in_process, transport, certs, progress) -> dict:
    routes = []
    for k, p in enumerate(PARTIES):
        routes.append(f"{topo.middle_addr}:{SERVICE_PORT + k}={topo.addr[p]}:{SERVICE_PORT}")
        routes.append(f"{topo.middle_addr}:{PROBE_PORT + k}={topo.addr[p]}:{PROBE_PORT}")
    how = {p: topo.shape(p, rate) for p in PARTIES}
    relay = subprocess.Popen([*topo.exec_prefix(None), sys.executable, "-m", "wenlv.bench.wan_tools", "relay",
                              "--delay-ms", str(rtt / 2), *routes], stdout=subprocess.PIPE, env=dict(os.environ))
    try:
        relay.stdout.readline()
        checks = {p: probe_link(topo.middle_addr, PROBE_PORT + k, rate) for k, p in enumerate(PARTIES)}
        stats = WireStats()
        handles = {p: RemoteParty(p, f"https://{topo.middle_addr}:{SERVICE_PORT + k}", certs, timeout=600,
                                  stats=stats, **transport) for k, p in enumerate(PARTIES)}
        model = FederatedALS(collect_items=("tourism",), **params)
        try:
            seconds, laps = _per_iteration(lambda cb: model.fit_parties(handles, init=init, callback=cb))
        finally:
            for h in handles.values():
                h.close()
        equal = bool(np.array_equal(model.user_factors, local_model.user_factors)
                     and np.array_equal(model.item_factors["tourism"], local_model.item_factors["tourism"]))
        wall = model.timings_["wall_seconds"]
        it = params["iterations"]
        n_users, f = init[0].shape
        floor = n_users * f * params["ring_bits"] // 8
        stages = {}
        for key, s in sorted(stats.by_stage.items()):
            per_call_up, per_call_down = s["received"] / s["calls"], s["sent"] / s["calls"]
            entry = {"calls": s["calls"], "bytes_up_per_party": round(per_call_up),
                     "bytes_down_per_party": round(per_call_down)}
            if key in ("r0",) or key.startswith("ap"):
                entry["floor_up"] = floor
                entry["up_over_floor"] = round(per_call_up / floor, 4)
            stages[key] = entry
        result = {
            "seconds_per_iteration": round(seconds, 3), "iteration_seconds": np.round(laps, 3).tolist(),
            "in_process_seconds_per_iteration": round(in_process, 3), "ratio": round(seconds / in_process, 2),
            "bytes_per_party": {p: {"sent_to_party_per_iteration": stats.sent[p] // it,
                                    "received_from_party_per_iteration": stats.received[p] // it} for p in PARTIES},
            "network_wait_share": {p: round(max(stats.seconds[p] - stats.compute[p], 0.0) / wall, 3) for p in PARTIES},
            "per_stage": stages, "equal_to_in_process": equal,
            "link": {"rate_mbit": rate, "rtt_ms": rtt,
                     "how": {"bandwidth": how, "delay": f"bench.wan_tools relay in {topo.middle}, {rtt / 2} ms "
                                                       f"each way"}},
            "check": checks,
        }
        progress(f"{link} {transport} ring {params['ring_bits']}: {seconds:.2f} s/iteration, ratio {seconds / in_process:.2f}, "
                 f"equal {equal}")
        return result
    finally:
        relay.terminate()
        relay.wait(timeout=15)
        for p in PARTIES:
            topo.unshape(p)


def register(bench_sub) -> None:
    p = bench_sub.add_parser("wan", help="federated ALS over emulated WAN links, parties in their own namespaces")
    p.add_argument("--scale", choices=tuple(SCALES), default="small", help="synthetic problem size (users, items)")
    p.add_argument("--factors", type=int, default=32, help="ALS factors")
    p.add_argument("--iterations", type=int, default=3, help="federated ALS iterations per link")
    p.add_argument("--links", default=",".join(LINKS), help=f"comma list of {', '.join(LINKS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}; "
                                                                  "the last one is reported at the top of each link")
    p.add_argument("--json", action="store_true", help="JSON only on stdout")
    p.set_defaults(func=main)


def main(args) -> int:
    links = tuple(x for x in args.links.split(",") if x)
    unknown = [x for x in links if x not in LINKS]
    if unknown:
        raise SystemExit(f"unknown link(s) {unknown}; known: {', '.join(LINKS)}")
    variants = tuple(x for x in args.variants.split(",") if x)
    if any(v not in VARIANTS for v in variants):
        raise SystemExit(f"unknown variant in {variants}; known: {', '.join(VARIANTS)}")
    result = run(args.scale, args.factors, args.iterations, links, variants=variants,
                 progress=lambda m: print(f"[bench wan] {m}", file=sys.stderr, flush=True))
    print(json.dumps(result, indent=None if args.json else 2))
    return 0
