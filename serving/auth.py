"""Bearer API keys: a role and a tenant per key, stored only as a peppered hash.

A key looks like `wlv_<key_id>_<secret>`. The key store keeps HMAC-SHA256(pepper, key)
in an SQLite table, never the key; the pepper comes from `WENLV_API_PEPPER` or a 0600
file beside the key database (made on first use), so a stolen database alone cannot
be brute-forced offline. `require_role(*roles)` is the FastAPI dependency routers use.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPBearer

from wenlv.errors import WenlvError
from wenlv.serving import sessions
from wenlv.settings import get_settings

ROLES = ("visitor-app", "marketer", "analyst", "admin")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the role decides which routes, the tenant which data."""

    role: str
    tenant: str
    key_id: str


class ApiError(Exception):
    """An error answered as JSON `{"error": code, "message": ...}` with an HTTP status."""

    def __init__(self, status: int, code: str, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


class KeyStore:
    """API keys in SQLite (hashed); lookups are served from memory.

    A revoke, a new key or an expiry must take effect within `CHECK_EVERY_S` (another process,
    `wenlv apikey`, may have written the database), yet a request must not read the database.
    So at most every `CHECK_EVERY_S` a lookup asks SQLite's `PRAGMA data_version` on a kept
    connection (a counter that moves when another connection commits, a few microseconds) and
    reloads only when it moved; an unknown key also triggers that check. Expiry needs no read:
    each cached key carries its `expires_at`.

    Dashboard sessions live in the same database (table `dashboard_sessions`: the sha256 of each
    session id, its key and expiry) and the same cache, so a logout or `wenlv apikey end-sessions`
    in any process ends a session within `CHECK_EVERY_S`, and a request with a cookie reads no table.
    """

    CHECK_EVERY_S = 0.25
    MAX_SESSIONS_PER_KEY = 20  # a login beyond this ends the key's oldest session: the table stays bounded

    def __init__(self, path: str | Path | None = None, pepper: bytes | None = None):
        self.path = Path(path) if path is not None else get_settings().api_keys_db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pepper = pepper or _load_pepper(self.path)
        self._lock = threading.Lock()
        self._by_hash: dict[str, tuple[Principal, float]] = {}
        self._by_id: dict[str, tuple[Principal, float]] = {}
        self._sessions: dict[str, tuple[str, float]] = {}  # sha256(session id) -> (key id, expires at)
        self._checked_at = 0.0
        self._data_version = None
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS api_keys (key_hash TEXT PRIMARY KEY, key_id TEXT UNIQUE NOT NULL,"
                       " role TEXT NOT NULL, tenant TEXT NOT NULL, created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0,"
                       " expires_at REAL)")
            columns = {row[1] for row in db.execute("PRAGMA table_info(api_keys)")}
            if "expires_at" not in columns:  # a key database made before keys could expire
                db.execute("ALTER TABLE api_keys ADD COLUMN expires_at REAL")
            db.execute("CREATE TABLE IF NOT EXISTS dashboard_sessions (session_hash TEXT PRIMARY KEY,"
                       " key_id TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL)")
        self._watch = sqlite3.connect(self.path, timeout=5, check_same_thread=False)  # only for PRAGMA data_version
        self._reload()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5)

    def _hash(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    def create(self, role: str, tenant: str, expires_in_s: float | None = None) -> str:
        """Make a new key (valid for `expires_in_s` seconds, or until revoked); the plain key is returned once and
        never stored."""
        if role not in ROLES:
            raise WenlvError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
        if not tenant or not tenant.replace("-", "").replace("_", "").isalnum() or len(tenant) > 64:
            raise WenlvError(f"tenant {tenant!r} must be 1-64 letters, digits, '-' or '_'")
        if expires_in_s is not None and not expires_in_s > 0:
            raise WenlvError(f"a key's lifetime must be positive, got {expires_in_s!r} s")
        key_id = secrets.token_hex(6)
        key = f"wlv_{key_id}_{secrets.token_urlsafe(24)}"
        now = time.time()
        expires_at = None if expires_in_s is None else now + expires_in_s
        with self._connect() as db:
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, 0, ?)",
                       (self._hash(key), key_id, role, tenant, now, expires_at))
        self._reload()
        return key

    def rotate(self, key_id: str, grace_s: float) -> tuple[str, float]:
        """A new key for the role and tenant of `key_id` (and no longer-lived than it); the old key keeps working for
        `grace_s` seconds, then is refused like an expired one. Returns (new key, when the old one stops, Unix s)."""
        if not grace_s >= 0:
            raise WenlvError(f"the grace period must be 0 or more seconds, got {grace_s!r}")
        with self._connect() as db:
            row = db.execute("SELECT role, tenant, expires_at FROM api_keys WHERE key_id = ? AND revoked = 0",
                             (key_id,)).fetchone()
        if row is None:
            raise WenlvError(f"no active API key with id {key_id!r} (see `wenlv apikey list`)")
        role, tenant, expires_at = row
        now = time.time()
        if expires_at is not None and expires_at <= now:
            raise WenlvError(f"API key {key_id!r} has already expired; create a new one instead")
        key = self.create(role, tenant, expires_in_s=None if expires_at is None else expires_at - now)
        old_until = now + grace_s if expires_at is None else min(expires_at, now + grace_s)
        with self._connect() as db:
            db.execute("UPDATE api_keys SET expires_at = ? WHERE key_id = ?", (old_until, key_id))
        self._reload()
        return key, old_until

    def revoke(self, key_id: str) -> bool:
        with self._connect() as db:
            changed = db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,)).rowcount
        self._reload()
        return bool(changed)

    def list(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT key_id, role, tenant, created_at, revoked, expires_at FROM api_keys"
                              " ORDER BY created_at").fetchall()
        return [dict(zip(("key_id", "role", "tenant", "created_at", "revoked", "expires_at"), r)) for r in rows]

    # ------------------------------------------------------------ dashboard sessions
    def start_session(self, key_id: str, ttl_s: float) -> tuple[str, int]:
        """A new session for an active key: (session id, expiry in Unix s), the expiry no later than the key's.

        Expired sessions are dropped, and beyond MAX_SESSIONS_PER_KEY the key's oldest ones end."""
        now = time.time()
        session_id = secrets.token_urlsafe(24)
        with self._connect() as db:
            row = db.execute("SELECT expires_at FROM api_keys WHERE key_id = ? AND revoked = 0", (key_id,)).fetchone()
            if row is None:
                raise WenlvError(f"no active API key with id {key_id!r}")
            expires = int(min(now + ttl_s, float("inf") if row[0] is None else row[0]))
            db.execute("DELETE FROM dashboard_sessions WHERE expires_at <= ?", (now,))
            db.execute("INSERT INTO dashboard_sessions VALUES (?, ?, ?, ?)", (_sha256(session_id), key_id, now, expires))
            db.execute("DELETE FROM dashboard_sessions WHERE key_id = ? AND session_hash NOT IN (SELECT session_hash"
                       " FROM dashboard_sessions WHERE key_id = ? ORDER BY created_at DESC LIMIT ?)",
                       (key_id, key_id, self.MAX_SESSIONS_PER_KEY))
        self._reload()
        return session_id, expires

    def end_session(self, session_id: str) -> bool:
        """End one session (a logout): its cookie is refused from now on, in every process within CHECK_EVERY_S."""
        with self._connect() as db:
            changed = db.execute("DELETE FROM dashboard_sessions WHERE session_hash = ?", (_sha256(session_id),)).rowcount
        self._reload()
        return bool(changed)

    def end_sessions(self, key_id: str) -> int:
        """End every dashboard session of a key (a suspected stolen cookie) without revoking the key; how many."""
        with self._connect() as db:
            changed = db.execute("DELETE FROM dashboard_sessions WHERE key_id = ?", (key_id,)).rowcount
        self._reload()
        return changed

    def session(self, session_id: str) -> Principal | None:
        """The principal of a live session whose key is still active; None otherwise. Reads memory only."""
        self._refresh()
        found = self._sessions.get(_sha256(session_id))
        if found is None and self._changed():  # a login served by another process since the last check
            self._reload()
            found = self._sessions.get(_sha256(session_id))
        now = time.time()
        if found is None or found[1] <= now:
            return None
        key = self._by_id.get(found[0])
        if key is None or key[1] <= now:
            return None
        return key[0]

    def _reload(self) -> None:
        with self._lock:
            version = self._watch.execute("PRAGMA data_version").fetchone()[0]
            with self._connect() as db:
                rows = db.execute("SELECT key_hash, key_id, role, tenant, expires_at FROM api_keys WHERE revoked = 0").fetchall()
                live = db.execute("SELECT session_hash, key_id, expires_at FROM dashboard_sessions WHERE expires_at > ?",
                                  (time.time(),)).fetchall()
            self._by_hash = {h: (Principal(role=r, tenant=t, key_id=k), float("inf") if e is None else e)
                             for h, k, r, t, e in rows}
            self._by_id = {p.key_id: (p, e) for p, e in self._by_hash.values()}
            self._sessions = {h: (k, e) for h, k, e in live}
            self._data_version = version
            self._checked_at = time.monotonic()

    def _changed(self) -> bool:
        """Whether another connection committed since the last load (one PRAGMA, no table read)."""
        with self._lock:
            self._checked_at = time.monotonic()
            return self._watch.execute("PRAGMA data_version").fetchone()[0] != self._data_version

    def _refresh(self) -> None:
        """Reload when another connection committed, asking at most every CHECK_EVERY_S."""
        if time.monotonic() - self._checked_at > self.CHECK_EVERY_S and self._changed():
            self._reload()

    def lookup(self, key: str) -> Principal | None:
        """The principal of a valid key; None when unknown, revoked or expired (within CHECK_EVERY_S of the change)."""
        self._refresh()
        digest = self._hash(key)
        found = self._by_hash.get(digest)
        if found is None and self._changed():  # a key made by another process since the last check
            self._reload()
            found = self._by_hash.get(digest)
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    def close(self) -> None:
        self._watch.close()


def _sha256(text: str) -> str:
    """How a session id is stored: a stolen key database alone holds no usable session."""
    return hashlib.sha256(text.encode()).hexdigest()


def _load_pepper(db_path: Path) -> bytes:
    configured = get_settings().api_pepper
    if configured is not None and configured.get_secret_value():
        return configured.get_secret_value().encode()
    pepper_file = db_path.with_suffix(".pepper")
    if not pepper_file.exists():
        fd = os.open(pepper_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return pepper_file.read_text().strip().encode()


PRINCIPAL = "wenlv.principal"  # scope key where `serving.guard.RequestGuard` leaves the caller (or None)


class ScopeBearer(HTTPBearer):
    """The bearer scheme in OpenAPI; the key itself was checked by the guard middleware before the body was read."""

    async def __call__(self, request: Request) -> Principal | None:  # type: ignore[override]
        return request.scope.get(PRINCIPAL)


BEARER_SCHEME = "HTTPBearer"  # its name in the OpenAPI components
OPENAPI_SECURITY = [{BEARER_SCHEME: []}]  # for a route that authorizes with a plain call (see routers.recommendations)
_bearer = ScopeBearer(auto_error=False, scheme_name=BEARER_SCHEME, description="API key: `Authorization: Bearer wlv_…` (the scheme is case-insensitive)")


async def get_principal(principal: Principal | None = Depends(_bearer)) -> Principal:
    """The caller behind the bearer key or a dashboard session cookie (resolved by the guard), or 401."""
    return authorize(principal, frozenset(ROLES))


def allowed_roles(*roles: str) -> frozenset[str]:
    """The roles that may call a route: `roles` and admin."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    return frozenset(roles) | {"admin"}


def authorize(principal: Principal | None, allowed: frozenset[str]) -> Principal:
    """The caller if their key holds one of `allowed`; else 401 (no valid key) or 403 (wrong role)."""
    if principal is None:
        raise ApiError(401, "unauthorized", "missing, unknown or revoked bearer API key (Authorization: Bearer <key>)",
                       {"WWW-Authenticate": "Bearer"})
    if principal.role not in allowed:
        raise ApiError(403, "forbidden", f"role {principal.role!r} may not call this route; allowed: {', '.join(sorted(allowed))}")
    return principal


def session_principal(keys: KeyStore, method: str, cookies: Mapping[str, str]) -> Principal | None:
    """The principal of a valid dashboard session cookie on a GET/HEAD, while the session is live (not logged out or
    ended) and its key active (see serving.sessions); revoking the key ends its sessions. Reads no table."""
    claims = sessions.session_claims(method, cookies, keys.path)
    if claims is None:
        return None
    principal = keys.session(claims.session_id)
    if principal is None or principal.key_id != claims.key_id or principal.role not in sessions.SESSION_ROLES:
        return None
    return principal


def require_role(*roles: str):
    """Dependency: the caller must hold one of `roles` (admin always may); returns the Principal."""
    allowed = allowed_roles(*roles)

    async def dependency(principal: Principal | None = Depends(_bearer)) -> Principal:  # one level: cheaper per request
        return authorize(principal, allowed)

    return dependency
