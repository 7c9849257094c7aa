"""The campaign/ledger database: migrations run forward on empty SQLite and PostgreSQL and
produce exactly the tables that wenlv/db/schema.py declares."""
from __future__ import annotations

import uuid

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from wenlv.db import engine as db_engine
from wenlv.db.schema import metadata
from wenlv.errors import WenlvError


def _assert_matches_schema(engine) -> None:
    db_engine.migrate(engine)
    assert db_engine.current_revision(engine) == "0001"
    assert set(inspect(engine).get_table_names()) == set(metadata.tables) | {"alembic_version"}
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), metadata)
    assert diff == [], diff
    db_engine.migrate(engine)  # a second run is a no-op


def test_migrations_forward_on_empty_sqlite(tmp_path):
    engine = db_engine.make_engine(f"sqlite:///{tmp_path / 'w.sqlite'}")
    _assert_matches_schema(engine)
    with engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL: durable at commit


@pytest.mark.postgres
def test_migrations_forward_on_empty_postgresql(postgres_url):
    schema = f"wenlv_mig_{uuid.uuid4().hex[:8]}"
    admin = create_engine(db_engine.normalise_url(postgres_url))
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        engine = db_engine.make_engine(postgres_url, connect_args={"options": f"-csearch_path={schema}"})
        _assert_matches_schema(engine)
        engine.dispose()
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def test_unknown_database_scheme_is_refused_by_name():
    with pytest.raises(WenlvError, match="mysql"):
        db_engine.normalise_url("mysql://x@y/z")
