"""`wenlv bench faults --json`: the long variants of the fault suite (tests/faults runs short ones)."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path


ALL = ("api_sigkill", "redis_restart", "redis_freeze", "postgres_restart", "corrupt_model", "disk_full", "party_dropout",
       "replay")


def register(sub) -> None:
    p = sub.add_parser("faults", help="faults under steady load: sent, acknowledged, lost, duplicated, recovery (needs root "
                                      "for the disk-full filesystem)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--only", action="append", choices=ALL, default=None, help="run this fault only (repeatable)")
    p.add_argument("--fault-seconds", type=float, default=10.0, help="how long each fault lasts")
    p.add_argument("--after-seconds", type=float, default=20.0, help="steady load after the fault is healed")
    p.add_argument("--rec-rate", type=float, default=100.0, help="recommendation requests per second")
    p.add_argument("--event-rate", type=float, default=20.0, help="event batches (of 20) per second")
    p.set_defaults(func=main)


def run(only=None, fault_s: float = 10.0, after_s: float = 20.0, rec_rate: float = 100, event_rate: float = 20) -> dict:
    # lazy: CLI start-up. The harness loads serving, hence FAISS, whose OpenMP OpenBLAS would make implicit's ALS
    # in the same process (e.g. `wenlv demo`, which builds this parser) run with 2 BLAS threads and warn.
    from wenlv.bench.faults import party, scenarios
    from wenlv.bench.faults.harness import Deployment

    names = only or ALL
    kw = {"fault_s": fault_s, "after_s": after_s, "rec_rate": rec_rate, "event_rate": event_rate}
    out: dict = {"load_average_before": [round(x, 2) for x in os.getloadavg()], "faults": {},
                 "settings": {**kw, "note": "api_sigkill's fault lasts only until the restart begins"}}
    work = Path(tempfile.mkdtemp(prefix="wenlv-bench-faults-"))
    try:
        service = [n for n in names if n in scenarios.SERVICE_FAULTS]
        if service:
            with Deployment(work / "services") as dep:
                for name in service:
                    print(f"bench faults: {name} …", file=sys.stderr, flush=True)
                    args = {k: v for k, v in kw.items() if k != "fault_s"} if name == "api_sigkill" else kw
                    out["faults"][name] = scenarios.SERVICE_FAULTS[name](dep, **args)
        if "corrupt_model" in names:
            print("bench faults: corrupt_model …", file=sys.stderr, flush=True)
            with Deployment(work / "registry", follow_registry=True) as dep:
                out["faults"]["corrupt_model"] = scenarios.corrupt_model(dep, **kw)
        if "disk_full" in names:
            print("bench faults: disk_full …", file=sys.stderr, flush=True)
            with scenarios.small_filesystem(24) as fs, Deployment(work / "disk", ledger="sqlite", ledger_dir=fs) as dep:
                out["faults"]["disk_full"] = scenarios.disk_full(dep, **kw)
        for name, fault in (("party_dropout", party.party_dropout), ("replay", party.replay)):
            if name in names:
                print(f"bench faults: {name} …", file=sys.stderr, flush=True)
                out["faults"][name] = fault(work / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    out["verdict"] = {"lost": sum(f["lost"] for f in out["faults"].values()),
                      "duplicated": sum(f["duplicated"] for f in out["faults"].values())}
    return out


def main(args) -> int:
    result = run(args.only, args.fault_seconds, args.after_seconds, args.rec_rate, args.event_rate)
    print(json.dumps(result, indent=None if args.json else 2))
    return 0 if result["verdict"]["lost"] == 0 and result["verdict"]["duplicated"] == 0 else 1
