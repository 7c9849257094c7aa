"""Steady traffic that keeps its own books: what it sent, what the server acknowledged, what failed how.

Recommendations are paced GETs; an answer is `ok` (personalised), `degraded` (served, from the
in-process model and popularity), a `clear` failure (an HTTP status with the JSON error body)
or `unclear` (no answer: refused connection, timeout, or a body that is not the API's error).
Events go in batches with unique ids; a batch is resent with the same ids until the server
acknowledges it (as a client must), so every acknowledged id must end up stored exactly once.
"""
from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import httpx


@dataclass
class RouteBook:
    sent: int = 0
    ok: int = 0
    degraded: int = 0
    clear: int = 0
    unclear: int = 0
    statuses: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)   # model_version -> answers (recommendations)
    timeline: list = field(default_factory=list)  # (monotonic time, ok?)

    def add(self, at: float, outcome: str, status: int | None) -> None:
        self.sent += 1
        setattr(self, outcome, getattr(self, outcome) + 1)
        key = str(status) if status is not None else "no answer"
        self.statuses[key] = self.statuses.get(key, 0) + 1
        self.timeline.append((at, outcome == "ok"))

    def healthy_again_at(self, since: float) -> float | None:
        """The first time at or after `since` from which the next three requests were ok."""
        points = [(t, ok) for t, ok in self.timeline if t >= since]
        for i in range(len(points) - 2):
            if all(ok for _, ok in points[i:i + 3]):
                return points[i][0]
        return None

    def summary(self) -> dict:
        out = {"sent": self.sent, "ok": self.ok, "degraded": self.degraded, "failed_clear": self.clear,
               "failed_unclear": self.unclear, "statuses": dict(sorted(self.statuses.items()))}
        if self.versions:
            out["model_versions"] = dict(sorted(self.versions.items()))
        return out


def _is_api_error(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return isinstance(body, dict) and "error" in body and "message" in body


class SteadyLoad:
    def __init__(self, base: str, key: str, tokens: list[str], rec_rate: float = 40, event_rate: float = 10,
                 batch: int = 20, timeout_s: float = 5.0):
        self.base, self.tokens = base, tokens
        self.rec_rate, self.event_rate, self.batch, self.timeout_s = rec_rate, event_rate, batch, timeout_s
        self.headers = {"Authorization": f"Bearer {key}"}
        self.recs, self.events = RouteBook(), RouteBook()
        self.events_sent: set[str] = set()
        self.acknowledged: set[str] = set()
        self.run = uuid.uuid4().hex[:8]
        self.unhealthy_versions: set[str] = set()  # answers from these versions do not count as recovered
        self._stop, self._drain_until = threading.Event(), 0.0
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def start(self) -> "SteadyLoad":
        self._threads = [threading.Thread(target=self._recommend, daemon=True),
                         threading.Thread(target=self._post_events, daemon=True)]
        for t in self._threads:
            t.start()
        return self

    def stop(self, drain_s: float = 30.0) -> None:
        """Stop sending new work; batches not yet acknowledged are retried for up to `drain_s`."""
        self._drain_until = time.monotonic() + drain_s
        self._stop.set()
        for t in self._threads:
            t.join(timeout=drain_s + 2 * self.timeout_s)

    # -------------------------------------------------------------- recommendations
    def _recommend(self) -> None:
        gap = 1.0 / self.rec_rate
        with httpx.Client(headers=self.headers, timeout=self.timeout_s) as http:
            i = 0
            while not self._stop.is_set():
                started = time.monotonic()
                token = self.tokens[i % len(self.tokens)]
                i += 1
                try:
                    r = http.get(f"{self.base}/v1/visitors/{token}/recommendations", params={"k": 10})
                except httpx.HTTPError:
                    self.recs.add(started, "unclear", None)
                else:
                    if r.status_code == 200:
                        body = r.json()
                        version = str(body.get("model_version"))
                        self.recs.versions[version] = self.recs.versions.get(version, 0) + 1
                        ok = not body.get("degraded") and version not in self.unhealthy_versions
                        self.recs.add(started, "ok" if ok else "degraded", 200)
                    else:
                        self.recs.add(started, "clear" if _is_api_error(r) else "unclear", r.status_code)
                time.sleep(max(0.0, gap - (time.monotonic() - started)))

    # -------------------------------------------------------------- events
    def _batch(self, n: int) -> list[dict]:
        tokens = self.tokens
        return [{"event_id": f"{self.run}-{n}-{j}", "kind": "booking" if j % 4 == 0 else "click",
                 "token": tokens[(n * self.batch + j) % len(tokens)], "poi_id": f"P{j:05d}",
                 "amount_cny": "128.00" if j % 4 == 0 else None, "occurred_at": "2026-11-01T10:00:00+08:00"}
                for j in range(self.batch)]

    def _post_events(self) -> None:
        gap = 1.0 / self.event_rate
        n = 0
        with httpx.Client(headers=self.headers, timeout=self.timeout_s) as http:
            while not self._stop.is_set():
                started = time.monotonic()
                batch = self._batch(n)
                n += 1
                self.events_sent.update(e["event_id"] for e in batch)
                self._send_until_acknowledged(http, batch)
                time.sleep(max(0.0, gap - (time.monotonic() - started)))

    def _send_until_acknowledged(self, http: httpx.Client, batch: list[dict]) -> None:
        backoff = 0.05
        while True:
            at = time.monotonic()
            if self._stop.is_set() and at > self._drain_until:
                return  # never acknowledged: counted as sent, not as lost
            try:
                r = http.post(f"{self.base}/v1/events", json={"events": batch})
            except httpx.HTTPError:
                self.events.add(at, "unclear", None)
            else:
                if r.status_code == 200:
                    body = r.json()
                    if body.get("rejected"):
                        raise AssertionError(f"the fault load's own events were rejected: {body['rejected'][:2]}")
                    self.events.add(at, "ok", 200)
                    self.acknowledged.update(e["event_id"] for e in batch)
                    return
                self.events.add(at, "clear" if _is_api_error(r) else "unclear", r.status_code)
            time.sleep(backoff)
            backoff = min(1.0, backoff * 2)
