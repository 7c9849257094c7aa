"""The analyst dashboard: one static page (package data in serving/dashboard/) and its session routes.

`GET /dashboard` serves the page to anyone: it holds no data. The page asks for an analyst or
admin key in a login form and posts it, as JSON, to `/dashboard/login`, which answers with a
session cookie (see serving.sessions); the key is never put in a URL or in browser storage.
The page then reads `/v1/analytics/revenue`, `/v1/assets` and `/v1/analytics/events` with
that cookie, and those routes decide the tenant from it, as from a Bearer key.

Login CSRF: the body must be JSON (a cross-site HTML form cannot send that without a CORS
preflight, which this app never grants) and a cross-site Origin or Sec-Fetch-Site is refused.
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources
from urllib.parse import urlsplit

from fastapi import APIRouter, Body, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field

from wenlv.serving import sessions
from wenlv.serving.auth import ApiError, session_principal
from wenlv.serving.schemas import ERROR_RESPONSES
from wenlv.settings import get_settings

router = APIRouter(tags=["dashboard"])

# The page's own files and their types: nothing else under /dashboard/static is served.
STATIC = {"dashboard.js": "text/javascript", "charts.js": "text/javascript", "dashboard.css": "text/css"}
# Everything from this origin only: no CDN, no inline script or style, no framing.
PAGE_HEADERS = {
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                                "connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Login(BaseModel):
    key: str = Field(min_length=1, max_length=200, description="an analyst or admin API key")


class Session(BaseModel):
    authenticated: bool
    role: str | None = None
    tenant: str | None = None
    expires_at: int | None = Field(None, description="when the session cookie expires (Unix seconds); login only")


@lru_cache(maxsize=None)
def _asset(name: str) -> bytes:
    return (resources.files("wenlv.serving") / "dashboard" / name).read_bytes()


@router.get("/dashboard", include_in_schema=False)
def page() -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)


@router.get("/dashboard/static/{name}", include_in_schema=False)
def static(name: str) -> Response:
    if name not in STATIC:
        raise ApiError(404, "not_found", f"no dashboard file {name!r}")
    return Response(_asset(name), media_type=f"{STATIC[name]}; charset=utf-8", headers=PAGE_HEADERS)


def _refuse_cross_site(request: Request) -> None:
    origin = request.headers.get("origin")
    if request.headers.get("sec-fetch-site") == "cross-site" or (
            origin is not None and urlsplit(origin).netloc != request.headers.get("host")):
        raise ApiError(403, "forbidden", "a dashboard login must come from the dashboard's own page")


@router.post("/dashboard/login", response_model=Session, summary="exchange an analyst or admin key for a session cookie",
             responses=ERROR_RESPONSES)
def login(request: Request, body: Login = Body(...)) -> JSONResponse:
    _refuse_cross_site(request)
    principal = request.app.state.keys.lookup(body.key)
    if principal is None:
        raise ApiError(401, "unauthorized", "unknown or revoked API key")
    if principal.role not in sessions.SESSION_ROLES:
        raise ApiError(403, "forbidden", f"role {principal.role!r} may not use the dashboard; "
                                         f"allowed: {', '.join(sessions.SESSION_ROLES)}")
    keys = request.app.state.keys
    session_id, expires = keys.start_session(principal.key_id, get_settings().session_ttl_s)
    value = sessions.issue(sessions.secret_for(keys.path), principal.key_id, session_id, expires)
    response = JSONResponse(Session(authenticated=True, role=principal.role, tenant=principal.tenant,
                                    expires_at=expires).model_dump())
    sessions.set_cookie(response, request, value, expires)
    return response


@router.get("/dashboard/session", response_model=Session, summary="who the session cookie belongs to, if anyone")
async def session(request: Request) -> Session:
    # the cookie only: this route reports the browser session
    principal = session_principal(request.app.state.keys, request.method, request.cookies)
    if principal is None:
        return Session(authenticated=False)
    return Session(authenticated=True, role=principal.role, tenant=principal.tenant)


@router.post("/dashboard/logout", response_model=Session,
             summary="end the browser session: the server forgets it (a copy of the cookie stops working) and the "
                     "cookie is cleared")
def logout(request: Request) -> JSONResponse:
    keys = request.app.state.keys
    claims = sessions.cookie_claims(request.cookies, keys.path)
    if claims is not None:  # other sessions of the same key (other browsers) go on
        keys.end_session(claims.session_id)
    response = JSONResponse(Session(authenticated=False).model_dump())
    sessions.clear_cookie(response, request)
    return response
