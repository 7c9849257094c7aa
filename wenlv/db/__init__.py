"""The relational database shared by campaigns (marketing) and the revenue ledger.

One schema (`schema.py`), one Alembic migration chain (`migrations/`), one engine factory
(`engine.py`): an SQLite file by default, PostgreSQL when DATABASE_URL is set.
"""
