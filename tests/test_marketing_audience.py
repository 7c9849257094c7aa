"""Audiences: consent and frequency caps never violated by concurrent campaigns (property-based),
a stable seeded holdout, minimum-size and seed-size refusals — on SQLite and PostgreSQL."""
from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from datetime import date, timedelta, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import select

from wenlv.db.schema import audience_members, contacts, events
from wenlv.errors import WenlvError
from wenlv.ledger.events import record_events
from wenlv.marketing import audience, caps, holdout, targets
from wenlv.marketing import campaigns as store
from wenlv.marketing.audience import AudienceRefused
from wenlv.marketing.campaigns import CampaignSpec
from tests.support.campaign_db import postgres_engine, sqlite_engine

START = date(2026, 12, 1)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request, tmp_path):
    if request.param == "sqlite":
        with sqlite_engine(tmp_path / "mkt.sqlite") as engine:
            yield engine
    else:
        with postgres_engine(request.getfixturevalue("postgres_url")) as engine:
            yield engine


def tokens(n: int, salt: str = "") -> np.ndarray:
    return np.array([uuid.uuid5(uuid.NAMESPACE_OID, f"{salt}{i}").hex for i in range(n)], dtype=object)


def make_candidates(n: int, seed: int, consent_share: float = 0.7) -> targets.Candidates:
    rng = np.random.default_rng(seed)
    return targets.Candidates(tokens(n), rng.normal(size=(n, 4)).astype(np.float32), rng.random(n) < 0.5,
                              {"sms": rng.random(n) < consent_share, "ads": rng.random(n) < consent_share},
                              rng.choice(np.array(["Hangzhou", "Shanghai"], dtype=object), n), "test")


def spec(**over) -> CampaignSpec:
    fields = {"name": "c", "target_kind": "destination", "channel": "sms", "audience_size": 20,
              "starts_on": START, "ends_on": START + timedelta(days=6)}
    return CampaignSpec(**(fields | over))


# ---------------------------------------------------------------- caps, consent: property-based
campaign_plans = st.lists(st.fixed_dictionaries({
    "offset": st.integers(0, 20), "cap_contacts": st.integers(1, 3), "cap_days": st.integers(1, 10),
    "channel": st.sampled_from(["sms", "ads"]), "audience_size": st.integers(3, 40),
    "holdout_fraction": st.sampled_from([0.0, 0.1, 0.5])}), min_size=2, max_size=6)


report_plans = st.lists(st.tuples(st.booleans(), st.sampled_from([0.0, 0.3, 0.7, 1.0])), min_size=6, max_size=6)


def _run_concurrently(engine, made, candidates, query):
    errors = []

    def run(campaign):
        try:
            audience.compute(engine, campaign, candidates, query, min_size=1)
        except AudienceRefused:
            pass  # everyone capped: a refusal is allowed, a violation is not
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def report_delivery(engine, tenant, campaign_id, delivered_tokens, at):
    """The partner's delivery receipts: one impression event with the campaign id per delivered person."""
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at  # SQLite gives naive UTC back
    events = [{"event_id": f"d-{campaign_id}-{t}", "kind": "impression", "token": t, "campaign_id": campaign_id,
               "occurred_at": at.isoformat()} for t in delivered_tokens]
    if events:
        result = record_events(engine, tenant, events)
        assert not result.rejected, result.rejected


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plans=campaign_plans, later=campaign_plans, reports=report_plans, seed=st.integers(0, 2**16))
def test_concurrent_campaigns_never_break_consent_or_frequency_caps(engine, plans, later, reports, seed):
    """Two rounds of concurrent campaigns; between them some first-round campaigns report delivery of a random
    share of their treated people. Counting delivered contacts for reported campaigns and planned ones for the
    others, no cap is ever exceeded, nobody is contacted without consent, and no holdout member is contacted."""
    tenant = f"t{uuid.uuid4().hex[:8]}"  # a fresh tenant per example: caps are per tenant
    candidates = make_candidates(60, seed)
    rng = np.random.default_rng(seed)

    def make(round_plans):
        return [store.create(engine, tenant, spec(channel=p["channel"], audience_size=p["audience_size"],
                                                  cap_contacts=p["cap_contacts"], cap_days=p["cap_days"],
                                                  holdout_fraction=p["holdout_fraction"],
                                                  starts_on=START + timedelta(days=p["offset"]),
                                                  ends_on=START + timedelta(days=p["offset"] + 3)))
                for p in round_plans]

    query = targets.Query(np.ones(4, dtype=np.float32))
    first = make(plans)
    _run_concurrently(engine, first, candidates, query)
    with engine.connect() as c:
        planned = c.execute(select(contacts.c.campaign_id, contacts.c.token, contacts.c.contacted_at)
                            .where(contacts.c.tenant == tenant)).all()
    reported = set()
    for campaign, (reports_delivery, share) in zip(first, reports):
        mine = [(t, at) for cid, t, at in planned if cid == campaign["id"]]
        if reports_delivery and mine:
            delivered = [t for t, _ in mine if rng.random() < share]
            report_delivery(engine, tenant, campaign["id"], delivered, mine[0][1])
            reported.add(campaign["id"]) if delivered else None
    second = make(later)
    _run_concurrently(engine, second, candidates, query)
    made = first + second
    with engine.connect() as c:
        rows = caps.counted_contacts(c, tenant)
        every = c.execute(select(contacts).where(contacts.c.tenant == tenant)).mappings().all()
        members = c.execute(select(audience_members)).mappings().all()
        delivered = set(c.execute(select(events.c.campaign_id, events.c.token)
                                  .where(events.c.tenant == tenant, events.c.kind == "impression")).all())
    by_campaign = {m["id"]: m for m in made}
    consent = {ch: set(candidates.tokens[candidates.consent[ch]]) for ch in ("sms", "ads")}
    holdouts = {(m["campaign_id"], m["token"]) for m in members if m["arm"] == "holdout"}
    assert rows, "no campaign contacted anyone: the property was not exercised"
    # the rule itself: a reported campaign counts its delivered people only, the others all they planned
    expected = {(r["campaign_id"], r["token"]) for r in every
                if r["campaign_id"] not in reported or (r["campaign_id"], r["token"]) in delivered}
    assert {(r["campaign_id"], r["token"]) for r in rows} == expected
    last_id = defaultdict(int)
    for r in every:
        last_id[r["campaign_id"]] = max(last_id[r["campaign_id"]], r["id"])
    by_token = defaultdict(list)
    for r in every:
        campaign = by_campaign[r["campaign_id"]]
        assert r["token"] in consent[campaign["channel"]], "contacted without consent for the channel"
        assert (r["campaign_id"], r["token"]) not in holdouts, "a holdout member was contacted"
    for r in rows:
        by_token[r["token"]].append(r)
    for token_rows in by_token.values():
        for r in token_rows:
            campaign = by_campaign[r["campaign_id"]]
            window = timedelta(days=campaign["cap_days"])
            seen_by_then = [o for o in token_rows if o["id"] <= last_id[r["campaign_id"]]
                            and abs(_utc(o["contacted_at"]) - _utc(r["contacted_at"])) < window]
            assert len(seen_by_then) <= campaign["cap_contacts"], "frequency cap exceeded"


def test_caps_count_delivered_contacts_once_a_campaign_reports_delivery(engine):
    """Planned contacts count until the campaign reports delivery; then only the people reported delivered."""
    candidates = make_candidates(50, 1, consent_share=1.0)
    query = targets.Query(np.ones(4, dtype=np.float32))
    capped = dict(audience_size=10, cap_contacts=1, cap_days=7, holdout_fraction=0.0)
    first = store.create(engine, "t1", spec(**capped))
    audience.compute(engine, first, candidates, query, min_size=1)
    top10 = [m["token"] for m in audience.members(engine, first["id"])]
    planned_only = store.create(engine, "t1", spec(**capped, starts_on=START + timedelta(days=2)))
    assert audience.compute(engine, planned_only, candidates, query, min_size=1)["capped"] == 10  # no report yet
    assert not {m["token"] for m in audience.members(engine, planned_only["id"])} & set(top10)
    report_delivery(engine, "t1", first["id"], top10[:4], caps.contact_time(START))
    after = store.create(engine, "t1", spec(**capped, starts_on=START + timedelta(days=3)))
    audience.compute(engine, after, candidates, query, min_size=1)
    chosen = {m["token"] for m in audience.members(engine, after["id"])}
    assert not chosen & set(top10[:4])            # delivered: still at their cap
    assert set(top10[4:]) <= chosen               # planned but never delivered: their slot is free again
    # planned_only's own contacts (no report for it) still count: its people stay out
    assert not chosen & {m["token"] for m in audience.members(engine, planned_only["id"])}


def _utc(value):
    return value.replace(tzinfo=None) if value.tzinfo is None else value.astimezone(None).replace(tzinfo=None)


def test_a_capped_person_is_left_out_of_the_next_campaign(engine):
    candidates = make_candidates(50, 1, consent_share=1.0)
    query = targets.Query(np.ones(4, dtype=np.float32))
    first = store.create(engine, "t1", spec(audience_size=10, cap_contacts=1, cap_days=7, holdout_fraction=0.0))
    second = store.create(engine, "t1", spec(audience_size=10, cap_contacts=1, cap_days=7, holdout_fraction=0.0,
                                             starts_on=START + timedelta(days=3), ends_on=START + timedelta(days=5)))
    other_tenant = store.create(engine, "t2", spec(audience_size=10, cap_contacts=1, cap_days=7, holdout_fraction=0.0))
    a = audience.compute(engine, first, candidates, query, min_size=1)
    b = audience.compute(engine, second, candidates, query, min_size=1)
    audience.compute(engine, other_tenant, candidates, query, min_size=1)
    got_a = {m["token"] for m in audience.members(engine, first["id"])}
    got_b = {m["token"] for m in audience.members(engine, second["id"])}
    got_t2 = {m["token"] for m in audience.members(engine, other_tenant["id"])}
    assert a["audience_size"] == b["audience_size"] == 10 and b["capped"] == 10
    assert not got_a & got_b            # same tenant, within 7 days, cap 1: the top 10 are taken
    assert got_t2 == got_a              # caps are per tenant


# ---------------------------------------------------------------- holdout
def test_holdout_share_is_within_one_point_at_100k_and_stable():
    toks = tokens(100_000, "h")
    first = holdout.arms("seed-a", toks, 0.1)
    share = float((first == holdout.HOLDOUT).mean())
    assert abs(share - 0.1) <= 0.01
    shuffled = np.random.default_rng(3).permutation(len(toks))
    again = holdout.arms("seed-a", toks[shuffled], 0.1)
    assert (again == first[shuffled]).all()                      # order and company do not matter
    assert (holdout.arms("seed-b", toks, 0.1) != first).any()    # another campaign, another draw


def test_holdout_is_kept_across_recomputation_even_when_scores_change(engine):
    candidates = make_candidates(400, 2, consent_share=1.0)
    campaign = store.create(engine, "t1", spec(audience_size=200, holdout_fraction=0.3))
    audience.compute(engine, campaign, candidates, targets.Query(np.ones(4, dtype=np.float32)), min_size=1)
    before = {m["token"]: m["arm"] for m in audience.members(engine, campaign["id"])}
    with engine.begin() as c:  # someone's arm recorded differently than the hash says: it must be kept
        moved = next(iter(before))
        flipped = "treatment" if before[moved] == "holdout" else "holdout"
        c.execute(audience_members.update().where(audience_members.c.token == moved).values(arm=flipped))
    before[moved] = flipped
    campaign = store.get(engine, "t1", campaign["id"])
    audience.compute(engine, campaign, candidates, targets.Query(np.array([1, 1, 1, 0.5], np.float32)), min_size=1)
    after = {m["token"]: m["arm"] for m in audience.members(engine, campaign["id"])}
    common = set(before) & set(after)
    assert len(common) > 100 and moved in common
    assert all(before[t] == after[t] for t in common)
    with engine.connect() as c:
        contacted = set(c.execute(select(contacts.c.token).where(contacts.c.campaign_id == campaign["id"])).scalars())
    assert contacted == {t for t, a in after.items() if a == "treatment"}  # recomputation replaced the contacts


# ---------------------------------------------------------------- refusals
def test_audience_below_the_minimum_is_refused_and_nothing_is_stored(engine):
    candidates = make_candidates(300, 4, consent_share=1.0)
    campaign = store.create(engine, "t1", spec(audience_size=100))
    store.set_min_audience_size(engine, "t1", 150)
    with pytest.raises(AudienceRefused, match=r"too small: \d+ treated people, the minimum is 150"):
        audience.compute(engine, campaign, candidates, targets.Query(np.ones(4, dtype=np.float32)))
    assert audience.members(engine, campaign["id"]) == []
    assert store.get(engine, "t1", campaign["id"])["status"] == "draft"  # rolled back
    assert store.min_audience_size(engine, "t2") == 1000                  # the default elsewhere


def test_missing_consent_coverage_is_refused_with_the_reason(engine):
    candidates = make_candidates(300, 5, consent_share=0.0)
    campaign = store.create(engine, "t1", spec(channel="ads"))
    with pytest.raises(AudienceRefused, match="consent coverage: only 0 of 300 candidates consented to ads"):
        audience.compute(engine, campaign, candidates, targets.Query(np.ones(4, dtype=np.float32)), min_size=10)


def test_lookalike_seed_below_100_is_refused():
    with pytest.raises(ValidationError, match="at least 100 distinct tokens, got 99"):
        spec(target_kind="lookalike", seed_tokens=list(tokens(99)))
    with pytest.raises(ValidationError, match="not a pseudonymous token"):
        spec(target_kind="lookalike", seed_tokens=list(tokens(120)) + ["8613800138000"])
    candidates = make_candidates(500, 6)
    known, unknown = list(candidates.tokens[:60]), list(tokens(60, "elsewhere"))
    with pytest.raises(WenlvError, match="only 60 of 120 seed tokens are known"):
        targets.lookalike_query(candidates, known + unknown)


def test_lookalike_excludes_the_seed_members(engine):
    candidates = make_candidates(600, 7, consent_share=1.0)
    seed = list(candidates.tokens[:150])
    campaign = store.create(engine, "t1", spec(target_kind="lookalike", seed_tokens=seed, audience_size=300))
    query = targets.lookalike_query(candidates, seed)
    summary = audience.compute(engine, campaign, candidates, query, min_size=1)
    chosen = {m["token"] for m in audience.members(engine, campaign["id"])}
    assert summary["audience_size"] == 300 and not chosen & set(seed)


def test_region_filter_applies_and_needs_a_home_city(engine):
    candidates = make_candidates(300, 8, consent_share=1.0)
    campaign = store.create(engine, "t1", spec(audience_size=500, region="shanghai"))
    audience.compute(engine, campaign, candidates, targets.Query(np.ones(4, dtype=np.float32)), min_size=1)
    chosen = {m["token"] for m in audience.members(engine, campaign["id"])}
    assert chosen == set(candidates.tokens[candidates.home_city == "Shanghai"])
    candidates.home_city = None
    with pytest.raises(AudienceRefused, match="cannot be honoured: these candidates carry no home city") as refused:
        audience.compute(engine, store.get(engine, "t1", campaign["id"]), candidates,
                         targets.Query(np.ones(4, dtype=np.float32)), min_size=1)
    assert refused.value.reason == "region"
    assert {m["token"] for m in audience.members(engine, campaign["id"])} == chosen  # the earlier audience is kept
