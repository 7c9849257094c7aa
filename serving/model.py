"""One model version ready to serve: the bundle, its indexes and everything precomputed.

A `ServingModel` is immutable once built; the lifecycle builds the next one fully and
swaps a single reference, and a request takes that reference once, so it never sees
half of two versions. Building refuses (BundleIntegrityError) a bundle whose cold-start tower
does not load; the bundle's files and factors were checked when it was loaded. User vectors come from the online store (keys of this version),
else from the bundle in memory; when the store is down the bundle and popularity keep
answering and the answer says `degraded`.
"""
from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wenlv.serving.answer_json import ItemJson
from wenlv.serving.filters import Filters
from wenlv.serving.indexes import DEFAULT_CACHE, EXACT_BELOW, BundleIndexes, build_bundle_indexes, use_configured_threads
from wenlv.serving.online_store import ResilientStore, StoreUnavailable
from wenlv.serving.towers import UserTower, load_user_tower
from wenlv.training.bundle import ModelBundle
from wenlv.training.ranking import STRATEGY_ALS, STRATEGY_POPULARITY, BundleRanker

log = logging.getLogger(__name__)

STRATEGY_TOWER = "cold_start_tower"  # a vector from side features (new user); als and popularity: training.ranking
FROM_BUNDLE = object()  # ServingModel(tower=...): load the bundle's own tower (the default)


@dataclass
class UserView:
    """What serving knows about one token for one request."""

    vector: np.ndarray | None
    visited: np.ndarray  # POI rows
    strategy: str
    degraded: bool = False
    source: str = "none"  # store | bundle | none


@dataclass
class Recommendation:
    ids: np.ndarray
    scores: np.ndarray
    reasons: list[str]
    strategy: str
    personalized: bool
    degraded: bool
    recommendation_id: str = field(default_factory=lambda: secrets.token_hex(16))  # 32 hex digits, as uuid4().hex


class ServingModel:
    """Everything one model version needs to answer requests."""

    def __init__(self, bundle: ModelBundle, version: str, store: ResilientStore | None = None,
                 indexes: BundleIndexes | None = None, *, with_user_index: bool = True,
                 index_cache: Path | None = DEFAULT_CACHE, exact_below: int = EXACT_BELOW,
                 tower: UserTower | None | object = FROM_BUNDLE):
        started = time.perf_counter()
        use_configured_threads()  # searches run here, one query at a time
        self.bundle, self.version, self.store = bundle, str(version), store
        self.indexes = indexes or build_bundle_indexes(bundle, with_users=with_user_index, cache_dir=index_cache,
                                                       exact_below=exact_below)
        self.ranker = BundleRanker(bundle, self.indexes.pois)  # the scoring the MLflow pyfunc model shares
        self.table, self.poi_factors, self.popularity = self.ranker.table, self.ranker.poi_factors, self.ranker.popularity
        norms = np.linalg.norm(self.poi_factors, axis=1, keepdims=True)
        self.poi_unit = self.poi_factors / np.maximum(norms, 1e-9)
        self.user_rows, self.user_factors = self.ranker.user_rows, self.ranker.user_factors
        self.tower = load_user_tower(bundle.towers_dir, bundle.factors) if tower is FROM_BUNDLE else tower
        t = self.table
        self.item_json = ItemJson(t.poi_ids, t.names, t.categories, t.cities)  # the answer's per-POI JSON, once
        self.built_seconds = round(time.perf_counter() - started, 3)

    def close(self) -> None:
        """Release the bundle's temporary copy on disk (arrays and tower stay in memory for requests in flight)."""
        self.bundle.release()

    def bundle_row(self, token: str) -> int | None:
        return self.ranker.bundle_row(token)

    # ------------------------------------------------------------------ users
    def resolve_user(self, token: str, personalized: bool = True) -> UserView:
        """The token's vector and visits: online store first, then the bundle, then cold start."""
        if not personalized:  # PIPL art. 24: a list that uses nothing about the person
            return UserView(None, np.empty(0, dtype=np.int64), STRATEGY_POPULARITY)
        record, degraded = None, False
        if self.store is not None:
            try:
                record = self.store.get_user(self.version, token)
            except StoreUnavailable:
                degraded = True
        if record is not None and record.vector is not None and record.vector.shape[0] == self.bundle.factors:
            return UserView(record.vector, self.table.indices(record.visited), STRATEGY_ALS, degraded, "store")
        row = self.bundle_row(token)
        if row is not None:
            return UserView(self.user_factors[row], self.ranker.visited(row), STRATEGY_ALS, degraded, "bundle")
        visited = self.table.indices(record.visited) if record is not None else np.empty(0, dtype=np.int64)
        if record is not None and record.side and self.tower is not None:
            vector = self.tower.embed(record.side)
            if vector is not None:
                return UserView(vector, visited, STRATEGY_TOWER, degraded, "store")
        return UserView(None, visited, STRATEGY_POPULARITY, degraded, "store" if record is not None else "none")

    def poi_scores(self, token: str, personalized: bool = True) -> tuple[np.ndarray, bool, str]:
        """Scores for every POI (aligned with bundle.pois), whether they are personal, and the strategy."""
        user = self.resolve_user(token, personalized)
        if user.vector is None:
            return self.popularity.copy(), False, user.strategy
        return self.poi_factors @ np.asarray(user.vector, dtype=np.float32), True, user.strategy

    # ------------------------------------------------------------ recommend
    def recommend(self, token: str, k: int = 10, filters: Filters | None = None, exclude_visited: bool = True,
                  personalized: bool = True) -> Recommendation:
        filters = filters or Filters()
        user = self.resolve_user(token, personalized)
        ids, scores = self.ranker.top_k(user.vector, k, filters, user.visited if exclude_visited else None)
        reasons = self._reasons(ids, user)
        return Recommendation(ids=ids, scores=scores, reasons=reasons, strategy=user.strategy,
                              personalized=user.vector is not None, degraded=user.degraded)

    def _reasons(self, ids: np.ndarray, user: UserView) -> list[str]:
        t = self.table
        if user.vector is None:
            return [f"popular {t.categories[i].replace('_', ' ')} in {t.cities[i]}" for i in ids]
        if len(user.visited) == 0 or len(ids) == 0:
            why = "matches your interests" if user.strategy == STRATEGY_ALS else "popular with visitors like you"
            return [why] * len(ids)
        sims = self.poi_unit[ids] @ self.poi_unit[user.visited].T  # k × visited, small
        closest = user.visited[sims.argmax(axis=1)]
        return [f"similar to {t.names[j]}, which you visited" for j in closest]

    def audience(self, poi_ids: list[str], n: int) -> tuple[list[str], np.ndarray]:
        """Top-n user tokens for a target (mean of the POIs' vectors), via the user index."""
        if self.indexes.users is None:
            raise RuntimeError("this model was built without a user index")
        rows = self.table.indices(poi_ids)
        if len(rows) == 0:
            raise KeyError(f"none of the POIs {poi_ids!r} is in model version {self.version}")
        ids, scores = self.indexes.users.search(self.poi_factors[rows].mean(axis=0), n)
        return self.user_rows[ids].tolist(), scores

    def describe(self) -> dict:
        return {"model_version": self.version, "n_pois": int(self.table.n), "n_users": len(self.user_rows),
                "poi_index": self.indexes.pois.info, "user_index": self.indexes.users.info if self.indexes.users else None,
                "index_source": self.indexes.source,
                "tower": self.tower is not None, "built_seconds": self.built_seconds}
