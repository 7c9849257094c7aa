"""A small feature-block folder with real signal, for tests and quick experiments.

Shaped exactly like `wenlv features` output (contracts.BLOCK_TABLES + manifest.json) but
drawn directly: each user has a taste over a few themes; POIs, carrier areas and internet
topics belong to themes, so every party's data says something about future POI visits.
Prospects have carrier and internet data only, and some of them visit in the test window.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.features import contracts


def write_toy_blocks(out: str | Path, n_users: int = 300, n_pois: int = 24, n_themes: int = 4,
                     prospect_share: float = 0.35, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    out = Path(out)
    tokens = np.array([hashlib.sha256(f"toy-{seed}-{i}".encode()).hexdigest()[:32] for i in range(n_users)])
    theme = rng.integers(0, n_themes, n_users)                     # each user's favourite theme
    taste = np.full((n_users, n_themes), 0.15 / max(n_themes - 1, 1))
    taste[np.arange(n_users), theme] = 0.85
    is_prospect = rng.random(n_users) < prospect_share
    in_internet = rng.random(n_users) < 0.8

    poi_theme = np.arange(n_pois) % n_themes
    poi_ids = np.array([f"poi{j:03d}" for j in range(n_pois)])
    area_theme = np.arange(3 * n_themes) % n_themes
    area_ids = np.array([f"area{j:03d}" for j in range(len(area_theme))])
    topic_ids = np.array([f"topic{t}" for t in range(n_themes)])

    def visits(users, per_user):
        rows = []
        for u in users:
            p = taste[u][poi_theme]
            p = p / p.sum()
            for j in rng.choice(n_pois, size=per_user(), replace=True, p=p):
                rows.append((tokens[u], poi_ids[j]))
        return pd.DataFrame(rows, columns=["token", "poi_id"])

    known = np.flatnonzero(~is_prospect)
    train = visits(known, lambda: int(rng.integers(2, 6)))
    test_users = np.concatenate([known[rng.random(len(known)) < 0.6],
                                 np.flatnonzero(is_prospect)[rng.random(int(is_prospect.sum())) < 0.6]])
    test = visits(test_users, lambda: int(rng.integers(1, 3)))

    inter = train.groupby(["token", "poi_id"]).size().rename("visits").reset_index()
    inter["spend_cny"] = inter["visits"] * 80.0
    inter["dwell_minutes"] = inter["visits"] * 90.0
    inter["recency_days"] = rng.uniform(0, 60, len(inter))
    inter["confidence"] = 1.0 + 4.0 * np.log1p(inter["visits"])
    test_block = test.groupby(["token", "poi_id"]).size().rename("visits").reset_index()

    carrier_rows, internet_rows = [], []
    for u in range(n_users):
        p = taste[u][area_theme]
        for a in np.unique(rng.choice(len(area_ids), size=4, p=p / p.sum())):
            days = int(rng.integers(1, 6))
            carrier_rows.append((tokens[u], area_ids[a], days, days * 120.0, 1.0 + np.log1p(days)))
        if in_internet[u]:
            for t in np.unique(rng.choice(n_themes, size=3, p=taste[u])):
                events = int(rng.integers(1, 30))
                internet_rows.append((tokens[u], topic_ids[t], events, 1.0 + np.log1p(events)))
    tables = {
        "carrier/users": pd.DataFrame({"token": tokens, "in_tourism": ~is_prospect, "in_internet": in_internet,
                                       "is_prospect": is_prospect}),
        "tourism/interactions": inter,
        "tourism/test_interactions": test_block,
        "tourism/poi_features": pd.DataFrame({
            "poi_id": poi_ids, "category": [contracts.POI_CATEGORIES[t] for t in poi_theme],
            "popularity": train.groupby("poi_id")["token"].nunique().reindex(poi_ids).fillna(0).to_numpy(float),
            "summer_share": rng.uniform(0, 1, n_pois), "weekend_share": rng.uniform(0, 1, n_pois)}),
        "carrier/interactions": pd.DataFrame(carrier_rows, columns=["token", "area_id", "days", "dwell_minutes", "confidence"]),
        "carrier/user_features": pd.DataFrame({
            "token": tokens,
            "home_distance_km": rng.gamma(2.0, 150.0, n_users) + 50.0 * theme,
            "trip_days": rng.integers(0, 8, n_users).astype(float),
            "age_band": rng.choice(list(contracts.AGE_BANDS), n_users),
            "arpu_tier": rng.integers(1, 6, n_users)}),
        "internet/interactions": pd.DataFrame(internet_rows, columns=["token", "topic", "events", "confidence"]),
        "internet/user_features": pd.DataFrame({
            "token": tokens[in_internet],
            "active_days": rng.integers(1, 60, int(in_internet.sum())).astype(float),
            "total_events": rng.integers(1, 500, int(in_internet.sum())).astype(float),
            "travel_share": (theme[in_internet] + rng.uniform(0, 1, int(in_internet.sum()))) / n_themes}),
    }
    manifest = {"schema_version": contracts.SCHEMA_VERSION, "created_at": "2026-01-01T00:00:00",
                "split_date": "2025-09-01", "train_window": ["2025-01-01", "2025-08-31"],
                "test_window": ["2025-09-01", "2025-09-30"], "tables": {}, "quarantine": {},
                "psi": {"tourism_carrier_matched": int((~is_prospect).sum()),
                        "internet_carrier_matched": int(in_internet.sum())}}
    for table in contracts.BLOCK_TABLES:
        key = f"{table.party}/{table.name}"
        frame = tables[key][table.columns]
        path = out / table.party / f"{table.name}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
        manifest["tables"][key] = {"party": table.party, "rows": len(frame),
                                   "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                                   "path": f"{table.party}/{table.name}.parquet"}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return out
