"""`wenlv materialize`: write one model version's online features to the online store.

Per token (keys carry the version, so versions never mix): the user's factors, the POIs
visited in the training window (for exclusion and reasons), and side features from the
feature blocks (carrier/internet user_features) for the cold-start tower — including
tokens the model has no factors for. Only tokens and model/feature values are written.
"""
from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from wenlv.features import contracts
from wenlv.serving.online_store import USER_TTL_S, KeyValueStore, UserRecord
from wenlv.training.bundle import ModelBundle
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

SIDE_TABLES = (contracts.CARRIER_USER_FEATURES, contracts.INTERNET_USER_FEATURES)


def side_features(features_dir: Path | None) -> pd.DataFrame | None:
    """Side features per token from the feature blocks (outer-joined), or None without blocks."""
    if features_dir is None:
        return None
    frames = []
    for table in SIDE_TABLES:
        path = Path(features_dir) / table.party / f"{table.name}.parquet"
        if path.exists():
            frame = pd.read_parquet(path)
            personal = set(frame.columns) & contracts.personal_columns()
            if personal:
                raise WenlvError(f"{path}: personal data columns {sorted(personal)} must never reach the online store")
            missing = set(table.columns) - set(frame.columns)
            if missing:
                raise WenlvError(f"{path}: missing columns {sorted(missing)} of {table.qualified}")
            frames.append(frame[table.columns].set_index("token"))
    if not frames:
        return None
    joined = frames[0]
    for frame in frames[1:]:
        joined = joined.join(frame, how="outer")
    return joined


def _clean(value):
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if hasattr(value, "item") else value


def materialize(bundle: ModelBundle, version: str, store: KeyValueStore, features_dir: Path | None = None,
                ttl_s: int = USER_TTL_S, progress: bool = True) -> dict:
    """Write the version's user records; returns counts. Idempotent (keys are overwritten)."""
    started = time.perf_counter()
    version = str(version)
    tokens = bundle.users["token"].astype(str).to_numpy()
    hist: dict = {}
    if len(bundle.history):  # token -> visited POI ids, as a plain dict (Series.get per user is slow)
        h = bundle.history.astype({"token": str, "poi_id": str}).sort_values("token", kind="stable")
        toks, starts = np.unique(h["token"].to_numpy(), return_index=True)
        pois = h["poi_id"].to_numpy()
        ends = np.append(starts[1:], len(h))
        hist = {t: pois[a:b].tolist() for t, a, b in zip(toks, starts, ends)}
    side = side_features(features_dir)
    side_records = {}
    if side is not None:
        side_records = {tok: {k: _clean(v) for k, v in row.items() if _clean(v) is not None}
                        for tok, row in zip(side.index.astype(str), side.to_dict("records"))}

    def records():
        for j in range(len(tokens)):
            tok = tokens[j]
            visited = hist.get(tok, [])
            yield tok, UserRecord(vector=bundle.user_factors[j], visited=visited,
                                  side=side_records.pop(tok, {}))
        for tok, s in list(side_records.items()):  # cold-start tokens: side features only
            yield tok, UserRecord(vector=None, visited=hist.get(tok, []), side=s)

    total = len(tokens) + len(set(side_records) - set(tokens))
    bar = tqdm(records(), total=total, desc=f"materialise v{version}", unit="user", file=sys.stderr,
               disable=not progress, mininterval=1.0)
    written = store.put_users(version, bar, ttl_s)
    meta = {"version": version, "users": int(written), "with_factors": int(len(tokens)),
            "ttl_s": int(ttl_s), "materialized_at": time.time()}
    store.mark_materialized(version, meta, ttl_s)
    log.info("materialised %d user records for model version %s in %.1f s", written, version, time.perf_counter() - started)
    return {**meta, "seconds": round(time.perf_counter() - started, 3), "store": store.describe()}
