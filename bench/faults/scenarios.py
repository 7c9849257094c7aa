"""One function per fault: inject it under steady load, heal it, and count.

Every scenario answers the same questions (issue 18): how much was sent, acknowledged and
served, how much failed with a clear status (the API's JSON error) or without one, how many
acknowledged events are missing from the ledger (lost, must be 0) or stored twice
(duplicated, must be 0), and how long after the fault was healed both routes were healthy
again (`recovery_s`; `outage_s` counts from the injection).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
from sqlalchemy import text

from wenlv.bench.faults.harness import TENANT, Deployment
from wenlv.bench.faults.load import SteadyLoad
from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.db.engine import make_engine
from wenlv.training import registry, tracking


def stored_events(db_url: str, run: str) -> tuple[set[str], int]:
    """(event ids of this load run in the ledger, rows stored more than once)."""
    engine = make_engine(db_url)
    try:
        with engine.connect() as c:
            rows = [r[0] for r in c.execute(text("SELECT event_id FROM events WHERE tenant = :t AND event_id LIKE :p"),
                                            {"t": TENANT, "p": f"{run}-%"})]
    finally:
        engine.dispose()
    return set(rows), len(rows) - len(set(rows))


def under_load(dep: Deployment, inject, heal, warm_s: float = 3.0, fault_s: float = 3.0, after_s: float = 6.0,
               rec_rate: float = 40, event_rate: float = 10, unhealthy_versions=()) -> dict:
    load = SteadyLoad(dep.base, dep.key, dep.tokens, rec_rate=rec_rate, event_rate=event_rate)
    load.unhealthy_versions = {str(v) for v in unhealthy_versions}
    load.start()
    time.sleep(warm_s)
    injected = time.monotonic()
    inject()
    time.sleep(fault_s)
    healed = time.monotonic()
    heal()
    time.sleep(after_s)
    load.stop(drain_s=30)
    stored, duplicated = stored_events(dep.db_url, load.run)
    back = [load.recs.healthy_again_at(healed), load.events.healthy_again_at(healed)]
    recovered = None if None in back else max(back)
    return {
        "sent": load.recs.sent + len(load.events_sent),
        "acknowledged": len(load.acknowledged),
        "served": load.recs.ok + load.recs.degraded,
        "failed_clear": load.recs.clear + load.events.clear,
        "failed_unclear": load.recs.unclear + load.events.unclear,
        "lost": len(load.acknowledged - stored),
        "duplicated": duplicated,
        "unacknowledged_events": len(load.events_sent - load.acknowledged),
        "recovery_s": None if recovered is None else round(max(0.0, recovered - healed), 3),
        "outage_s": None if recovered is None else round(recovered - injected, 3),
        "fault_s": round(healed - injected, 3),
        "routes": {"recommendations": load.recs.summary(), "events": load.events.summary()},
    }


# ---------------------------------------------------------------------------------- the faults
def api_sigkill(dep: Deployment, **kw) -> dict:
    """SIGKILL, then a restart at once (the fault lasts until the restart begins; recovery includes start-up)."""
    return under_load(dep, dep.kill_api, dep.start_api, **{"fault_s": 0.5, **kw})


def redis_restart(dep: Deployment, **kw) -> dict:
    return under_load(dep, dep.redis.stop, dep.redis.start, **kw)


def redis_freeze(dep: Deployment, **kw) -> dict:
    pid = dep.redis.proc.pid
    return under_load(dep, lambda: os.kill(pid, signal.SIGSTOP), lambda: os.kill(pid, signal.SIGCONT), **kw)


def postgres_restart(dep: Deployment, **kw) -> dict:
    """A crash (`pg_ctl stop -m immediate`: recovery from the WAL), then a start."""
    return under_load(dep, lambda: dep.postgres.stop("immediate"), dep.postgres.start, **kw)


@contextlib.contextmanager
def small_filesystem(size_mb: int = 24):
    """A size-limited tmpfs (needs root), removed afterwards."""
    where = Path(tempfile.mkdtemp(prefix="wenlv-small-fs-"))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)], check=True,
                   capture_output=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False, capture_output=True)
        where.rmdir()


def fill(folder: Path) -> Path:
    """Write a file until the filesystem is full; returns it (delete it to free the space)."""
    filler = folder / "filler.bin"
    block = b"\0" * (1 << 20)
    with open(filler, "wb") as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(block)
                out.flush()
    with contextlib.suppress(OSError), open(filler, "ab") as out:  # the last partial blocks
        for _ in range(1 << 12):
            out.write(b"\0" * 256)
            out.flush()
    return filler


def disk_full(dep: Deployment, **kw) -> dict:
    """The ledger's filesystem fills up (the Deployment's SQLite ledger must live on a `small_filesystem`)."""
    filler = dep.ledger_dir / "filler.bin"
    return under_load(dep, lambda: fill(dep.ledger_dir), lambda: filler.unlink(missing_ok=True), **kw)


def corrupt_model(dep: Deployment, **kw) -> dict:
    """A new champion whose factors were damaged in the artifact store after registration: the server must keep
    serving the version it has (never the damaged one) until a good version is promoted. `dep` follows the registry.
    Recovery: from promoting the good version until answers come from it."""
    if not dep.follow_registry:
        raise ValueError("corrupt_model needs a Deployment(follow_registry=True)")
    served_before = str(registry.champion_version(dep.tracking_uri))
    bad_dir = dep.workdir / "bundle-bad"
    synthetic_bundle(n_pois=dep.n_pois, n_users=dep.n_users, factors=16, seed=6, version="bad").save(bad_dir)
    bad = dep.register(bad_dir)
    good_dir = dep.workdir / "bundle-good"
    synthetic_bundle(n_pois=dep.n_pois, n_users=dep.n_users, factors=16, seed=5, version="good").save(good_dir)

    def inject():
        run_id = tracking.client(dep.tracking_uri).get_model_version(registry.MODEL_NAME, str(bad)).run_id
        stored = Path(urlparse(tracking.client(dep.tracking_uri).get_run(run_id).info.artifact_uri).path)
        target = stored / "bundle" / "poi_factors.npy"
        rng = np.random.default_rng(3)
        np.save(target, rng.normal(size=np.load(target).shape).astype(np.float32))  # plausible, wrong
        registry.promote(bad, dep.tracking_uri)

    def heal():
        registry.promote(dep.register(good_dir), dep.tracking_uri)

    result = under_load(dep, inject, heal, unhealthy_versions={served_before, bad}, **{"fault_s": 4.0, **kw})
    versions = result["routes"]["recommendations"].get("model_versions", {})
    result["served_damaged_version"] = versions.get(str(bad), 0)
    result["versions"] = {"before": served_before, "damaged": str(bad)}
    return result


SERVICE_FAULTS = {"api_sigkill": api_sigkill, "redis_restart": redis_restart, "redis_freeze": redis_freeze,
                  "postgres_restart": postgres_restart}
