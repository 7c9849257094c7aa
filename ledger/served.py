"""Served recommendation lists into the ledger (`served_lists`), kept as long as attribution needs them.

The request path must not wait for the database, so lists go through a bounded in-memory
queue that a background thread drains in batches (one multi-row INSERT ... ON CONFLICT DO
NOTHING per batch, committed). Nothing goes missing unannounced: a full queue (the database
slow or away) drops the new list and counts it (`on_drop(reason, n)`, a metric in the
server), a failed batch is retried until the database is back, and `close()` drains the
queue before the process exits; what is still unwritten then is counted as dropped.
A crash (SIGKILL) loses at most the lists of the last flush interval.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Callable

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite

from wenlv.db.schema import ARMS, served_lists
from wenlv.privacy.tokens import is_psi_token

log = logging.getLogger(__name__)

QUEUE_FULL, NOT_A_TOKEN, SHUTDOWN = "queue_full", "not_a_token", "shutdown"


def served_row(tenant: str, recommendation_id: str, token: str, model_version: str | None, arm: str,
               poi_ids: list[str], served_at: float) -> dict:
    """One `served_lists` row (served_at: a Unix time)."""
    if arm not in ARMS:
        raise ValueError(f"arm must be one of {ARMS}, got {arm!r}")
    return {"recommendation_id": recommendation_id, "tenant": tenant, "token": token, "model_version": model_version,
            "arm": arm, "poi_ids": list(poi_ids), "served_at": datetime.fromtimestamp(served_at, timezone.utc)}


def record_served(engine: Engine, rows: list[dict]) -> int:
    """Store served lists once each (a re-sent list is ignored); returns how many were new."""
    if not rows:
        return 0
    dialect = postgresql if engine.dialect.name == "postgresql" else sqlite
    statement = (dialect.insert(served_lists).on_conflict_do_nothing(index_elements=["recommendation_id"])
                 .returning(served_lists.c.recommendation_id))
    with engine.begin() as connection:
        return len(connection.execute(statement, rows).all())


class ServedListWriter:
    """Bounded queue + one writer thread; `add` never blocks the caller."""

    def __init__(self, engine: Callable[[], Engine], max_pending: int = 50_000, batch: int = 500,
                 interval_s: float = 0.2, on_drop: Callable[[str, int], None] | None = None):
        self._engine_of, self._engine = engine, None   # made on first flush (the database may be slow to reach)
        self._queue: queue.Queue[dict] = queue.Queue(maxsize=max_pending)
        self.batch, self.interval_s, self.on_drop = batch, interval_s, on_drop
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._flushing = threading.Lock()
        self._thread: threading.Thread | None = None
        self._retry: list[dict] = []
        self.written = 0
        self.dropped = {QUEUE_FULL: 0, NOT_A_TOKEN: 0, SHUTDOWN: 0}

    def add(self, row: dict) -> bool:
        """Queue one row; False (and counted) when it cannot be kept."""
        if self._stop.is_set():
            self._drop(SHUTDOWN, 1)
            return False
        if not is_psi_token(row["token"]):  # events can only name PSI tokens: such a list is never attributable
            self._drop(NOT_A_TOKEN, 1)
            return False
        try:
            self._queue.put_nowait(row)
        except queue.Full:
            self._drop(QUEUE_FULL, 1)
            return False
        if self._thread is None:
            with self._lock:
                if self._thread is None and not self._stop.is_set():
                    self._thread = threading.Thread(target=self._run, name="served-lists", daemon=True)
                    self._thread.start()
        return True

    @property
    def pending(self) -> int:
        return self._queue.qsize() + len(self._retry)

    def flush(self) -> int:
        """Write what is queued now (in batches); returns rows written. A failure keeps the rows for a retry."""
        with self._flushing:
            return self._flush()

    def _flush(self) -> int:
        done = 0
        while True:
            rows = self._retry or self._take()
            if not rows:
                return done
            try:
                if self._engine is None:
                    self._engine = self._engine_of()
                record_served(self._engine, rows)
            except Exception as exc:  # noqa: BLE001 - the database is away: keep the batch, try again later
                self._retry = rows
                log.warning("served lists: %d not yet written (%s); retrying", len(rows), type(exc).__name__)
                return done
            self._retry = []
            self.written += len(rows)
            done += len(rows)

    def _take(self) -> list[dict]:
        rows = []
        while len(rows) < self.batch:
            try:
                rows.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return rows

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):  # close() wakes it at once, then drains what is left
            self.flush()

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the thread and write everything queued; count what still could not be written."""
        with self._lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.pending and time.monotonic() < deadline:
            if not self.flush():
                time.sleep(0.2)
        if self.pending:
            self._drop(SHUTDOWN, self.pending)
            self._retry = []

    def _drop(self, reason: str, n: int) -> None:
        before = self.dropped[reason]
        self.dropped[reason] += n
        if before == 0 or before // 1000 != self.dropped[reason] // 1000:  # the first, then every thousandth
            log.warning("served lists: %d dropped so far (%s)", self.dropped[reason], reason)
        if self.on_drop is not None:
            self.on_drop(reason, n)
