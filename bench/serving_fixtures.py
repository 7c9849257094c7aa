"""Synthetic model bundles of any shape, for tests and the serving benchmark.

Factors have taste structure (a mixture of clusters plus noise) like trained ALS factors,
so approximate-index recall measured on them means something; POIs get real-looking
coordinates around a city centre, categories and opening hours from the contracts.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from wenlv.features.contracts import POI_CATEGORIES
from wenlv.training.bundle import ModelBundle

CITIES = {"hangzhou": (30.25, 120.17), "shaoxing": (30.0, 120.58)}


def token_for(i: int, salt: str = "synthetic") -> str:
    """A hex pseudonymous token, like the PSI tokens in the feature blocks."""
    return hashlib.blake2b(f"{salt}:{i}".encode(), digest_size=16).hexdigest()


def synthetic_bundle(n_pois: int = 50, n_users: int = 200, factors: int = 16, seed: int = 0,
                     visits_per_user: int = 3, clusters: int = 12, version: str | None = None) -> ModelBundle:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, factors)).astype(np.float32)
    poi_f = (centres[rng.integers(0, clusters, n_pois)] + 0.5 * rng.normal(size=(n_pois, factors))).astype(np.float32)
    user_f = (centres[rng.integers(0, clusters, n_users)] + 0.5 * rng.normal(size=(n_users, factors))).astype(np.float32)
    city_names = list(CITIES)
    city = np.array(city_names)[rng.integers(0, len(city_names), n_pois)]
    lat0 = np.array([CITIES[c][0] for c in city])
    lon0 = np.array([CITIES[c][1] for c in city])
    category = np.array(POI_CATEGORIES)[rng.integers(0, len(POI_CATEGORIES), n_pois)]
    open_h = np.where(category == "nightlife", 18, rng.integers(7, 11, n_pois))
    close_h = np.where(category == "nightlife", 2, rng.integers(17, 23, n_pois))
    pois = pd.DataFrame({
        "poi_id": [f"P{i:05d}" for i in range(n_pois)],
        "name": [f"{c.replace('_', ' ').title()} {i}" for i, c in enumerate(category)],
        "category": category,
        "city": city,
        "lat": lat0 + rng.normal(scale=0.05, size=n_pois),
        "lon": lon0 + rng.normal(scale=0.05, size=n_pois),
        "open_time": [f"{h:02d}:00" for h in open_h],
        "close_time": [f"{h:02d}:00" for h in close_h],
        "visit_minutes": rng.integers(20, 240, n_pois),
        "price_cny": rng.uniform(0, 300, n_pois).round(1),
        "popularity": rng.pareto(1.5, n_pois).round(3) * 100,
    })
    tokens = [token_for(i, f"s{seed}") for i in range(n_users)]
    users = pd.DataFrame({"token": tokens, "is_prospect": rng.random(n_users) < 0.1})
    n_hist = n_users * visits_per_user
    history = pd.DataFrame({
        "token": np.repeat(np.array(tokens, dtype=object), visits_per_user),
        "poi_id": pois["poi_id"].to_numpy()[rng.integers(0, n_pois, n_hist)],
    }).drop_duplicates(ignore_index=True) if visits_per_user else pd.DataFrame({"token": [], "poi_id": []}, dtype=object)
    meta = {"version": version or f"synthetic-{seed}", "synthetic": True}
    return ModelBundle(pois=pois, poi_factors=poi_f, users=users, user_factors=user_f, history=history, meta=meta)
