"""The online store: what serving reads per request, in Redis or (embedded default) SQLite.

Feast-like and pluggable: `open_store()` gives Redis when `REDIS_URL` is set and SQLite
otherwise; both are a byte key-value store with TTLs and counters behind one interface.
Keys carry the model version (`<prefix>m:<version>:u:<token>`) so two versions never mix;
only pseudonymous tokens, POI ids and model-derived numbers are stored — no personal data.
`ResilientStore` wraps either with a circuit breaker so a store outage costs a request
microseconds (it raises `StoreUnavailable` at once) and the store is retried with backoff.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import redis
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from wenlv.settings import get_settings

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "wenlv:"
USER_TTL_S = 30 * 24 * 3600


class StoreUnavailable(Exception):
    """The online store cannot answer now (down, timing out, or its circuit is open)."""


@dataclass
class UserRecord:
    """One token's online features for one model version."""

    vector: np.ndarray | None = None          # float32 user factors, or None (side features only)
    visited: list[str] = field(default_factory=list)  # POI ids visited in the training window
    side: dict = field(default_factory=dict)  # side features for the cold-start tower

    def encode(self) -> bytes:
        vec = b"" if self.vector is None else np.ascontiguousarray(self.vector, dtype=np.float32).tobytes()
        tail = json.dumps({"h": self.visited, "s": self.side}, separators=(",", ":")).encode()
        return struct.pack("<I", len(vec)) + vec + tail

    @classmethod
    def decode(cls, raw: bytes) -> "UserRecord":
        (n,) = struct.unpack_from("<I", raw)
        vector = np.frombuffer(raw, dtype=np.float32, count=n // 4, offset=4) if n else None
        tail = json.loads(raw[4 + n:])
        return cls(vector=vector, visited=tail["h"], side=tail["s"])


class KeyValueStore:
    """The interface both backends implement (bytes in, bytes out)."""

    backend = "abstract"

    def __init__(self, prefix: str = DEFAULT_PREFIX):
        self.prefix = prefix

    # keys -----------------------------------------------------------------
    def user_key(self, version: str, token: str) -> str:
        return f"{self.prefix}m:{version}:u:{token}"

    def meta_key(self, version: str) -> str:
        return f"{self.prefix}m:{version}:meta"

    def cap_key(self, tenant: str, campaign: str, token: str) -> str:
        return f"{self.prefix}fc:{tenant}:{campaign}:{token}"

    def rec_key(self, tenant: str, recommendation_id: str) -> str:
        return f"{self.prefix}rec:{tenant}:{recommendation_id}"

    # domain operations ----------------------------------------------------
    def get_user(self, version: str, token: str) -> UserRecord | None:
        raw = self.get(self.user_key(version, token))
        return None if raw is None else UserRecord.decode(raw)

    def put_users(self, version: str, records: Iterable[tuple[str, UserRecord]], ttl_s: int = USER_TTL_S) -> int:
        return self.set_many(((self.user_key(version, t), r.encode()) for t, r in records), ttl_s)

    def mark_materialized(self, version: str, meta: dict, ttl_s: int = USER_TTL_S) -> None:
        self.set_many([(self.meta_key(version), json.dumps(meta).encode())], ttl_s)

    def materialized(self, version: str) -> dict | None:
        raw = self.get(self.meta_key(version))
        return None if raw is None else json.loads(raw)

    def incr_frequency(self, tenant: str, campaign: str, token: str, ttl_s: int) -> int:
        """Count one more contact of `token` by a campaign; the window starts at the first contact."""
        return self.incr(self.cap_key(tenant, campaign, token), ttl_s)

    def get_frequency(self, tenant: str, campaign: str, token: str) -> int:
        raw = self.get(self.cap_key(tenant, campaign, token))
        return int(raw) if raw is not None else 0

    def put_recommendation(self, tenant: str, recommendation_id: str, payload: dict, ttl_s: int = 7 * 24 * 3600) -> None:
        """One list, written on a request's path: the short-timeout `set`, never the bulk writer."""
        self.set(self.rec_key(tenant, recommendation_id), json.dumps(payload).encode(), ttl_s)

    def get_recommendation(self, tenant: str, recommendation_id: str) -> dict | None:
        raw = self.get(self.rec_key(tenant, recommendation_id))
        return None if raw is None else json.loads(raw)

    # primitives -------------------------------------------------------------
    def get(self, key: str) -> bytes | None: raise NotImplementedError
    def set(self, key: str, value: bytes, ttl_s: int) -> None: raise NotImplementedError
    def set_many(self, items: Iterable[tuple[str, bytes]], ttl_s: int) -> int: raise NotImplementedError
    def incr(self, key: str, ttl_s: int) -> int: raise NotImplementedError
    def ttl(self, key: str) -> float | None: raise NotImplementedError
    def delete_prefix(self, prefix: str) -> int: raise NotImplementedError
    def scan_keys(self, prefix: str) -> list[str]: raise NotImplementedError
    def ping(self) -> bool: raise NotImplementedError
    def describe(self) -> str: return self.backend


class RedisStore(KeyValueStore):
    """Redis with short socket timeouts: a dead Redis must fail fast, not stall requests.

    `client` (timeout `timeout_s`, default WENLV_STORE_TIMEOUT, no retries) serves every call a
    request makes; `bulk` (30 s) only materialisation, scans and the background flush of served lists.
    """

    backend = "redis"

    def __init__(self, url: str, prefix: str = DEFAULT_PREFIX, timeout_s: float | None = None):
        super().__init__(prefix)
        timeout_s = get_settings().store_timeout_s if timeout_s is None else timeout_s
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 0), health_check_interval=0)
        self.bulk = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=2)  # materialisation
        self._local = threading.local()

    def get(self, key):
        # Every recommendation reads here: on this thread's own connection, a GET is one send and one read. Through
        # the client (pool checkout with a poll() per command, retry wrapper, observability hooks) it cost twice as
        # much CPU as the round trip itself (35 vs 16 us measured). Same timeouts: the connection has the client's.
        conn = getattr(self._local, "conn", None)
        if conn is None:
            pool = self.client.connection_pool
            conn = self._local.conn = pool.connection_class(**pool.connection_kwargs)
        try:
            return _get_on(conn, key)
        except redis.ConnectionError:  # e.g. Redis restarted and closed this idle socket: once more on a new one
            return _get_on(conn, key)   # (a timeout is not retried: a frozen Redis must cost one timeout)

    def set(self, key, value, ttl_s):
        self.client.set(key, value, ex=int(ttl_s))

    def set_many(self, items, ttl_s):
        """SET ... EX for every item, 5000 to a round trip, on one connection of the bulk client. Packed and read on
        the connection itself: redis-py's pipeline object cost four times the protocol work (42 vs 8 us per item
        measured), and the served-list log writes every recommendation through here."""
        ttl = int(ttl_s)
        pool = self.bulk.connection_pool
        conn = pool.get_connection()
        n = 0
        try:
            chunk = []
            for key, value in items:
                chunk.append(("SET", key, value, "EX", ttl))
                if len(chunk) == 5000:
                    n += _send_all(conn, chunk)
                    chunk = []
            if chunk:
                n += _send_all(conn, chunk)
        except BaseException:
            conn.disconnect()  # replies may still be in flight
            raise
        finally:
            pool.release(conn)
        return n

    def incr(self, key, ttl_s):
        pipe = self.client.pipeline(transaction=True)
        pipe.incr(key)
        pipe.expire(key, int(ttl_s), nx=True)
        return int(pipe.execute()[0])

    def ttl(self, key):
        t = self.client.ttl(key)
        return None if t < 0 else float(t)

    def scan_keys(self, prefix):
        return [k.decode() for k in self.bulk.scan_iter(match=_glob_escape(prefix) + "*", count=5000)]

    def delete_prefix(self, prefix):
        n = 0
        batch = []
        for key in self.bulk.scan_iter(match=_glob_escape(prefix) + "*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                n += self.bulk.delete(*batch)
                batch = []
        if batch:
            n += self.bulk.delete(*batch)
        return n

    def ping(self):
        return bool(self.client.ping())

    def describe(self):
        parts = parse_url(self.url)  # never echo a password
        return f"redis://{parts.get('host', '?')}:{parts.get('port', 6379)}/{parts.get('db', 0)}"


def _get_on(conn, key):
    try:
        conn.send_command("GET", key)
        return conn.read_response()
    except BaseException:
        conn.disconnect()  # a timeout may leave the reply in flight: the next call starts on a new socket
        raise


def _send_all(conn, commands: list[tuple]) -> int:
    """Send `commands` in one write and read every reply (an error reply is raised, as a pipeline would)."""
    conn.send_packed_command(conn.pack_commands(commands))
    for _ in commands:
        conn.read_response()
    return len(commands)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class SQLiteStore(KeyValueStore):
    """The embedded default: one table of (key, value, expires_at), one connection per thread."""

    backend = "sqlite"

    def __init__(self, path: str | Path | None = None, prefix: str = DEFAULT_PREFIX):
        super().__init__(prefix)
        self.path = Path(path) if path is not None else get_settings().online_sqlite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL)")
        db.commit()

    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    def get(self, key):
        row = self._db().execute("SELECT value FROM kv WHERE key = ? AND expires_at > ?", (key, time.time())).fetchone()
        if row is None:
            return None
        value = row[0]
        return value.encode() if isinstance(value, str) else bytes(value)  # counters are stored as text

    def set(self, key, value, ttl_s):
        db = self._db()
        with db:
            db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (key, value, time.time() + ttl_s))

    def set_many(self, items, ttl_s):
        db = self._db()
        expires = time.time() + ttl_s
        n = 0
        batch = []
        for key, value in items:
            batch.append((key, value, expires))
            if len(batch) >= 5000:
                db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", batch)
                n += len(batch)
                batch = []
        db.executemany("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", batch)
        db.commit()
        return n + len(batch)

    def incr(self, key, ttl_s):
        db = self._db()
        now = time.time()
        with db:  # one transaction: expired counters restart at 1
            db.execute("DELETE FROM kv WHERE key = ? AND expires_at <= ?", (key, now))
            db.execute("INSERT INTO kv VALUES (?, '1', ?) ON CONFLICT(key) DO UPDATE SET value = CAST(CAST(value AS INTEGER) + 1 AS TEXT)",
                       (key, now + ttl_s))
            (value,) = db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return int(value)

    def ttl(self, key):
        row = self._db().execute("SELECT expires_at FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else max(0.0, row[0] - time.time())

    def scan_keys(self, prefix):
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        return [r[0] for r in self._db().execute("SELECT key FROM kv WHERE key LIKE ? ESCAPE '\\' AND expires_at > ?", (like, time.time()))]

    def delete_prefix(self, prefix):
        like = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        db = self._db()
        with db:
            return db.execute("DELETE FROM kv WHERE key LIKE ? ESCAPE '\\'", (like,)).rowcount

    def ping(self):
        self._db().execute("SELECT 1").fetchone()
        return True

    def describe(self):
        return f"sqlite:{self.path}"


def open_store(redis_url: str | None = None, sqlite_path: str | Path | None = None, prefix: str = DEFAULT_PREFIX) -> KeyValueStore:
    """Redis when a URL is given or `REDIS_URL` is set, else the embedded SQLite store
    (`sqlite_path`, else WENLV_ONLINE_SQLITE)."""
    url = redis_url or get_settings().redis_url
    if url:
        return RedisStore(url, prefix=prefix)
    return SQLiteStore(sqlite_path, prefix=prefix)


class ResilientStore:
    """A circuit breaker around a store: fail fast while it is down, retry with backoff, recover alone."""

    def __init__(self, store: KeyValueStore, first_backoff_s: float = 0.2, max_backoff_s: float = 5.0):
        self.store = store
        self.first_backoff_s, self.max_backoff_s = first_backoff_s, max_backoff_s
        self._backoff = first_backoff_s
        self._open_until = 0.0
        self._lock = threading.Lock()
        self.failures = 0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._open_until

    @property
    def circuit_state(self) -> str:
        """"open" (calls fail fast), "half_open" (the last call failed and the next one is a trial) or "closed"."""
        if time.monotonic() < self._open_until:
            return "open"
        return "closed" if self._backoff == self.first_backoff_s else "half_open"

    def call(self, method: str, *args, **kwargs):
        if time.monotonic() < self._open_until:
            raise StoreUnavailable(f"online store {self.store.backend} is down; retrying in {self._open_until - time.monotonic():.1f} s")
        try:
            result = getattr(self.store, method)(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any backend failure means "unavailable now"
            self._trip(exc)
            raise StoreUnavailable(f"online store {self.store.backend} failed: {type(exc).__name__}") from exc
        if self._backoff != self.first_backoff_s:
            with self._lock:
                self._backoff = self.first_backoff_s
            log.info("online store %s is back", self.store.backend)
        return result

    def _trip(self, exc: Exception) -> None:
        with self._lock:
            self.failures += 1
            self._open_until = time.monotonic() + self._backoff
            log.warning("online store %s unavailable (%s); next try in %.1f s", self.store.backend, type(exc).__name__, self._backoff)
            self._backoff = min(self._backoff * 2, self.max_backoff_s)

    def __getattr__(self, name):
        attr = getattr(self.store, name)
        if callable(attr) and name in {"get_user", "incr_frequency", "get_frequency", "put_recommendation",
                                       "get_recommendation", "materialized", "ping", "get"}:
            return lambda *a, **k: self.call(name, *a, **k)
        return attr
