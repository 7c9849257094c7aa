"""The people a campaign can reach and how each target scores them.

`Candidates` holds, row for row, the tokens, the vectors the selection scans, whether the
person is a prospect (no tourism history), their consent per channel and (when known)
home city. Three builders, one per kind of target:

* affinity (`pois`, `category`) — the model bundle's user factors; the query is the mean
  of the target POIs' factors (inner product, as serving's user index does);
* lookalike — unit user factors; the query is the centroid of the seed members' unit
  vectors; the seed members themselves are never candidates;
* destination — the federated propensity's logit as a one-column vector, query [1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from wenlv.errors import WenlvError
from wenlv.marketing.campaigns import MIN_SEED
from wenlv.marketing.refusals import AudienceRefused
from wenlv.marketing.select import flat_index
from wenlv.training.bundle import ModelBundle


@dataclass
class Candidates:
    tokens: np.ndarray                 # str per row
    vectors: np.ndarray                # float32 [n, d]
    is_prospect: np.ndarray            # bool per row
    consent: dict[str, np.ndarray]     # channel -> bool per row
    home_city: np.ndarray | None = None
    model_version: str | None = None
    _index: object = field(default=None, repr=False)

    def __post_init__(self):
        n = len(self.tokens)
        if self.vectors.shape[0] != n or len(self.is_prospect) != n or any(len(v) != n for v in self.consent.values()):
            raise ValueError("candidate arrays differ in length")

    @property
    def index(self):
        """The FAISS flat inner-product index over the vectors, built once."""
        if self._index is None:
            self._index = flat_index(self.vectors)
        return self._index


@dataclass
class Query:
    vector: np.ndarray
    exclude: np.ndarray | None = None  # rows that may not be selected (lookalike seeds)
    note: dict = field(default_factory=dict)


def consent_from_blocks(features_dir: str | Path, tokens) -> dict[str, np.ndarray]:
    """sms: the carrier released the user's features (partner-sharing consent); ads: matched with a consenting account."""
    features_dir = Path(features_dir)
    sharing = pq.read_table(features_dir / "carrier" / "user_features.parquet", columns=["token"]).column(0)
    users = pq.read_table(features_dir / "carrier" / "users.parquet", columns=["token", "in_internet"]).to_pandas()
    internet = users.token.to_numpy(object)[users.in_internet.to_numpy(bool)]
    tokens = pd.Index(np.asarray(tokens, dtype=object), dtype=object)  # object hashing: pandas' arrow-string isin is a Python loop
    return {"sms": tokens.isin(sharing.to_numpy(zero_copy_only=False)), "ads": tokens.isin(internet)}


def home_city_from_blocks(features_dir: str | Path, tokens) -> np.ndarray | None:
    """Home city per token from the carrier's user_features block, or None when the block carries none.

    The carrier's feature job computes the home city, but the `carrier.user_features` contract
    does not include it (the towers would one-hot every string column), so blocks written by
    the current jobs give None and a region is refused for bundle audiences rather than ignored.
    People the block does not hold get no city and so never match a region.
    """
    path = Path(features_dir) / "carrier" / "user_features.parquet"
    if "home_city" not in pq.read_schema(path).names:
        return None
    frame = pd.read_parquet(path, columns=["token", "home_city"])
    city = pd.Series(frame.home_city.to_numpy(object), index=frame.token.astype(str))
    return pd.Series(tokens).map(city).fillna("").to_numpy(object)


def from_bundle(bundle: ModelBundle, consent: dict[str, np.ndarray], version: str | None = None,
                unit: bool = False, home_city: np.ndarray | None = None) -> Candidates:
    vectors = np.ascontiguousarray(bundle.user_factors, dtype=np.float32)
    if unit:
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    return Candidates(bundle.users["token"].astype(str).to_numpy(), vectors,
                      bundle.users["is_prospect"].to_numpy(bool), consent, home_city,
                      version or str(bundle.meta.get("model_version", "bundle")))


def affinity_query(bundle: ModelBundle, poi_ids: list[str] | None = None, category: str | None = None) -> Query:
    pois = bundle.pois.reset_index(drop=True)
    if poi_ids is not None:
        rows = pois.index[pois.poi_id.astype(str).isin(poi_ids)].to_numpy()
        missing = sorted(set(poi_ids) - set(pois.poi_id.astype(str)))
        if missing:
            raise WenlvError(f"POIs not in the model: {', '.join(missing[:10])}" + (" …" if len(missing) > 10 else ""))
    else:
        rows = pois.index[pois.category == category].to_numpy()
        if len(rows) == 0:
            raise WenlvError(f"no POI of category {category!r} in the model; categories: "
                             f"{', '.join(sorted(pois.category.unique()))}")
    return Query(bundle.poi_factors[rows].mean(axis=0).astype(np.float32), note={"target_pois": int(len(rows))})


def lookalike_query(candidates: Candidates, seed_tokens: list[str]) -> Query:
    """Centroid of the seed members found in the model; refuses a seed below MIN_SEED found members."""
    seeds = np.flatnonzero(pd.Series(candidates.tokens).isin(set(seed_tokens)).to_numpy())
    if len(seeds) < MIN_SEED:
        raise AudienceRefused(f"lookalike seed: only {len(seeds)} of {len(seed_tokens)} seed tokens are known to the "
                              f"model; at least {MIN_SEED} are needed", reason="seed_size")
    exclude = np.zeros(len(candidates.tokens), dtype=bool)
    exclude[seeds] = True
    centroid = candidates.vectors[seeds].mean(axis=0)
    return Query((centroid / max(np.linalg.norm(centroid), 1e-9)).astype(np.float32), exclude,
                 {"seed_found": int(len(seeds)), "seed_given": len(seed_tokens)})


def from_propensity(tokens, logits, has_internet, home_city, version: str = "propensity") -> Candidates:
    """Destination-propensity candidates: all are consenting subscribers (sms); ads needs an account."""
    n = len(tokens)
    return Candidates(np.asarray(tokens, dtype=object).astype(str), np.asarray(logits, np.float32).reshape(n, 1),
                      np.ones(n, dtype=bool), {"sms": np.ones(n, dtype=bool), "ads": np.asarray(has_internet, bool)},
                      np.asarray(home_city), version)


def destination_query() -> Query:
    return Query(np.ones(1, dtype=np.float32))
