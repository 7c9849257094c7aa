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

from sqlalchemy import text

from wenlv.bench.faults.harness import TENANT, Deployment
from wenlv.bench.faults.load import SteadyLoad
from wenlv.db.engine import make_engine


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
               rec_rate: float = 40, event_rate: float = 10) -> dict:
    load = SteadyLoad(dep.base, dep.key, dep.tokens, rec_rate=rec_rate, event_rate=event_rate).start()
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


SERVICE_FAULTS = {"api_sigkill": api_sigkill, "redis_restart": redis_restart, "redis_freeze": redis_freeze,
                  "postgres_restart": postgres_restart}
