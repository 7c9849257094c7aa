"""Audiences computed for the API, from what the server already holds (no training in a request).

* affinity (`pois`, `category`) and lookalike: the served champion bundle's user factors — the
  same vectors as serving's user index — with the channel consent read from the feature blocks
  that bundle was trained on (`WENLV_CAMPAIGN_FEATURES`);
* destination: the propensity scores of a scores file (`WENLV_CAMPAIGN_SCORES`), written by
  `wenlv campaign scores --data RAW --out FILE` (the federated propensity is trained there, where
  the parties' data lives; a request never trains). Uplift-ranked campaigns are CLI only.

A missing input raises `Unavailable` naming it (the API answers 409); the audience rules
themselves (size, consent coverage, seed, region) raise `AudienceRefused` from `audience.compute`.
"""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import Engine

from wenlv.errors import WenlvError
from wenlv.marketing import audience, targets
from wenlv.training.bundle import ModelBundle

SCORE_COLUMNS = ("token", "score", "has_internet", "home_city")
META_KEY = b"wenlv_campaign_scores"


class Unavailable(WenlvError):
    """The server lacks an input this campaign's audience needs; the message names it and how to provide it."""


def save_scores(path: str | Path, candidates: targets.Candidates, info: dict) -> Path:
    """Write destination candidates (token, propensity logit, ads consent, home city) to `path`, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.table({"token": pa.array(candidates.tokens.astype(str), pa.string()),
                      "score": pa.array(candidates.vectors[:, 0], pa.float32()),
                      "has_internet": pa.array(candidates.consent["ads"], pa.bool_()),
                      "home_city": pa.array(candidates.home_city.astype(str), pa.string())})
    meta = {"model_version": candidates.model_version, **info}
    table = table.replace_schema_metadata({META_KEY: json.dumps(meta, default=str).encode()})
    staging = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
    try:
        pq.write_table(table, staging)
        os.replace(staging, path)  # readers see the old file or the new one, never half of one
    finally:
        staging.unlink(missing_ok=True)
    return path


def load_scores(path: str | Path | None) -> tuple[targets.Candidates, dict]:
    """Destination candidates from a scores file; `Unavailable` when unset, missing or not a scores file."""
    if path is None:
        raise Unavailable("destination audiences need propensity scores, and none are configured: run "
                          "`wenlv campaign scores --data RAW --out FILE` and set WENLV_CAMPAIGN_SCORES=FILE")
    path = Path(path)
    if not path.is_file():
        raise Unavailable(f"the propensity scores file {path} (WENLV_CAMPAIGN_SCORES) does not exist: "
                          f"write it with `wenlv campaign scores --data RAW --out {path}`")
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise Unavailable(f"the propensity scores file {path} is not readable Parquet: {exc}") from None
    missing = [c for c in SCORE_COLUMNS if c not in table.column_names]
    raw_meta = (table.schema.metadata or {}).get(META_KEY)
    if missing or raw_meta is None:
        raise Unavailable(f"{path} is not a campaign scores file (missing "
                          f"{', '.join(missing) if missing else 'its metadata'}); rewrite it with `wenlv campaign scores`")
    meta = json.loads(raw_meta)
    frame = table.select(list(SCORE_COLUMNS)).to_pandas()
    candidates = targets.from_propensity(frame.token.to_numpy(), frame.score.to_numpy(np.float32),
                                         frame.has_internet.to_numpy(bool), frame.home_city.to_numpy(object),
                                         str(meta.get("model_version") or "propensity"))
    return candidates, meta


def bundle_candidates(campaign: dict, bundle: ModelBundle | None, version: str | None,
                      features_dir: str | Path | None) -> tuple[targets.Candidates, targets.Query, dict]:
    """Affinity or lookalike candidates over the served bundle, consent from its feature blocks."""
    if bundle is None:
        raise Unavailable(f"{campaign['target_kind']} audiences score with the served model, and no model version "
                          "is loaded yet")
    if features_dir is None or not Path(features_dir, "carrier", "users.parquet").is_file():
        where = "is not set" if features_dir is None else f"= {features_dir} holds no carrier/users.parquet"
        raise Unavailable(f"{campaign['target_kind']} audiences need the channel consent of the model's users, read "
                          f"from the feature blocks the model was trained on: WENLV_CAMPAIGN_FEATURES {where}")
    tokens = bundle.users["token"].astype(str).to_numpy()
    consent = targets.consent_from_blocks(features_dir, tokens)
    city = targets.home_city_from_blocks(features_dir, tokens) if campaign["region"] is not None else None
    info = {"model_version": version, "consent_from": str(features_dir)}
    if campaign["target_kind"] == "lookalike":
        candidates = targets.from_bundle(bundle, consent, version, unit=True, home_city=city)
        return candidates, targets.lookalike_query(candidates, campaign["target"]["seed_tokens"]), info
    candidates = targets.from_bundle(bundle, consent, version, home_city=city)
    target = campaign["target"]
    return candidates, targets.affinity_query(bundle, target.get("poi_ids"), target.get("category")), info


def compute(engine: Engine, campaign: dict, *, bundle: ModelBundle | None = None, version: str | None = None,
            features_dir: str | Path | None = None, scores_path: str | Path | None = None) -> dict:
    """Compute (or recompute: members keep their arm) the campaign's audience from the served inputs.

    Returns `audience.compute`'s summary plus `consent_coverage` (consented share of the candidates)
    and `scoring` (where the scores came from).
    """
    if campaign["target_kind"] == "destination":
        if campaign["target"].get("uplift_from") is not None:
            raise Unavailable("uplift-ranked campaigns train an uplift model on the parties' data: compute them with "
                              f"`wenlv campaign audience --id {campaign['id']} --data RAW`")
        candidates, info = load_scores(scores_path)
        query = targets.destination_query()
        info = {"scores_file": str(scores_path), **{k: info[k] for k in ("model_version", "scored_as_of") if k in info}}
    else:
        candidates, query, info = bundle_candidates(campaign, bundle, version, features_dir)
    summary = audience.compute(engine, campaign, candidates, query)
    n = summary["candidates"]
    return summary | {"consent_coverage": round(summary["consented"] / n, 4) if n else 0.0, "scoring": info}

