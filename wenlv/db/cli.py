"""`wenlv db upgrade|current`: migrate the campaign and ledger database."""
from __future__ import annotations

from wenlv.db import engine as db_engine


def register(sub) -> None:
    p = sub.add_parser("db", help="the campaign and ledger database (SQLite file or DATABASE_URL)")
    db_sub = p.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    up = db_sub.add_parser("upgrade", help="run the migrations forward to the newest schema")
    up.add_argument("--url", help="database URL (default: DATABASE_URL, else the SQLite file of the settings)")
    up.set_defaults(func=_upgrade)
    cur = db_sub.add_parser("current", help="print the schema revision the database is at")
    cur.add_argument("--url", help="database URL (default: DATABASE_URL, else the SQLite file of the settings)")
    cur.set_defaults(func=_current)


def _upgrade(args) -> int:
    engine = db_engine.make_engine(args.url)
    db_engine.migrate(engine)
    print(db_engine.current_revision(engine))
    return 0


def _current(args) -> int:
    print(db_engine.current_revision(db_engine.make_engine(args.url)) or "empty")
    return 0
