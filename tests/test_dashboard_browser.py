"""The analyst dashboard in a real browser: headless Debian Chromium driven by Selenium, against a real
uvicorn server on 127.0.0.1 over a seeded SQLite ledger.

Seeding goes through the public routes and functions: campaigns, audiences, events, served lists, the
cost-line CSV loader, returns attribution.
Checked: logging in through the form, every chart drawn with the API's numbers, intervals drawn as
error bars, no console error, the key in no URL, cookie or browser storage, a marketer's and a
visitor app's key refused, another tenant's analyst seeing only its own tenant, logout.
Under CI=true a missing chromium or chromedriver fails the test (tests/conftest.py: service_missing).
"""
from __future__ import annotations

import csv
import json
import shutil
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pytest
from sqlalchemy import select

from wenlv.db.schema import audience_members
from wenlv.ledger import assets, attribution, returns
from wenlv.ledger.cli import EXAMPLE_CSV
from wenlv.ledger.served import record_served, served_row
from wenlv.marketing import audience, targets
from wenlv.marketing import campaigns as store
from wenlv.serving import sessions
from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.runtime import ServerThread
from wenlv.serving.state import ServingState
from tests.conftest import service_missing
from tests.support.campaign_db import sqlite_engine
from tests.test_marketing_audience import make_candidates

pytestmark = [pytest.mark.browser, pytest.mark.slow]

START = date(2026, 11, 2)
CAMPAIGNS = {"hz": "西湖冬游 West Lake winter", "sx": "鲁迅故里 Shaoxing autumn"}
CHARTS = ("chart-revenue-campaign", "chart-revenue-model", "chart-arms", "chart-incremental",
          "chart-model-incremental", "chart-sources", "chart-assets")
WAIT_S = 30  # generous: CI shares two cores
SPLITS = {v: {"tourism": 0.2, "carrier": 0.07, "internet": 0.03} for v in ("3", "4")}  # Shapley split per version


def _chromium() -> tuple[str, str]:
    """(browser, driver) paths of Debian's chromium and chromium-driver."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/lib/chromium/chromedriver", "/usr/bin/chromedriver") if Path(p).exists()), None)
    if browser is None or driver is None:
        service_missing("headless Chromium (Debian packages chromium and chromium-driver; scripts/install.sh)")
    return browser, driver


@pytest.fixture(scope="module")
def chromium():
    try:
        import selenium  # noqa: F401 - only to learn whether the test extra is installed
    except ImportError:
        service_missing("selenium (pip install -e '.[test]')")
    return _chromium()


# ------------------------------------------------------------------------------------- seeding
def _post_events(base: str, key: str, batch: list[dict]) -> None:
    for i in range(0, len(batch), 500):
        r = httpx.post(f"{base}/v1/events", json={"events": batch[i:i + 500]},
                       headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert r.status_code == 200 and not r.json()["rejected"], r.text
        assert r.json()["accepted"] == len(batch[i:i + 500])


def _seed_campaign(base: str, engine, key: dict, tenant: str, seed: int) -> tuple[int, list[dict]]:
    """A campaign with a computed audience (the marketing route and function), and its outcome events."""
    body = {"name": CAMPAIGNS[tenant], "target_kind": "destination", "channel": "sms", "audience_size": 300,
            "holdout_fraction": 0.25, "starts_on": START.isoformat(), "ends_on": (START + timedelta(days=6)).isoformat()}
    made = httpx.post(f"{base}/v1/campaigns", json=body, headers={"Authorization": f"Bearer {key[('marketer', tenant)]}"})
    assert made.status_code == 201, made.text
    campaign = store.get(engine, tenant, made.json()["id"])
    store.set_min_audience_size(engine, tenant, 50)
    audience.compute(engine, campaign, make_candidates(1000, seed, consent_share=1.0),
                     targets.Query(np.ones(4, dtype=np.float32)), min_size=50)
    with engine.connect() as c:
        members = c.execute(select(audience_members.c.token, audience_members.c.arm)
                            .where(audience_members.c.campaign_id == campaign["id"])).all()
    rng = np.random.default_rng(seed)
    events = []
    for n, (token, arm) in enumerate(members):
        if rng.random() < (0.45 if arm == "treatment" else 0.2):  # the campaign works: treated people book more
            day = START + timedelta(days=int(rng.integers(0, 9)))
            events.append({"event_id": f"{tenant}-c-{n}", "kind": "booking", "token": token, "poi_id": f"P{n % 7}",
                           "amount_cny": f"{rng.integers(150, 600)}.00", "occurred_at": f"{day}T10:00:00+08:00",
                           "campaign_id": campaign["id"] if arm == "treatment" else None})
    _post_events(base, key[("visitor-app", tenant)], events)
    return campaign["id"], events


def _seed_recommendations(base: str, engine, key: dict, tenant: str, seed: int) -> list[dict]:
    """Served lists of two model versions, each with a holdout (the ledger's recorder), and bookings from them."""
    rng = np.random.default_rng(seed)
    lists, events = [], []
    for n in range(240):
        version = ("3", "4")[n % 2]
        arm = "holdout" if n % 10 < 2 else "treatment"  # both versions get a holdout
        rec_id = f"{seed:04x}{n:028x}"
        token = f"{rng.integers(0, 2**62):016x}".rjust(64, "e")
        served = datetime.combine(START + timedelta(days=int(rng.integers(0, 7))), datetime.min.time(), timezone.utc)
        lists.append(served_row(tenant, rec_id, token, version, arm, ["P1", "P2", "P3"], served.timestamp()))
        if rng.random() < (0.5 if arm == "treatment" else 0.25):
            events.append({"event_id": f"{tenant}-r-{n}", "kind": "booking", "token": token, "poi_id": "P2",
                           "amount_cny": f"{rng.integers(80, 400)}.00", "recommendation_id": rec_id,
                           "occurred_at": (served + timedelta(hours=30)).isoformat()})
    assert record_served(engine, lists) == len(lists)
    _post_events(base, key[("visitor-app", tenant)], events)
    return events


def _seed_assets(engine, tenant: str, folder: Path) -> None:
    """The tenant's data-asset register from a cost-line CSV (the ledger's loader), names marked with the tenant."""
    rows = list(csv.DictReader(EXAMPLE_CSV.open(encoding="utf-8")))
    path = folder / f"cost_lines_{tenant}.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "asset": f"{tenant} {r['asset']}"} for r in rows)
    assets.load_csv(engine, tenant, path)


@pytest.fixture(scope="module")
def ledger(tmp_path_factory):
    """A real uvicorn server over a seeded ledger: (base URL, keys by (role, tenant), seeded event ids by tenant)."""
    tmp = tmp_path_factory.mktemp("dashboard")
    with sqlite_engine(tmp / "ledger.sqlite") as engine:
        keys = KeyStore(tmp / "keys.sqlite", pepper=b"p")
        key = {(role, tenant): keys.create(role, tenant) for role in ("visitor-app", "marketer", "analyst", "admin")
               for tenant in ("hz", "sx")}
        with ServerThread(create_app(ServingState(), keys, db=engine)) as server:
            seeded = {}
            for seed, tenant in enumerate(("hz", "sx"), start=1):
                _, campaign_events = _seed_campaign(server.url, engine, key, tenant, seed)
                rec_events = _seed_recommendations(server.url, engine, key, tenant, seed + 10)
                _seed_assets(engine, tenant, tmp)
                returns.attribute(engine, tenant, attribution.Options(method="delta"), SPLITS, fallback_version="3")
                seeded[tenant] = [e["event_id"] for e in campaign_events + rec_events]
            yield server.url, key, seeded


# ------------------------------------------------------------------------------------- browser
@pytest.fixture
def browser(chromium):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, driver_path = chromium
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1400,2400", "--lang=zh-CN"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(driver_path))
    driver.set_script_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message=f"timed out waiting for {what}")


def log_in(driver, base: str, key: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/dashboard")
    form = wait_for(driver, lambda d: d.find_element(By.ID, "login").is_displayed() and d.find_element(By.ID, "key"),
                    "the login form")
    form.send_keys(key)
    driver.find_element(By.ID, "login-submit").click()


def severe_console_entries(driver, allowed: tuple[str, ...] = ()) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and not any(a in e["message"] for a in allowed)]


def requested_urls(driver) -> list[str]:
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def assert_key_nowhere_in_the_browser(driver, key: str) -> None:
    secret = key.split("_", 2)[2]
    assert len(secret) >= 30  # the random part of wlv_<id>_<secret> (it may itself hold "_")
    urls = requested_urls(driver) + [driver.current_url]
    assert urls and not [u for u in urls if key in u or secret in u], urls
    storage = driver.execute_script(
        "const all = {};"
        "for (const s of [window.localStorage, window.sessionStorage])"
        "  for (let i = 0; i < s.length; i++) all[s.key(i)] = s.getItem(s.key(i));"
        "return JSON.stringify(all) + '|' + document.cookie + '|' + history.length + '|' + document.body.innerHTML;")
    assert secret not in storage, "the key is left in browser storage, a readable cookie or the page"
    for cookie in driver.get_cookies():
        assert secret not in cookie["value"]


def chart_marks(driver, chart_id: str) -> dict:
    return driver.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const svg = c.querySelector('svg');"
        "const vals = sel => [...c.querySelectorAll(sel)].map(n => Number(n.getAttribute('data-value')));"
        "return {svg: !!svg, points: vals('circle.point'), bars: vals('rect.bar'),"
        "        errorbars: c.querySelectorAll('line.errorbar:not(.cap)').length,"
        "        series: [...c.querySelectorAll('[data-series]')].map(n => n.getAttribute('data-series')),"
        "        text: c.textContent};", chart_id)


def api(base: str, key: str, path: str) -> dict:
    r = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_analyst_logs_in_through_the_form_and_every_chart_renders_the_apis_numbers(ledger, browser):
    from selenium.webdriver.common.by import By

    base, key, seeded = ledger
    log_in(browser, base, key[("analyst", "hz")])
    wait_for(browser, lambda d: d.find_element(By.ID, "dashboard").is_displayed()
             and len(d.find_elements(By.CSS_SELECTOR, "#events-table tbody tr")) > 0, "the dashboard's data")
    assert browser.find_element(By.ID, "who-text").text == "hz · analyst"
    revenue = api(base, key[("analyst", "hz")], "/v1/analytics/revenue")
    assets = api(base, key[("analyst", "hz")], "/v1/assets")["assets"]
    marks = {chart: chart_marks(browser, chart) for chart in CHARTS}
    for chart, got in marks.items():
        assert got["svg"] and (got["points"] or got["bars"]), (chart, got)

    days = {row["day"] for row in revenue["daily"]}
    assert len(marks["chart-revenue-campaign"]["points"]) >= len(days) > 1
    assert abs(sum(marks["chart-revenue-campaign"]["points"]) - sum(float(r["revenue_cny"]) for r in revenue["daily"])) < 0.01
    assert abs(sum(marks["chart-revenue-model"]["points"]) - sum(float(r["revenue_cny"]) for r in revenue["daily"])) < 0.01
    assert "model 3" in marks["chart-revenue-model"]["series"] and "model 4" in marks["chart-revenue-model"]["series"]

    (campaign,) = revenue["campaigns"]
    assert campaign["name"] == CAMPAIGNS["hz"] and CAMPAIGNS["hz"] in marks["chart-incremental"]["text"]
    incremental = marks["chart-incremental"]
    assert incremental["errorbars"] == 1 and float(campaign["incremental_revenue_cny"]) in incremental["bars"]
    assert float(campaign["last_touch_revenue_cny"]) in incremental["bars"]
    assert sorted(marks["chart-arms"]["bars"]) == sorted([float(campaign["treated_mean_cny"]),
                                                          float(campaign["holdout_mean_cny"])])
    model = marks["chart-model-incremental"]
    assert model["errorbars"] == len(revenue["model_versions"]) >= 2
    assert len(marks["chart-sources"]["bars"]) == 3 and sum(marks["chart-sources"]["bars"]) > 0
    assert sorted(marks["chart-sources"]["bars"]) == sorted(float(revenue["returns_by_source"][s] or 0)
                                                             for s in ("tourism", "carrier", "internet"))
    assert len(assets) >= 2 and any(float(a["value"]["income"]) > 0 for a in assets)
    assert sorted(marks["chart-assets"]["bars"]) == sorted(
        [float(a["value"]["cost"]) for a in assets] + [float(a["value"]["income"]) for a in assets])
    shown = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#events-table tbody td:nth-child(3)")}
    assert shown and shown <= set(seeded["hz"])
    assert CAMPAIGNS["hz"] in browser.find_element(By.ID, "campaigns-table").text
    assert "associative" in browser.find_element(By.ID, "campaigns-table").text
    assert severe_console_entries(browser) == []
    assert_key_nowhere_in_the_browser(browser, key[("analyst", "hz")])
    (cookie,) = browser.get_cookies()
    assert cookie["name"] == sessions.COOKIE and cookie["httpOnly"] and cookie["sameSite"] == "Strict"


@pytest.mark.parametrize("role", ["marketer", "visitor-app"])
def test_marketer_and_visitor_app_keys_are_refused_and_see_nothing(ledger, browser, role):
    from selenium.webdriver.common.by import By

    base, key, seeded = ledger
    log_in(browser, base, key[(role, "hz")])
    message = wait_for(browser, lambda d: d.find_element(By.ID, "login-error").text, "the refusal")
    assert role in message and "analyst" in message
    assert not browser.find_element(By.ID, "dashboard").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, ".chart svg, tbody tr") == []
    page = browser.page_source
    assert CAMPAIGNS["hz"] not in page and not any(e in page for e in seeded["hz"][:20])
    assert browser.get_cookies() == []
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "Promise.all(['/v1/analytics/revenue', '/v1/assets', '/v1/analytics/events?limit=50']"
        "  .map(p => fetch(p).then(r => r.status))).then(done);")
    assert status == [401, 401, 401]
    assert severe_console_entries(browser, allowed=("/dashboard/login", "/v1/analytics", "/v1/assets")) == []
    assert_key_nowhere_in_the_browser(browser, key[(role, "hz")])


def test_another_tenants_analyst_sees_only_its_own_tenant(ledger, browser):
    from selenium.webdriver.common.by import By

    base, key, seeded = ledger
    log_in(browser, base, key[("analyst", "sx")])
    wait_for(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#events-table tbody tr")) > 0, "sx's events")
    page = browser.find_element(By.ID, "dashboard").text
    assert CAMPAIGNS["sx"] in page and CAMPAIGNS["hz"] not in page and "hz " not in page
    shown = {td.text for td in browser.find_elements(By.CSS_SELECTOR, "#events-table tbody td:nth-child(3)")}
    assert shown and shown <= set(seeded["sx"]) and not shown & set(seeded["hz"])
    assets = browser.find_element(By.ID, "assets-table").text
    assert "sx 游客数据资源" in assets and "hz 游客数据资源" not in assets and "hz " not in assets
    assert severe_console_entries(browser) == []


def test_logout_ends_the_session_in_the_browser(ledger, browser):
    from selenium.webdriver.common.by import By

    base, key, _ = ledger
    log_in(browser, base, key[("admin", "hz")])
    wait_for(browser, lambda d: d.find_element(By.ID, "dashboard").is_displayed(), "the dashboard")
    browser.find_element(By.ID, "logout").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form after logout")
    assert browser.get_cookies() == []
    browser.refresh()
    wait_for(browser, lambda d: d.find_element(By.ID, "login").is_displayed(), "the login form after a reload")
    assert browser.find_elements(By.CSS_SELECTOR, ".chart svg, tbody tr") == []
    assert severe_console_entries(browser) == []


def test_filters_narrow_the_charts(ledger, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    base, key, _ = ledger
    log_in(browser, base, key[("analyst", "hz")])
    wait_for(browser, lambda d: len(Select(d.find_element(By.ID, "f-model")).options) > 2, "the model-version choices")
    before = chart_marks(browser, "chart-revenue-model")["series"]
    Select(browser.find_element(By.ID, "f-model")).select_by_value("3")
    browser.find_element(By.CSS_SELECTOR, "#filters button[type=submit]").click()
    wait_for(browser, lambda d: "model 4" not in chart_marks(d, "chart-revenue-model")["series"], "the filtered chart")
    after = set(chart_marks(browser, "chart-revenue-model")["series"])
    assert {"model 3", "model 4"} <= set(before) and after == {"model 3"}
    assert severe_console_entries(browser) == []
