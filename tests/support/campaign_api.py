"""The real app over a fresh campaign database, with an API key for every role in two tenants.

The campaign API tests run each test on SQLite and on PostgreSQL (campaign_db.DATABASES as a
fixture's params) and call routes as any (role, tenant): `campaign_app` is their shared set-up.
"""
from __future__ import annotations

from contextlib import contextmanager

from fastapi.testclient import TestClient

from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.state import ServingState
from wenlv.settings import reset_settings
from tests.support.campaign_db import database_engine

ROLES = ("visitor-app", "marketer", "analyst", "admin")
TENANTS = ("hz", "sx")


@contextmanager
def campaign_app(request, tmp_path, monkeypatch, env: dict[str, str], state: ServingState | None = None):
    """(client, {(role, tenant): key}, engine) on the database `request.param` names, with `env` set.

    Settings are read again with `env` in place, and forgotten afterwards.
    """
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    reset_settings()
    with database_engine(request, tmp_path / "api.sqlite") as engine:
        keys = KeyStore(tmp_path / "keys.sqlite", pepper=b"p")
        key = {(role, tenant): keys.create(role, tenant) for role in ROLES for tenant in TENANTS}
        yield TestClient(create_app(ServingState() if state is None else state, keys, db=engine)), key, engine
    reset_settings()


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}
