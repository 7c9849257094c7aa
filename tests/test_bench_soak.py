"""The soak benchmark's short variant: a few seconds of mixed traffic against a real `wenlv serve` (private Redis,
SQLite ledger); the JSON has its shape, every route was exercised and nothing failed with a 5xx."""
from __future__ import annotations

import shutil

import pytest

from wenlv.bench import soak

from tests.conftest import service_missing


def test_a_short_soak_reports_every_route_memory_and_no_server_errors():
    if shutil.which("redis-server") is None:
        service_missing("redis-server (the soak's private Redis)")
    rates = {"recommendations": 20, "itineraries": 1, "events": 4, "analytics": 1}
    result = soak.run(8 / 60, rates, ledger="sqlite", sample_s=1.0, n_users=300)
    assert set(result["routes"]) == set(soak.ROUTES)
    for name, route in result["routes"].items():
        assert route["sent"] >= 3, name
        assert route["errors_5xx_or_no_answer"] == 0, (name, route["statuses"])
        assert route["errors_4xx"] == 0, (name, route["statuses"])
        assert 0 < route["p50_ms"] <= route["p99_ms"]
    assert result["errors_5xx_or_no_answer"] == 0 and result["error_rate"] == 0
    assert result["sent"] == sum(r["sent"] for r in result["routes"].values())
    for name in ("server", "redis"):
        memory = result["memory"][name]
        assert memory["samples"] >= 5 and memory["start_mb"] > 0 and memory["slope_mb_per_hour"] is not None
    assert result["memory"]["server"]["start_mb"] > 100, "the server with its model and solver processes"
    assert len(result["load_average_before"]) == 3


def test_the_slope_is_the_least_squares_growth_per_hour():
    samples = [(t * 60.0, 100 + 0.5 * t) for t in range(10)]  # +0.5 MB a minute
    assert soak.slope_mb_per_hour(samples) == pytest.approx(30.0)
    assert soak.slope_mb_per_hour(samples[:2]) is None
