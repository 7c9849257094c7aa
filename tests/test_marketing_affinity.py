"""Affinity and lookalike audiences over a model bundle's user factors, consent from the feature blocks."""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest

from wenlv.errors import WenlvError
from wenlv.marketing import audience, sources
from wenlv.marketing import campaigns as store
from wenlv.marketing.campaigns import CampaignSpec
from wenlv.bench.serving_fixtures import synthetic_bundle
from tests.support.campaign_db import sqlite_engine


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("affinity")
    bundle = synthetic_bundle(n_pois=30, n_users=500, factors=8, seed=9, version="4")
    bundle.save(root / "bundle")
    tokens = bundle.users.token.to_numpy()
    rng = np.random.default_rng(0)
    sharing = rng.random(len(tokens)) < 0.7
    internet = rng.random(len(tokens)) < 0.5
    (root / "features" / "carrier").mkdir(parents=True)
    pd.DataFrame({"token": tokens[sharing]}).to_parquet(root / "features" / "carrier" / "user_features.parquet")
    pd.DataFrame({"token": tokens, "in_internet": internet}).to_parquet(root / "features" / "carrier" / "users.parquet")
    return bundle, root, sharing, internet


def _campaign(engine, **over):
    fields = {"name": "x", "channel": "sms", "audience_size": 50, "holdout_fraction": 0.1,
              "starts_on": date(2026, 12, 10), "ends_on": date(2026, 12, 20)}
    return store.create(engine, "hz", CampaignSpec(**(fields | over)))


def test_poi_affinity_audience_is_the_exact_top_n_among_the_consented(model, tmp_path):
    bundle, root, sharing, internet = model
    pois = bundle.pois.poi_id.astype(str).tolist()[:2]
    with sqlite_engine(tmp_path / "a.sqlite") as engine:
        for channel, consent in (("sms", sharing), ("ads", internet)):
            campaign = _campaign(engine, target_kind="pois", poi_ids=pois, channel=channel)
            candidates, query, _ = sources.from_bundle(campaign, root / "bundle", root / "features")
            audience.compute(engine, campaign, candidates, query, min_size=1)
            got = [m["token"] for m in audience.members(engine, campaign["id"])]
            scores = bundle.user_factors @ bundle.poi_factors[:2].mean(axis=0)
            scores = np.where(consent, scores, -np.inf)
            expected = bundle.users.token.to_numpy()[np.argsort(-scores, kind="stable")[:50]]
            assert got == list(expected)


def test_category_lookalike_and_bad_targets(model, tmp_path):
    bundle, root, sharing, _ = model
    category = bundle.pois.category.iloc[0]
    with sqlite_engine(tmp_path / "b.sqlite") as engine:
        campaign = _campaign(engine, target_kind="category", category=category)
        candidates, query, _ = sources.from_bundle(campaign, root / "bundle", root / "features")
        assert query.note["target_pois"] == int((bundle.pois.category == category).sum())
        seed = list(bundle.users.token[:120])
        look = _campaign(engine, target_kind="lookalike", seed_tokens=seed, audience_size=100)
        candidates, query, _ = sources.from_bundle(look, root / "bundle", root / "features")
        audience.compute(engine, look, candidates, query, min_size=1)
        chosen = {m["token"] for m in audience.members(engine, look["id"])}
        assert len(chosen) == 100 and not chosen & set(seed)
        unknown = _campaign(engine, target_kind="pois", poi_ids=["NOPE-1"])
        with pytest.raises(WenlvError, match="POIs not in the model: NOPE-1"):
            sources.from_bundle(unknown, root / "bundle", root / "features")
        missing_cat = _campaign(engine, target_kind="category", category="no_such_category")
        with pytest.raises(WenlvError, match="no POI of category 'no_such_category'"):
            sources.from_bundle(missing_cat, root / "bundle", root / "features")
        with pytest.raises(WenlvError, match="need --features"):
            sources.from_bundle(campaign, root / "bundle", None)
