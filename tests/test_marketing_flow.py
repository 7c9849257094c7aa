"""A destination campaign end to end on generated data: federated propensity, audience, export and
simulated delivery into the ledger (SQLite), judged against the synthetic truth."""
from __future__ import annotations

import json
from datetime import date

import pandas as pd
import pytest
from sqlalchemy import select

from wenlv.db.schema import events
from wenlv.errors import WenlvError
from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.features.generator import generate
from wenlv.cli import main
from wenlv.marketing import audience, export, served, sources
from wenlv.marketing import campaigns as store
from wenlv.marketing.campaigns import CampaignSpec
from wenlv.marketing.simulate import simulate_delivery
from tests.support.campaign_db import sqlite_engine

KEY = b"test-carrier-token-key"  # the carrier's user-token key (PSI alignment)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    generate(out, scale="tiny", seed=3, progress=False)
    return out


def test_destination_campaign_end_to_end(data, tmp_path):
    candidates, query, info = sources.destination(data, key=KEY)
    assert info["trained_on"].endswith(io.read_meta(data)["split_date"])
    with sqlite_engine(tmp_path / "flow.sqlite") as engine:
        store.set_min_audience_size(engine, "hz", 20)
        spec = CampaignSpec(name="winter", target_kind="destination", channel="sms", audience_size=200,
                            holdout_fraction=0.25, starts_on=date(2026, 12, 10), ends_on=date(2026, 12, 20))
        campaign = store.create(engine, "hz", spec)
        summary = audience.compute(engine, campaign, candidates, query)
        assert summary["audience_size"] == 200 and summary["prospect_share"] == 1.0
        _, rows = export.export_rows(engine, "hz", campaign["id"], secret=b"s")
        text = export.to_csv(rows)
        phones = io.read_pandas(data, C.SUBSCRIBERS, ["phone"]).phone
        assert len(rows) == summary["treatment_size"] and not any(p in text for p in phones)

        result = simulate_delivery(engine, campaign["id"], data, seed=1, key=KEY)
        assert result["treated"] == summary["treatment_size"] and result["holdout"] == summary["holdout_size"]
        assert result["true_incremental_revenue_cny"] >= 0 and result["true_incremental_visits"] >= 0
        with engine.connect() as c:
            written = pd.DataFrame(c.execute(select(events)).mappings().all())
        assert len(written) == result["events_written"] > 0
        arms = {m["token"]: m["arm"] for m in audience.members(engine, campaign["id"])}
        receipts = written[written.kind == "impression"]  # delivery receipts: every treated person, this campaign
        assert sorted(receipts.token) == sorted(t for t, a in arms.items() if a == "treatment") == sorted(
            m["token"] for m in audience.members(engine, campaign["id"], "treatment"))
        assert (receipts.campaign_id == campaign["id"]).all() and result["delivered"] == len(receipts)
        bookings = written[written.kind == "booking"]
        treated = bookings.token.map(arms) == "treatment"
        assert (bookings.campaign_id[treated] == campaign["id"]).all()
        assert bookings.campaign_id[~treated].isna().all()
        days = pd.to_datetime(written.occurred_at, utc=True).dt.date
        assert days.min() >= spec.starts_on and days.max() <= spec.ends_on
        assert set(written.tenant) == {"hz"}
        again = simulate_delivery(engine, campaign["id"], data, seed=1, key=KEY)
        assert again["true_incremental_revenue_cny"] == result["true_incremental_revenue_cny"]
        with engine.connect() as c:
            assert len(c.execute(select(events.c.event_id)).all()) == len(written)  # a re-run stores nothing twice


def test_uplift_ranking_learns_from_an_earlier_campaigns_arms(data, tmp_path):
    candidates, query, _ = sources.destination(data, key=KEY)
    with sqlite_engine(tmp_path / "uplift.sqlite") as engine:
        store.set_min_audience_size(engine, "hz", 10)

        def create(**over):
            fields = {"name": "c", "target_kind": "destination", "channel": "sms", "audience_size": 400,
                      "cap_contacts": 10, "starts_on": date(2026, 1, 5), "ends_on": date(2026, 1, 20)}
            return store.create(engine, "hz", CampaignSpec(**(fields | over)))

        thin = create(audience_size=100, holdout_fraction=0.1)
        learn = create(holdout_fraction=0.5)
        for campaign in (thin, learn):
            audience.compute(engine, campaign, candidates, query)
            simulate_delivery(engine, campaign["id"], data, seed=2, key=KEY)
        with pytest.raises(WenlvError, match="at least 50 people in each arm"):
            sources.destination(data, key=KEY, uplift_from=(engine, store.get(engine, "hz", thin["id"])))
        ranked = create(uplift_from=learn["id"], audience_size=100, starts_on=date(2026, 3, 2),
                        ends_on=date(2026, 3, 9))
        uplift_candidates, uplift_query, info = sources.for_campaign(ranked, data_dir=data, engine=engine, key=KEY)
        assert info["ranked_by"] == "predicted uplift" and info["learnt_from_members"] == 400
        assert info["treatment_members"] >= 50 and info["holdout_members"] >= 50
        assert uplift_candidates.model_version.startswith("uplift@")
        audience.compute(engine, ranked, uplift_candidates, uplift_query)
        scores = [m["score"] for m in audience.members(engine, ranked["id"])]
        assert len(scores) == 100 and scores == sorted(scores, reverse=True)
        with pytest.raises(WenlvError, match="uplift_from: campaign 999 not found for tenant hz"):
            sources.for_campaign({**ranked, "target": {"uplift_from": 999}}, data_dir=data, engine=engine, key=KEY)


def test_campaign_scores_cli_writes_what_the_api_serves(data, tmp_path, monkeypatch, capsys):
    """`wenlv campaign scores` trains the propensity and writes the file WENLV_CAMPAIGN_SCORES points at."""
    monkeypatch.setenv("WENLV_CARRIER_TOKEN_KEY", KEY.decode())
    from wenlv.settings import reset_settings

    reset_settings()
    out = tmp_path / "scores.parquet"
    assert main(["campaign", "--db", f"sqlite:///{tmp_path / 'c.sqlite'}", "scores", "--data", str(data),
                 "--out", str(out)]) in (0, None)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    candidates, meta = served.load_scores(out)
    direct, _, _ = sources.destination(data, key=KEY)
    assert printed["people"] == len(candidates.tokens) == len(direct.tokens) > 0
    assert list(candidates.tokens) == list(direct.tokens)                       # the same people, same token key
    assert (candidates.home_city == direct.home_city).all() and meta["model_version"] == direct.model_version
    assert not list(tmp_path.glob(".scores.parquet.*"))                          # no staging file left behind
    reset_settings()
