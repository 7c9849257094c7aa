"""The door of the API, as pure ASGI middleware: who is calling, and how much they may send.

Runs before any route reads a byte of the body:
- under `/v1/` a request without a valid bearer key (or, on GET/HEAD, a dashboard session
  cookie: `serving.sessions`) is answered 401 at once (FastAPI would
  otherwise read and parse the body before its auth dependency runs); the caller's
  `Principal` is left in the scope for the routes (`PRINCIPAL`), also on public routes
  when a key is sent (so `/readyz` can tell an admin);
- a body announced bigger than `WENLV_MAX_BODY_BYTES` is refused 413 unread; a chunked body
  is counted as it arrives and cut off with 413 at the limit;
- a body that is not complete within `WENLV_BODY_TIMEOUT` seconds gets 408;
- a key over its rate limit, or its tenant's (`serving.ratelimit`), gets 429 with `Retry-After`.
Refusals with a body still on the wire carry `Connection: close`, so the server drops the
connection instead of draining what is left.
"""
from __future__ import annotations

import asyncio
import json
import time

from starlette.exceptions import HTTPException
from starlette.requests import Request

from wenlv.serving.auth import PRINCIPAL, KeyStore, session_principal
from wenlv.serving.ratelimit import RateLimiter
from wenlv.serving.sessions import COOKIE

PROTECTED_PREFIX = "/v1/"
CHALLENGE = (b"www-authenticate", b"Bearer")
CLOSE = (b"connection", b"close")


def bearer_key(headers) -> str | None:
    """The key of an `Authorization: Bearer <key>` header (scheme case-insensitive, RFC 7235), else None."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, credentials = value.decode("latin-1").strip().partition(" ")
            credentials = credentials.strip()
            return credentials if scheme.lower() == "bearer" and credentials else None
    return None


def _content_length(headers) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _has_cookie(headers, name: str) -> bool:
    needle = name.encode() + b"="
    return any(n == b"cookie" and needle in value for n, value in headers)


def _has_body(headers) -> bool:
    return any(name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0")
               for name, value in headers)


async def send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": payload})


class RequestGuard:
    """Authenticate, limit and time the body, before the app sees the request."""

    def __init__(self, app, keys: KeyStore, max_body_bytes: int, body_timeout_s: float,
                 limiter: RateLimiter | None = None):
        self.app, self.keys, self.limiter = app, keys, limiter
        self.max_body_bytes, self.body_timeout_s = max_body_bytes, body_timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope["headers"]
        key = bearer_key(headers)
        principal = self.keys.lookup(key) if key is not None else None
        if key is None and _has_cookie(headers, COOKIE):
            principal = session_principal(self.keys, scope["method"], Request(scope).cookies)  # the dashboard's GETs
        scope[PRINCIPAL] = principal
        has_body = _has_body(headers)
        if scope["path"].startswith(PROTECTED_PREFIX):
            if principal is None:
                message = ("missing bearer API key (Authorization: Bearer <key>)" if key is None
                           else "unknown or revoked API key")
                return await send_json(send, 401, {"error": "unauthorized", "message": message},
                                       [CHALLENGE, CLOSE] if has_body else [CHALLENGE])
            if self.limiter is not None:
                retry_after = self.limiter.check(principal)
                if retry_after is not None:
                    return await self._rate_limited(send, principal.role, retry_after, has_body)
        if not has_body:
            return await self.app(scope, receive, send)
        length = _content_length(headers)
        if length is not None and length > self.max_body_bytes:
            return await send_json(send, 413, {"error": "payload_too_large", "message": self._too_large(length)}, [CLOSE])
        return await self.app(scope, self._limited(receive), send)

    @staticmethod
    async def _rate_limited(send, role: str, retry_after: int, has_body: bool) -> None:
        message = (f"too many requests for this {role} key or its tenant; retry after {retry_after} s "
                   "(limits: WENLV_RATE_LIMIT_KEY, WENLV_RATE_LIMIT_TENANT, WENLV_RATE_LIMIT_BURST)")
        headers = [(b"retry-after", str(retry_after).encode())]
        await send_json(send, 429, {"error": "rate_limited", "message": message}, [*headers, CLOSE] if has_body else headers)

    def _too_large(self, size: int | None) -> str:
        told = f"{size} bytes" if size is not None else "more bytes"
        return f"the request body ({told}) is over the limit of {self.max_body_bytes} bytes (WENLV_MAX_BODY_BYTES)"

    def _limited(self, receive):
        """`receive` with the body counted against the limit and the whole body against the deadline."""
        deadline = time.monotonic() + self.body_timeout_s
        seen = 0

        async def limited_receive():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                raise HTTPException(408, f"the request body was not complete within {self.body_timeout_s:g} s "
                                         "(WENLV_BODY_TIMEOUT)", headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    raise HTTPException(413, self._too_large(None), headers={"Connection": "close"})
            return message

        return limited_receive
