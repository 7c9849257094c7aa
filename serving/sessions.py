"""Browser sessions for the dashboard: a signed, expiring cookie that names an API key by its id.

The cookie never holds the key: it is `<payload>.<mac>`, the payload (base64url JSON) holding the
key's id, a session id and an expiry, the mac HMAC-SHA256 over it with the session secret
(`WENLV_SESSION_SECRET`, else a 0600 file beside the key database). A signature alone is not a
session: the session id must also be live in the key store (`KeyStore.start_session` at login),
which logout (`KeyStore.end_session`) and `wenlv apikey end-sessions` delete, so a copied cookie
stops working once its session is ended. Every request re-reads the key's role and tenant from
the key store's memory, so revoking the key ends its sessions too.

Cross-site requests: the cookie is SameSite=Strict and HttpOnly, and it authenticates only safe
methods (GET, HEAD), which change nothing; anything that writes still needs the Bearer header.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

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


class Claims(NamedTuple):
    """What a well-signed cookie says; whether the session is still live is the key store's answer."""

    key_id: str
    session_id: str
    expires: int


def issue(secret: bytes, key_id: str, session_id: str, expires: int) -> str:
    """The cookie value for session `session_id` of key `key_id`, valid until `expires` (Unix seconds)."""
    payload = _b64(json.dumps({"k": key_id, "s": session_id, "exp": expires}, separators=(",", ":")).encode())
    return f"{payload}.{_mac(secret, payload)}"


def verify(secret: bytes, value: str, now: float | None = None) -> Claims | None:
    """The claims of a well-signed, unexpired cookie value; None for anything else."""
    payload, dot, mac = value.partition(".")
    if not dot or not hmac.compare_digest(mac.encode(), _mac(secret, payload).encode()):
        return None
    try:
        claims = json.loads(_unb64(payload))
        found = Claims(claims["k"], claims["s"], claims["exp"])
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(found.key_id, str) or not isinstance(found.session_id, str) or not isinstance(found.expires, int):
        return None
    if found.expires <= (time.time() if now is None else now):
        return None
    return found


def cookie_claims(cookies: Mapping[str, str], key_db: Path) -> Claims | None:
    """The claims of a request's session cookie (`cookies`: name -> value), whatever the method (logout reads it)."""
    value = cookies.get(COOKIE)
    return verify(secret_for(key_db), value) if value else None


def session_claims(method: str, cookies: Mapping[str, str], key_db: Path) -> Claims | None:
    """The claims of a request's session cookie, for a safe method only; else None.

    Takes plain values, not a Request, so an ASGI middleware can ask too."""
    return cookie_claims(cookies, key_db) if method in SAFE_METHODS else None


def set_cookie(response: Response, request: Request, value: str, expires: int) -> None:
    """HttpOnly, SameSite=Strict, path /, Secure when the request came over https."""
    response.set_cookie(COOKIE, value, max_age=max(0, expires - int(time.time())), expires=expires, path="/",
                        httponly=True, samesite="strict", secure=request.url.scheme == "https")


def clear_cookie(response: Response, request: Request) -> None:
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict", secure=request.url.scheme == "https")
