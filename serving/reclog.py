"""The log of served recommendation lists, written to the online store off the request path.

Each response's list (id, version, strategy, POI ids, token) is kept for attribution and
for `GET /v1/recommendations/{id}`. Writing it inline would cost every request a second
store round trip, so lists are buffered and flushed in one pipeline every `interval_s`
by a background thread; lookups see the buffer too, so a list is readable at once. If the
store is down the buffer keeps up to `max_pending` lists and retries; beyond that the
oldest are dropped, counted and logged (never silently).

The store keeps lists for 7 days; attribution needs them longer, so each list also goes to
the ledger's `served_lists` table through `ledger` (a `ledger.served.ServedListWriter`,
attached by `attach_ledger` on the first request; closed, and so drained, with this log).
"""
from __future__ import annotations

import json
import logging
import threading
from collections import OrderedDict

from wenlv.ledger.served import ServedListWriter, served_row

log = logging.getLogger(__name__)

TTL_S = 7 * 24 * 3600


class RecommendationLog:
    def __init__(self, store, interval_s: float = 0.05, max_pending: int = 100_000, on_drop=None):
        self.store = store  # a raw KeyValueStore (the flusher handles failures itself)
        self.interval_s, self.max_pending = interval_s, max_pending
        self.on_drop = on_drop
        self._pending: OrderedDict[tuple[str, str], dict] = OrderedDict()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.written = 0
        self.ledger: ServedListWriter | None = None

    def add(self, tenant: str, recommendation_id: str, payload: dict) -> None:
        if self.ledger is not None:
            self.ledger.add(served_row(tenant, recommendation_id, payload["token"], payload.get("model_version"),
                                       payload.get("arm", "treatment"), payload["poi_ids"], payload["created_at"]))
        with self._lock:
            self._pending[(tenant, recommendation_id)] = payload
            overflow = len(self._pending) - self.max_pending
            for _ in range(max(0, overflow)):
                self._pending.popitem(last=False)
            if overflow > 0:
                self.dropped += overflow
                log.warning("recommendation log: store unavailable, dropped %d oldest lists", overflow)
                if self.on_drop is not None:
                    self.on_drop(overflow)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="recommendation-log", daemon=True)
                self._thread.start()

    def get(self, tenant: str, recommendation_id: str) -> dict | None:
        """A list served to `tenant` (pending or stored); another tenant's id is simply unknown."""
        with self._lock:
            pending = self._pending.get((tenant, recommendation_id))
        if pending is not None:
            return pending
        return self.store.get_recommendation(tenant, recommendation_id)

    def flush(self) -> int:
        with self._lock:
            batch = list(self._pending.items())
        if not batch:
            return 0
        try:
            self.store.set_many(((self.store.rec_key(t, rid), json.dumps(p).encode()) for (t, rid), p in batch), TTL_S)
        except Exception as exc:  # noqa: BLE001 - keep them and retry on the next tick
            log.debug("recommendation log flush failed (%s); will retry", type(exc).__name__)
            return 0
        with self._lock:
            for key, payload in batch:
                if self._pending.get(key) is payload:
                    del self._pending[key]
        self.written += len(batch)
        return len(batch)

    @property
    def pending(self) -> int:
        return len(self._pending)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.flush()

    def attach_ledger(self, make_writer) -> ServedListWriter:
        """The ledger writer, made by `make_writer()` once (several request threads may ask at the same time)."""
        if self.ledger is None:
            with self._lock:
                if self.ledger is None:
                    self.ledger = make_writer()
        return self.ledger

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.flush()
        if self.ledger is not None:
            self.ledger.close()
