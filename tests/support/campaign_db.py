"""Campaign-database engines for tests: a fresh SQLite file, or a throwaway PostgreSQL schema."""
from __future__ import annotations

import uuid
from contextlib import contextmanager

import pytest
from sqlalchemy import create_engine, text

from wenlv.db import engine as db_engine

DATABASES = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]  # a fixture's params: every test on both


@contextmanager
def sqlite_engine(path):
    engine = db_engine.make_engine(f"sqlite:///{path}")
    db_engine.migrate(engine)
    try:
        yield engine
    finally:
        engine.dispose()


@contextmanager
def postgres_engine(url: str, prefix: str = "wenlv_mkt"):
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(db_engine.normalise_url(url))
    with admin.begin() as c:
        c.execute(text(f"CREATE SCHEMA {schema}"))
    engine = db_engine.make_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        db_engine.migrate(engine)
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as c:
            c.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def database_engine(request, sqlite_path, prefix: str = "wenlv_mkt"):
    """The engine of the database `request.param` names (one of DATABASES), as a context manager."""
    if request.param == "sqlite":
        return sqlite_engine(sqlite_path)
    return postgres_engine(request.getfixturevalue("postgres_url"), prefix)
