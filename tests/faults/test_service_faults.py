"""Short variants of the fault suite (issue 18): each fault under steady load against the real
server, its own Redis (append-only file) and its own PostgreSQL. Nothing acknowledged may be
lost or stored twice, failures must carry the API's JSON error (a clear status), and both
routes must be healthy again after the fault is healed. `wenlv bench faults` runs the long ones."""
from __future__ import annotations

import os
import shutil

import pytest

from wenlv.bench.faults import private_postgres, scenarios
from wenlv.bench.faults.harness import Deployment

pytestmark = pytest.mark.slow
SHORT = {"warm_s": 2.0, "fault_s": 2.0, "after_s": 5.0, "rec_rate": 30, "event_rate": 8}


def _services_present() -> None:
    missing = [b for b in ("redis-server",) if shutil.which(b) is None]
    try:
        private_postgres.server_bindir()
    except RuntimeError:
        missing.append("initdb")
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"fault suite needs {missing}")
        pytest.skip(f"fault suite needs {missing}")


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    _services_present()
    with Deployment(tmp_path_factory.mktemp("faults"), n_users=500) as dep:
        yield dep


def _assert_books_balance(result: dict, name: str) -> None:
    assert result["lost"] == 0, (name, result)
    assert result["duplicated"] == 0, (name, result)
    assert result["acknowledged"] > 0 and result["served"] > 0, (name, result)
    assert result["failed_unclear"] == 0 or name == "api_sigkill", (name, result)  # a dead server cannot answer
    assert result["recovery_s"] is not None, (name, "never healthy again", result)


def test_api_sigkill_loses_no_acknowledged_event(deployment):
    result = scenarios.api_sigkill(deployment, **{**SHORT, "fault_s": 0.3})
    _assert_books_balance(result, "api_sigkill")
    assert result["routes"]["events"]["failed_unclear"] > 0  # the kill really happened while events were sent


def test_redis_restart_degrades_recommendations_then_recovers(deployment):
    result = scenarios.redis_restart(deployment, **SHORT)
    _assert_books_balance(result, "redis_restart")
    recs = result["routes"]["recommendations"]
    assert recs["degraded"] > 0 and recs["failed_clear"] == 0  # served from the model while the store was away


def test_redis_freeze_does_not_hold_requests(deployment):
    result = scenarios.redis_freeze(deployment, **SHORT)
    _assert_books_balance(result, "redis_freeze")
    assert result["routes"]["recommendations"]["degraded"] > 0


def test_postgres_crash_and_restart_fails_events_clearly(deployment):
    result = scenarios.postgres_restart(deployment, **SHORT)
    _assert_books_balance(result, "postgres_restart")
    events = result["routes"]["events"]
    assert set(events["statuses"]) <= {"200", "503"}, events  # refused with 503 while down, never a 500
    assert result["routes"]["recommendations"]["ok"] == result["routes"]["recommendations"]["sent"]


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a size-limited filesystem needs root")
def test_a_full_ledger_disk_refuses_events_clearly_and_loses_none(tmp_path):
    _services_present()
    with scenarios.small_filesystem(24) as fs, Deployment(tmp_path / "d", ledger="sqlite", ledger_dir=fs,
                                                          n_users=500) as dep:
        result = scenarios.disk_full(dep, **SHORT)
    _assert_books_balance(result, "disk_full")
    events = result["routes"]["events"]
    assert events["failed_clear"] > 0 and set(events["statuses"]) <= {"200", "503", "507"}, events


def test_a_damaged_champion_is_never_served_and_a_good_one_takes_over(tmp_path):
    _services_present()
    with Deployment(tmp_path / "r", follow_registry=True, n_users=500) as dep:
        result = scenarios.corrupt_model(dep, **{**SHORT, "fault_s": 4.0, "after_s": 8.0})
    _assert_books_balance(result, "corrupt_model")
    assert result["served_damaged_version"] == 0, result
    versions = result["routes"]["recommendations"]["model_versions"]
    assert versions.get(result["versions"]["before"], 0) > 0 and len(versions) == 2, versions  # kept, then the good one
