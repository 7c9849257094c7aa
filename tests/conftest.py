"""Shared fixtures: real Spark, Redis, PostgreSQL and the real data beside the project.

Under CI=true a missing service fails the test loudly; on a developer machine it skips
with the reason. The shared data folder skips with a reason when absent.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from wenlv.settings import reset_settings

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
# Apps made without a database write served lists (and keep the holdout key) in the default SQLite
# campaign and ledger database: in tests that is a throwaway file, never ~/.wenlv.
os.environ.setdefault("WENLV_DATABASE_SQLITE", str(Path(tempfile.mkdtemp(prefix="wenlv-tests-")) / "wenlv.sqlite"))
# Tests that check a visitor's personal list must get it: the recommendation holdout (5% by default)
# is off unless a test turns it on (tests/test_ledger_served.py does).
os.environ.setdefault("WENLV_RECOMMENDATION_HOLDOUT", "0")
# Rate limits (on by default for visitor-app keys in the product) are off in tests that loop on a route as fast as they
# can; tests/test_rate_limits.py sets them. An empty value means "no limit" (serving/ratelimit.py).
os.environ.setdefault("WENLV_RATE_LIMIT_KEY", "")
os.environ.setdefault("WENLV_RATE_LIMIT_TENANT", "")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("WENLV_SHARED_DATA", ROOT.parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").lower() == "true"


@pytest.fixture(autouse=True)
def fresh_settings():
    """Each test reads the environment as it left it: `get_settings()` caches one copy per process.

    A test that changes a variable after the first `get_settings()` calls `reset_settings()` itself.
    """
    reset_settings()
    yield
    reset_settings()


def service_missing(what: str) -> None:
    """Fail under CI (a missing service is a broken run), skip elsewhere."""
    if IN_CI:
        pytest.fail(f"{what} is not reachable, and CI=true: .ci/run must start it", pytrace=False)
    pytest.skip(f"{what} is not reachable")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def spark():
    """One local Spark session for the whole run (starting a JVM costs seconds)."""
    from wenlv.spark_jobs.session import get_spark

    session = get_spark(master="local[2]", app_name="wenlv-tests")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    import redis

    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except Exception:  # noqa: BLE001 - any failure means the service is not usable
        service_missing(f"Redis at {url}")
    return url


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get("TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")
    import psycopg

    try:
        psycopg.connect(url, connect_timeout=3).close()
    except Exception:  # noqa: BLE001
        service_missing(f"PostgreSQL at {url}")
    return url
