"""Where a campaign's candidates come from, per target kind (used by the CLI and the demo).

destination: the federated propensity, trained on the earlier window of a raw data folder
and scored as of its split, tokens from PSI alignment (the carrier's token key); pois, category, lookalike: a
model bundle's user factors (a folder, or the registry's champion), consent from the feature
blocks it was trained on.
"""
from __future__ import annotations

from datetime import date
from pathlib import Path

from sqlalchemy import Engine

from wenlv.errors import WenlvError
from wenlv.features import io
from wenlv.marketing import alignment, propensity, targets, uplift_targeting
from wenlv.marketing import campaigns as store
from wenlv.marketing import party_features as pf
from wenlv.training import registry
from wenlv.training.bundle import ModelBundle



def destination(data_dir, *, seed: int = 0, key: bytes | None = None, progress: bool = False,
                as_of: date | None = None, uplift_from: tuple[Engine, dict] | None = None
                ) -> tuple[targets.Candidates, targets.Query, dict]:
    """Train the propensity at (split − 28 days) and score everyone without history as of the split.

    With `uplift_from` (engine, earlier campaign) the score is the predicted uplift learnt from
    that campaign's treatment and holdout instead of the propensity.
    """
    meta = io.read_meta(data_dir)
    if meta is None and as_of is None:
        raise WenlvError(f"{data_dir} has no meta.json: pass the scoring date (--as-of)")
    split = as_of or date.fromisoformat(meta["split_date"])
    visits = pf.tourism_visits(data_dir)
    data = propensity.build_data(data_dir, split, visits, with_label=False,
                                 key=key or alignment.carrier_token_key())
    tokens = data.tokens
    if uplift_from is not None:
        engine, earlier = uplift_from
        model, learnt = uplift_targeting.fit(data, tokens, uplift_targeting.campaign_outcomes(engine, earlier), seed)
        scores = model.uplift(data)
        version = f"uplift@{split}<campaign {earlier['id']}"
        info = {"scored_as_of": str(split), "ranked_by": "predicted uplift", **learnt}
    else:
        model = propensity.train(propensity.build_data(data_dir, propensity.cut_date(split), visits), seed=seed,
                                 progress=progress)
        scores = model.score(data)
        version = f"propensity@{split}"
        info = {"scored_as_of": str(split), "trained_on": f"{propensity.cut_date(split)}..{split}", **model.params}
    return targets.from_propensity(tokens, scores, data.has_internet, data.home_city, version), \
        targets.destination_query(), info


def from_bundle(campaign: dict, bundle_dir, features_dir,
                tracking_uri: str | None = None) -> tuple[targets.Candidates, targets.Query, dict]:
    """Affinity or lookalike over a bundle's user factors: the folder given, else the champion's."""
    if bundle_dir is not None:
        bundle, version = ModelBundle.load(bundle_dir), None
    else:
        bundle, version = registry.load_champion_bundle(tracking_uri)
    if features_dir is None or not Path(features_dir, "carrier", "users.parquet").exists():
        raise WenlvError("affinity and lookalike audiences need --features (the blocks the bundle was trained on) "
                         "for the channel consent")
    tokens = bundle.users["token"].astype(str).to_numpy()
    consent = targets.consent_from_blocks(features_dir, tokens)
    city = targets.home_city_from_blocks(features_dir, tokens) if campaign["region"] is not None else None
    kind, target = campaign["target_kind"], campaign["target"]
    version = str(version) if version is not None else None
    info = {"model_version": version or str(bundle_dir)}
    if kind == "lookalike":
        candidates = targets.from_bundle(bundle, consent, version, unit=True, home_city=city)
        return candidates, targets.lookalike_query(candidates, target["seed_tokens"]), info
    candidates = targets.from_bundle(bundle, consent, version, home_city=city)
    return candidates, targets.affinity_query(bundle, target.get("poi_ids"), target.get("category")), info


def for_campaign(campaign: dict, *, data_dir=None, bundle_dir=None, features_dir=None, seed: int = 0,
                 progress: bool = False, engine: Engine | None = None, key: bytes | None = None):
    if campaign["target_kind"] == "destination":
        if data_dir is None:
            raise WenlvError("a destination campaign needs --data (the parties' raw folders)")
        earlier = None
        if campaign["target"].get("uplift_from") is not None:
            earlier = store.get(engine, campaign["tenant"], campaign["target"]["uplift_from"])
            if earlier is None:
                raise WenlvError(f"uplift_from: campaign {campaign['target']['uplift_from']} not found for tenant "
                                 f"{campaign['tenant']}")
        return destination(data_dir, seed=seed, progress=progress, key=key,
                           uplift_from=(engine, earlier) if earlier is not None else None)
    return from_bundle(campaign, bundle_dir, features_dir)  # no --bundle: the registry's champion
