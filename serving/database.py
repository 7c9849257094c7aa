"""The app's campaign and ledger database: one engine per app, made and migrated on first use.

`create_app(..., db=engine)` fixes it (tests, the demo); otherwise the first route or
background writer that needs it makes it from the settings (DATABASE_URL, else the SQLite
file). `get_db` is the FastAPI dependency; `app_engine` serves code outside a request, such
as the writer of served lists (`served_lists_writer`).
"""
from __future__ import annotations

import threading

from fastapi import Request
from sqlalchemy import Engine

from wenlv.db import engine as db_engine
from wenlv.ledger.served import ServedListWriter
from wenlv.settings import get_settings

_making = threading.Lock()


def app_engine(app) -> Engine:
    """The engine of `app` (made and migrated once, even when several threads ask at the same time)."""
    engine = getattr(app.state, "db", None)
    if engine is None:
        with _making:
            engine = getattr(app.state, "db", None)
            if engine is None:
                engine = db_engine.make_engine()
                db_engine.migrate(engine)
                app.state.db = engine
    return engine


def get_db(request: Request) -> Engine:
    """Dependency: the campaign and ledger database of the app."""
    return app_engine(request.app)


def served_lists_writer(app) -> ServedListWriter:
    """A writer of served lists into the app's ledger, its drops counted in the app's metrics."""
    dropped = app.state.metrics.served_lists_dropped
    settings = get_settings()
    return ServedListWriter(lambda: app_engine(app), max_pending=settings.served_lists_queue,
                            interval_s=settings.served_lists_flush_s, on_drop=lambda reason, n: dropped.labels(reason).inc(n))
