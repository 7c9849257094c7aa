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
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

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
    """API keys in SQLite (hashed); lookups are served from memory and reloaded on a miss."""

    RELOAD_EVERY_S = 1.0

    def __init__(self, path: str | Path | None = None, pepper: bytes | None = None):
        self.path = Path(path) if path is not None else get_settings().api_keys_db
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._pepper = pepper or _load_pepper(self.path)
        self._lock = threading.Lock()
        self._by_hash: dict[str, Principal] = {}
        self._loaded_at = 0.0
        with self._connect() as db:
            db.execute("CREATE TABLE IF NOT EXISTS api_keys (key_hash TEXT PRIMARY KEY, key_id TEXT UNIQUE NOT NULL,"
                       " role TEXT NOT NULL, tenant TEXT NOT NULL, created_at REAL NOT NULL, revoked INTEGER NOT NULL DEFAULT 0)")
        self._reload()

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5)

    def _hash(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    def create(self, role: str, tenant: str) -> str:
        """Make a new key; the plain key is returned once and never stored."""
        if role not in ROLES:
            raise WenlvError(f"unknown role {role!r}; one of: {', '.join(ROLES)}")
        if not tenant or not tenant.replace("-", "").replace("_", "").isalnum() or len(tenant) > 64:
            raise WenlvError(f"tenant {tenant!r} must be 1-64 letters, digits, '-' or '_'")
        key_id = secrets.token_hex(6)
        key = f"wlv_{key_id}_{secrets.token_urlsafe(24)}"
        with self._connect() as db:
            db.execute("INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, 0)", (self._hash(key), key_id, role, tenant, time.time()))
        self._reload()
        return key

    def revoke(self, key_id: str) -> bool:
        with self._connect() as db:
            changed = db.execute("UPDATE api_keys SET revoked = 1 WHERE key_id = ?", (key_id,)).rowcount
        self._reload()
        return bool(changed)

    def list(self) -> list[dict]:
        with self._connect() as db:
            rows = db.execute("SELECT key_id, role, tenant, created_at, revoked FROM api_keys ORDER BY created_at").fetchall()
        return [dict(zip(("key_id", "role", "tenant", "created_at", "revoked"), r)) for r in rows]

    def _reload(self) -> None:
        with self._connect() as db:
            rows = db.execute("SELECT key_hash, key_id, role, tenant FROM api_keys WHERE revoked = 0").fetchall()
        with self._lock:
            self._by_hash = {h: Principal(role=r, tenant=t, key_id=k) for h, k, r, t in rows}
            self._loaded_at = time.monotonic()

    def lookup(self, key: str) -> Principal | None:
        digest = self._hash(key)
        found = self._by_hash.get(digest)
        if found is None and time.monotonic() - self._loaded_at > self.RELOAD_EVERY_S:
            self._reload()  # a key created by another process since the last load
            found = self._by_hash.get(digest)
        return found


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


_bearer = HTTPBearer(auto_error=False, description="API key: `Authorization: Bearer wlv_…`")


async def get_principal(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
    """The caller behind the bearer key, or behind a dashboard session cookie on a GET (see serving.sessions), or 401."""
    challenge = {"WWW-Authenticate": "Bearer"}
    if credentials is None:
        principal = _session_principal(request)
        if principal is not None:
            return principal
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(401, "unauthorized", "missing bearer API key (Authorization: Bearer <key>)", challenge)
    principal = request.app.state.keys.lookup(credentials.credentials)
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key", challenge)
    return principal


def _session_principal(request: Request) -> Principal | None:
    """The principal of a valid session cookie whose key is still active (revoking a key ends its sessions)."""
    keys = request.app.state.keys
    key_id = sessions.session_key_id(request, keys.path)
    if key_id is None:
        return None
    for row in keys.list():
        if (row["key_id"] == key_id and not row["revoked"] and row["role"] in sessions.SESSION_ROLES
                and (row.get("expires_at") or float("inf")) > time.time()):
            return Principal(role=row["role"], tenant=row["tenant"], key_id=key_id)
    return None


def require_role(*roles: str):
    """Dependency: the caller must hold one of `roles` (admin always may); returns the Principal."""
    unknown = set(roles) - set(ROLES)
    if unknown:
        raise ValueError(f"unknown roles {sorted(unknown)}")
    allowed = set(roles) | {"admin"}

    async def dependency(principal: Principal = Depends(get_principal)) -> Principal:
        if principal.role not in allowed:
            raise ApiError(403, "forbidden", f"role {principal.role!r} may not call this route; allowed: {', '.join(sorted(allowed))}")
        return principal

    return dependency
