"""Ranking one model version's POIs for one visitor: the scoring serving and the MLflow model share.

`BundleRanker` is the part of serving a bundle that needs no online store: the POI table
(filters), popularity, the bundle's user rows and training-window visits, and the POI
index. `serving.model.ServingModel` resolves a visitor (online store, bundle, cold-start
tower) and then ranks through it; the MLflow pyfunc model (`training.pyfunc_model`) ranks
through the same object, so both return the same top-k for the same vector and filters.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from wenlv.training.bundle import ModelBundle
from wenlv.training.poi_filters import Filters, PoiTable
from wenlv.training.vector_index import VectorIndex, exact_top_k

STRATEGY_ALS = "als"                # ranked by the visitor's own factors
STRATEGY_POPULARITY = "popularity"  # no usable vector, or a non-personalised list asked for
# Up to this many visited POIs are left out by over-fetching (VectorIndex.search_excluding), more by a mask:
# fetching k + 256 from a flat index costs about what the mask does.
EXCLUDE_BY_OVERFETCH = 256


def popularity_scores(pois: pd.DataFrame) -> np.ndarray:
    """log(1 + popularity) scaled to [0, 1], one per POI: the ranking that uses nothing about the person."""
    if "popularity" not in pois:
        return np.zeros(len(pois), dtype=np.float32)
    pop = np.log1p(pois["popularity"].to_numpy(dtype=np.float64))
    return (pop / pop.max() if len(pop) and pop.max() > 0 else pop).astype(np.float32)


class BundleRanker:
    """Everything needed to rank a bundle's POIs for a user vector (or by popularity without one)."""

    def __init__(self, bundle: ModelBundle, poi_index: VectorIndex):
        if poi_index.size != len(bundle.pois):
            raise ValueError(f"the POI index holds {poi_index.size} vectors but the bundle has {len(bundle.pois)} POIs")
        self.table = PoiTable(bundle.pois)
        self.poi_index = poi_index
        self.poi_factors = np.ascontiguousarray(bundle.poi_factors, dtype=np.float32)
        self.popularity = popularity_scores(bundle.pois)
        self.user_rows = pd.Index(bundle.users["token"].astype(str))
        self.user_factors = bundle.user_factors
        self._history_csr(bundle.history)

    def _history_csr(self, history: pd.DataFrame) -> None:
        """Visited POI rows per user row, as CSR arrays (no per-user Python objects)."""
        rows = self.user_rows.get_indexer(history["token"].astype(str)) if len(history) else np.empty(0, dtype=np.int64)
        cols = self.table.index_of.get_indexer(history["poi_id"].astype(str)) if len(history) else np.empty(0, dtype=np.int64)
        keep = (rows >= 0) & (cols >= 0)
        rows, cols = rows[keep], cols[keep]
        order = np.argsort(rows, kind="stable")
        self._hist_cols = cols[order].astype(np.int64)
        self._hist_ptr = np.searchsorted(rows[order], np.arange(len(self.user_rows) + 1))

    def bundle_row(self, token: str) -> int | None:
        """The token's row in the bundle's users, or None for a token the model never saw."""
        try:
            row = self.user_rows.get_loc(token)
        except KeyError:
            return None
        return row if isinstance(row, (int, np.integer)) else None

    def visited(self, row: int) -> np.ndarray:
        """POI rows the bundle's user `row` visited in the training window."""
        return self._hist_cols[self._hist_ptr[row]:self._hist_ptr[row + 1]]

    def top_k(self, vector: np.ndarray | None, k: int, filters: Filters | None = None,
              exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(POI rows, scores), best first: by inner product with `vector`, else by popularity.

        Only POIs that pass `filters` and are not in `exclude` (POI rows) are candidates;
        min(k, eligible) items come back.
        """
        filters = filters or Filters()
        if vector is not None and not filters.any and exclude is not None and 0 < len(exclude) <= EXCLUDE_BY_OVERFETCH:
            return self.poi_index.search_excluding(vector, k, exclude)  # the same answer, without a mask
        mask = self.table.mask(filters, exclude)
        if vector is not None:
            return self.poi_index.search(vector, k, mask)
        return exact_top_k(self.popularity[:, None], np.ones(1, dtype=np.float32), k, mask)
