"""Rate limits per key and per tenant (issue 18.3): a `wrk` burst at one key over a real uvicorn server gets 429s
with an integer Retry-After and the JSON error, counted in wenlv_rate_limited_total{role}; the tenant's other
keys, another tenant and an unlimited role are served meanwhile."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time

import httpx
import pytest
from fastapi.testclient import TestClient

from wenlv.errors import WenlvError
from wenlv.serving.app import create_app
from wenlv.serving.auth import ROLES, KeyStore
from wenlv.serving.ratelimit import parse_rates
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import ResilientStore, SQLiteStore
from wenlv.serving.runtime import ServerThread
from wenlv.serving.state import ServingState
from wenlv.bench.serving_fixtures import synthetic_bundle
from wenlv.settings import get_settings, reset_settings

KEY_RPS, TENANT_RPS, BURST_S = 20, 40, 1.0
TOKEN = "0123456789abcdef0123456789abcdef"
PATH = f"/v1/visitors/{TOKEN}/recommendations?k=3"
WRK_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) ok = 0; limited = 0; other = 0; retry = 0 end
function response(status, headers, body)
  if status == 200 then ok = ok + 1
  elseif status == 429 then
    limited = limited + 1
    local r = headers["retry-after"] or headers["Retry-After"]
    if r ~= nil and string.match(r, "^%d+$") and tonumber(r) >= 1 then retry = retry + 1 end
  else other = other + 1 end
end
function done(summary, latency, requests)
  local a, b, c, d = 0, 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("ok"); b = b + t:get("limited"); c = c + t:get("other"); d = d + t:get("retry") end
  io.write(string.format("STATUS ok=%d limited=%d other=%d retry_after=%d\\n", a, b, c, d))
end
"""


def _app(tmp, monkeypatch, key_rps: dict, tenant_rps: dict, burst_s: float = BURST_S):
    monkeypatch.setenv("WENLV_RATE_LIMIT_KEY", ",".join(f"{r}={v}" for r, v in key_rps.items()))
    monkeypatch.setenv("WENLV_RATE_LIMIT_TENANT", ",".join(f"{r}={v}" for r, v in tenant_rps.items()))
    monkeypatch.setenv("WENLV_RATE_LIMIT_BURST", str(burst_s))
    reset_settings()
    bundle = synthetic_bundle(n_pois=30, n_users=10, factors=4, seed=2, version="1")
    store = ResilientStore(SQLiteStore(tmp / "online.sqlite"))
    keys = KeyStore(tmp / "keys.sqlite", pepper=b"rate")
    return create_app(ServingState(store, ServingModel(bundle, "1", store, index_cache=None)), keys), keys


def auth(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk is not installed")
def test_a_wrk_burst_at_one_key_gets_429s_and_the_others_are_served(tmp_path, monkeypatch):
    app, keys = _app(tmp_path, monkeypatch, {"visitor-app": KEY_RPS}, {"visitor-app": TENANT_RPS})
    burst = keys.create("visitor-app", "hz")
    same_tenant = keys.create("visitor-app", "hz")
    other_tenant = keys.create("visitor-app", "sx")
    marketer = keys.create("marketer", "hz")  # marketers are not limited by these settings
    script = tmp_path / "count.lua"
    script.write_text(WRK_LUA)
    duration = 3
    others: dict[str, list[int]] = {"same_tenant": [], "other_tenant": [], "marketer": []}
    with ServerThread(app) as server:
        def steady():  # 5 requests per second for each other caller while wrk bursts
            with httpx.Client(base_url=server.url, timeout=5) as client:
                deadline = time.monotonic() + duration - 0.3
                while time.monotonic() < deadline:
                    others["same_tenant"].append(client.get(PATH, headers=auth(same_tenant)).status_code)
                    others["other_tenant"].append(client.get(PATH, headers=auth(other_tenant)).status_code)
                    others["marketer"].append(client.get("/v1/campaigns", headers=auth(marketer)).status_code)
                    time.sleep(0.2)

        side = threading.Thread(target=steady)
        started = time.monotonic()
        side.start()
        out = subprocess.run(["wrk", "-t2", "-c8", f"-d{duration}s", "-s", str(script), "-H",
                              f"Authorization: Bearer {burst}", server.url + PATH],
                             capture_output=True, text=True, timeout=duration + 30, check=True).stdout
        elapsed = time.monotonic() - started
        side.join()
        with httpx.Client(base_url=server.url, timeout=5) as client:
            refused = client.get(PATH, headers=auth(burst))
            while refused.status_code != 429:  # the bucket may have refilled one token since wrk stopped
                refused = client.get(PATH, headers=auth(burst))
            metrics = client.get("/metrics").text
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", out.split("STATUS", 1)[1]))
    print(json.dumps({"wrk": counts, "others": {k: len(v) for k, v in others.items()}, "elapsed_s": round(elapsed, 2)}))
    assert counts["limited"] > 0 and counts["other"] == 0, out
    assert counts["retry_after"] == counts["limited"], "every 429 carries an integer Retry-After >= 1"
    allowed = KEY_RPS * (elapsed + 0.5) + KEY_RPS * BURST_S  # the rate over the run, plus the burst
    assert KEY_RPS * (duration - 1) <= counts["ok"] <= allowed, (counts, allowed)
    assert refused.json()["error"] == "rate_limited" and "WENLV_RATE_LIMIT_KEY" in refused.json()["message"]
    assert int(refused.headers["retry-after"]) >= 1
    for who, statuses in others.items():
        assert statuses and set(statuses) == {200}, (who, statuses)
    counted = float(re.search(r'wenlv_rate_limited_total\{role="visitor-app"\} (\S+)', metrics).group(1))
    # wrk's 429s and the one above; wrk leaves uncounted the answers in flight on its 8 connections when it stops
    assert counts["limited"] + 1 <= counted <= counts["limited"] + 1 + 8, (counted, counts)
    reset_settings()


def test_a_tenants_keys_share_the_tenant_limit(tmp_path, monkeypatch):
    app, keys = _app(tmp_path, monkeypatch, {"visitor-app": 100}, {"visitor-app": 2}, burst_s=5.0)  # a bucket of 10
    hz = [keys.create("visitor-app", "hz") for _ in range(3)]
    sx = keys.create("visitor-app", "sx")
    with TestClient(app) as client:
        started = time.monotonic()
        answers = [client.get(PATH, headers=auth(hz[i % 3])) for i in range(30)]  # 10 per key: under its own 100/s
        elapsed = time.monotonic() - started
        assert client.get(PATH, headers=auth(sx)).status_code == 200  # another tenant has its own bucket
    statuses = [a.status_code for a in answers]
    assert set(statuses) == {200, 429} and statuses[:10] == [200] * 10, statuses
    assert statuses.count(200) <= 10 + 2 * elapsed + 1, (statuses, elapsed)  # the bucket, and its refill meanwhile
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.json()["error"] == "rate_limited" and refused.headers["retry-after"].isdigit()
    reset_settings()


def test_limits_are_configurable_per_role_and_checked(tmp_path, monkeypatch):
    app, keys = _app(tmp_path, monkeypatch, {"marketer": 1}, {}, burst_s=2.0)
    marketer, visitor = keys.create("marketer", "hz"), keys.create("visitor-app", "hz")
    with TestClient(app) as client:
        statuses = [client.get("/v1/campaigns", headers=auth(marketer)).status_code for _ in range(4)]
        assert statuses[:2] != [429, 429] and statuses[-1] == 429, statuses  # a bucket of 2, refilled at 1/s
        assert {client.get(PATH, headers=auth(visitor)).status_code for _ in range(50)} == {200}  # not listed: unlimited
        assert client.get("/healthz").status_code == 200
    with pytest.raises(WenlvError, match="unknown role 'visitor'"):
        _app(tmp_path / "bad", monkeypatch, {"visitor": 5}, {})
    reset_settings()


def test_the_limit_settings_keep_the_settings_hashable_and_bad_values_are_named(monkeypatch):
    """The holdout caches its key by the (frozen) settings object: a dict-valued setting would make every
    recommendation a 500 once the holdout is on (as it is by default)."""
    monkeypatch.setenv("WENLV_RATE_LIMIT_KEY", "visitor-app=50,marketer=5")
    reset_settings()
    hash(get_settings())
    for bad, named in (("visitor-app", "must be role=rate"), ("visitor-app=-1", "must be role=rate"),
                       ("visitor-app=x", "must be role=rate"), ("guest=5", "unknown role 'guest'")):
        with pytest.raises(WenlvError, match=named):
            parse_rates("WENLV_RATE_LIMIT_KEY", bad, ROLES)
    assert parse_rates("WENLV_RATE_LIMIT_KEY", "", ROLES) == {}
    assert parse_rates("WENLV_RATE_LIMIT_KEY", " visitor-app = 2.5 , admin=1", ROLES) == {"visitor-app": 2.5, "admin": 1.0}
    reset_settings()
