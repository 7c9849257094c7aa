"""Browser sessions for the dashboard: a signed, expiring cookie that names an API key by its id.

The cookie never holds the key: it is `<payload>.<mac>`, the payload (base64url JSON) holding the
key's id, an expiry and a nonce, the mac HMAC-SHA256 over it with the session secret
(`WENLV_SESSION_SECRET`, else a 0600 file beside the key database). Every request re-reads the
key's role and tenant from the key store, so revoking the key ends its sessions too.

Cross-site requests: the cookie is SameSite=Strict and HttpOnly, and it authenticates only safe
methods (GET, HEAD), which change nothing; anything that writes still needs the Bearer header.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path

from fastapi import Request, Response

from wenlv.marketing.secret_file import setting_or_private_file
from wenlv.settings import get_settings

COOKIE = "wenlv_session"
SAFE_METHODS = frozenset({"GET", "HEAD"})
SESSION_ROLES = ("analyst", "admin")  # the dashboard's users; other roles are refused at login


def secret_for(key_db: Path) -> bytes:
    """The signing secret: the setting, else a private file beside the key database `key_db`."""
    return setting_or_private_file(get_settings().session_secret, key_db.with_suffix(".session-secret"))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str) -> str:
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


def issue(secret: bytes, key_id: str, ttl_s: float, now: float | None = None) -> tuple[str, int]:
    """A cookie value for `key_id` valid for `ttl_s` seconds, and its expiry (Unix seconds)."""
    expires = int((time.time() if now is None else now) + ttl_s)
    payload = _b64(json.dumps({"k": key_id, "exp": expires, "n": secrets.token_hex(8)}, separators=(",", ":")).encode())
    return f"{payload}.{_mac(secret, payload)}", expires


def verify(secret: bytes, value: str, now: float | None = None) -> tuple[str, int] | None:
    """(key_id, expiry) of a well-signed, unexpired cookie value; None for anything else."""
    payload, dot, mac = value.partition(".")
    if not dot or not hmac.compare_digest(mac.encode(), _mac(secret, payload).encode()):
        return None
    try:
        claims = json.loads(_unb64(payload))
        key_id, expires = claims["k"], claims["exp"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(key_id, str) or not isinstance(expires, int):
        return None
    if expires <= (time.time() if now is None else now):
        return None
    return key_id, expires


def session_key_id(request: Request, key_db: Path) -> str | None:
    """The key id behind the request's session cookie, for a safe method only; else None."""
    value = request.cookies.get(COOKIE)
    if not value or request.method not in SAFE_METHODS:
        return None
    found = verify(secret_for(key_db), value)
    return found[0] if found else None


def set_cookie(response: Response, request: Request, value: str, expires: int) -> None:
    """HttpOnly, SameSite=Strict, path /, Secure when the request came over https."""
    response.set_cookie(COOKIE, value, max_age=max(0, expires - int(time.time())), expires=expires, path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
