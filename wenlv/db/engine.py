"""Engines for the campaign/ledger database and the migrations that shape it.

SQLite (the embedded default) runs in WAL mode with synchronous=FULL, so a committed
transaction survives a power cut or SIGKILL: the ledger acknowledges an event only after
its commit. PostgreSQL URLs get the psycopg 3 driver.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, inspect

from wenlv.errors import WenlvError
from wenlv.settings import get_settings

MIGRATIONS = Path(__file__).with_name("migrations")


def database_url(url: str | None = None) -> str:
    """The URL to use: the argument, else DATABASE_URL, else the SQLite file of the settings."""
    settings = get_settings()
    url = url or settings.database_url
    if url:
        return normalise_url(url)
    settings.database_sqlite.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{settings.database_sqlite}"


def normalise_url(url: str) -> str:
    """postgres:// and postgresql:// mean psycopg 3 here; other schemes are refused by name."""
    for plain in ("postgres://", "postgresql://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    if not url.startswith(("sqlite:", "postgresql+psycopg://")):
        raise WenlvError(f"DATABASE_URL must be sqlite:///FILE or postgresql://..., got scheme {url.split(':')[0]!r}")
    return url


def make_engine(url: str | None = None, **kwargs) -> Engine:
    url = database_url(url)
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, **{"pool_pre_ping": True, **kwargs})


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the database to `revision` (forward only; each migration runs in one transaction)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: Engine) -> str | None:
    if "alembic_version" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as connection:
        return connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
