"""Returns by data source: each model version's incremental revenue split by its Shapley values.

Training stores, per model version, the Shapley split of the offline lift of {carrier,
internet} over the tourism-only model (`training.shapley`: run metrics `shapley_carrier`,
`shapley_internet`, `shapley_total_lift` beside the metric itself, default NDCG@10). The
model's whole value v(all) = v(tourism only) + φ_carrier + φ_internet, so the weights are

    tourism = v(tourism only),  carrier = φ_carrier,  internet = φ_internet   (sum: v(all))

and a source's share of an amount is amount × weight / v(all). A source whose Shapley value
is negative (its data made the model worse) gets a negative share; nothing is clipped, so
the shares always add up to the whole. Amounts are split in fen by largest remainders: the
shares sum to the amount exactly.

A campaign scored outside the registry (its `model_version` is not a registered version, e.g.
the demo's `propensity@DATE`) is split by a stated fallback version (the champion), and the
result says so.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone
from decimal import Decimal

from sqlalchemy import Engine, delete, insert

from wenlv.db.schema import SOURCES, attributed_returns
from wenlv.errors import WenlvError
from wenlv.ledger import attribution

log = logging.getLogger(__name__)
FEN = Decimal("0.01")


def split_fen(amount, weights: dict[str, float]) -> dict[str, Decimal]:
    """`amount` (CNY) divided by `weights` in whole fen; the parts sum to the amount rounded to fen."""
    total_weight = sum(weights.values())
    if not weights or abs(total_weight) < 1e-12:
        raise WenlvError(f"cannot split by weights that sum to zero: {weights}")
    fen = int((Decimal(str(amount)) / FEN).to_integral_value())
    exact = {k: Decimal(fen) * Decimal(repr(float(w))) / Decimal(repr(float(total_weight))) for k, w in weights.items()}
    floors = {k: int(v.to_integral_value(rounding="ROUND_FLOOR")) for k, v in exact.items()}
    left = fen - sum(floors.values())
    for k in sorted(exact, key=lambda k: (exact[k] - floors[k], k), reverse=True)[:left]:
        floors[k] += 1
    return {k: Decimal(v) * FEN for k, v in floors.items()}


def weights_from_metrics(metrics: dict, params: dict | None = None) -> dict[str, float] | None:
    """Source weights from a training run's metrics (None: the run has no Shapley split)."""
    if not {"shapley_carrier", "shapley_internet", "shapley_total_lift"} <= set(metrics):
        return None
    k = (params or {}).get("k", "10")
    whole = metrics.get(f"ndcg@{k}")
    if whole is None:
        return None
    return {"tourism": float(whole) - float(metrics["shapley_total_lift"]),
            "carrier": float(metrics["shapley_carrier"]), "internet": float(metrics["shapley_internet"])}


def version_weights(version: str | int, tracking_uri: str | None = None) -> dict[str, float] | None:
    """The split stored with a registered model version; None if the version is unknown or has none."""
    from mlflow.exceptions import MlflowException  # lazy: keep MLflow out of API start-up

    from wenlv.training import registry, tracking

    try:
        number = int(version)
    except (TypeError, ValueError):
        return None
    c = tracking.client(tracking_uri)
    try:
        run_id = c.get_model_version(registry.MODEL_NAME, str(number)).run_id
        run = c.get_run(run_id)
    except MlflowException:
        return None
    return weights_from_metrics(tracking.run_metrics(c, run_id), run.data.params)


def attribute(engine: Engine, tenant: str, options: attribution.Options, splits: dict[str, dict],
              fallback_version: str | None = None, now: datetime | None = None) -> dict:
    """Daily incremental revenue of every campaign and surface, split by source, stored in `attributed_returns`.

    `splits`: model version -> source weights. The tenant's earlier rows are replaced in the same
    transaction (a recomputation, never a double count). Returns totals and what was split by what.
    """
    rows, used, unsplit = [], {}, []
    computed = now or datetime.now(timezone.utc)

    def credit(daily: dict, campaign_id, version, label: str) -> None:
        chosen = version if version in splits else fallback_version
        if chosen not in splits:
            unsplit.append(label)
            return
        used[label] = chosen
        for day, amount in sorted(daily.items()):
            for source, share in split_fen(amount, splits[chosen]).items():
                rows.append({"tenant": tenant, "day": day, "campaign_id": campaign_id, "model_version": version,
                             "source": source, "amount_cny": share, "computed_at": computed})

    for result in attribution.campaign_effects(engine, tenant, options):
        credit(result.daily, result.campaign_id, result.model_version, f"campaign {result.campaign_id}")
    for result in attribution.surface_effects(engine, tenant, options):
        credit(result.daily, None, result.model_version, f"model version {result.model_version}")
    with engine.begin() as c:
        c.execute(delete(attributed_returns).where(attributed_returns.c.tenant == tenant))
        if rows:
            c.execute(insert(attributed_returns), rows)
    if unsplit:
        log.warning("no data-source split for %s (no Shapley values stored and no fallback version)", ", ".join(unsplit))
    by_source = {s: sum((r["amount_cny"] for r in rows if r["source"] == s), Decimal(0)) for s in SOURCES}
    return {"rows": len(rows), "split_by": used, "unsplit": unsplit,
            "by_source": {s: float(v) for s, v in by_source.items()},
            "total": float(sum(by_source.values(), Decimal(0)))}


def attribute_from_registry(engine: Engine, tenant: str, tracking_uri: str | None, fallback_version: str | None,
                            window_days: int | None = None) -> dict:
    """Attribution, then the returns split by the Shapley values of every version involved (from MLflow)."""
    from wenlv.training import registry  # lazy: MLflow stays out of the API's start-up

    options = attribution.Options.from_settings(window_days=window_days)
    versions = {r.model_version for r in attribution.campaign_effects(engine, tenant, options)}
    versions |= {r.model_version for r in attribution.surface_effects(engine, tenant, options)}
    if fallback_version is None:
        champion = registry.champion_version(tracking_uri)
        fallback_version = None if champion is None else str(champion)
    versions.add(fallback_version)
    splits = {}
    for v in sorted(x for x in versions if x is not None):
        found = version_weights(v, tracking_uri)
        if found is not None:
            splits[v] = found
    out = attribute(engine, tenant, options, splits, fallback_version)
    return {**out, "fallback_version": fallback_version, "splits": splits}
