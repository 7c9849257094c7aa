"""Returns in MLflow: what each model version earned, on its own run, and one run per data asset.

The attributed returns stored in the ledger (`attributed_returns`, all tenants: the model is
the operator's, shared by its tenants) are logged as metrics

* on the training run behind each registered version of `wenlv-recommender` that earned them:
  `attributed_returns_cny` and `attributed_returns_<source>_cny`;
* on one run per data asset (experiment `wenlv-data-assets`, found again by its tag
  `wenlv.asset`, so publishing twice adds a point to the same run, never a second run):
  returns, cost, capitalised, amortised, carrying (= the cost-approach value), income value, ROI.

Each publication logs at step = the valuation date's ordinal, so the metric history is the
asset's value over time. Versions that are not registered (e.g. `propensity@DATE`) are skipped
and reported.
"""
from __future__ import annotations

import time
from collections import defaultdict
from datetime import date

from sqlalchemy import Engine, func, select

from wenlv.db.schema import SOURCES, attributed_returns, data_assets
from wenlv.ledger import assets
from wenlv.training import registry, tracking

ASSET_EXPERIMENT = "wenlv-data-assets"
ASSET_TAG = "wenlv.asset"
ASSET_METRICS = ("attributed_returns_cny", "cost_cny", "capitalised_cny", "expensed_cny", "amortised_cny",
                 "carrying_cny", "roi")


def version_returns(engine: Engine) -> dict[str, dict[str, float]]:
    """{model version: {source: CNY}} over every tenant's stored returns."""
    query = (select(attributed_returns.c.model_version, attributed_returns.c.source,
                    func.sum(attributed_returns.c.amount_cny))
             .where(attributed_returns.c.model_version.is_not(None))
             .group_by(attributed_returns.c.model_version, attributed_returns.c.source))
    out: dict[str, dict[str, float]] = defaultdict(lambda: {s: 0.0 for s in SOURCES})
    with engine.connect() as c:
        for version, source, amount in c.execute(query).all():
            out[str(version)][source] = float(amount or 0)
    return dict(out)


def publish(engine: Engine, tracking_uri: str | None = None, as_of: date | None = None) -> dict:
    from mlflow.entities import Metric  # lazy: MLflow loads only for the command that logs
    from mlflow.exceptions import MlflowException

    as_of = as_of or date.today()
    step, now = as_of.toordinal(), int(time.time() * 1000)
    c = tracking.client(tracking_uri)
    versions, skipped = {}, []
    for version, by_source in sorted(version_returns(engine).items()):
        try:
            run_id = c.get_model_version(registry.MODEL_NAME, str(int(version))).run_id
        except (ValueError, MlflowException):
            skipped.append(version)
            continue
        metrics = {"attributed_returns_cny": round(sum(by_source.values()), 2),
                   **{f"attributed_returns_{s}_cny": round(v, 2) for s, v in by_source.items()}}
        c.log_batch(run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])
        versions[version] = {"run_id": run_id, **metrics}

    with engine.connect() as conn:
        tenants = sorted(conn.execute(select(data_assets.c.tenant).distinct()).scalars())
    experiment = tracking.experiment_id(c, ASSET_EXPERIMENT)
    asset_runs = {}
    for tenant in tenants:
        for a in assets.register(engine, tenant, as_of=as_of):
            tag = f"{tenant}:{a['id']}"
            found = c.search_runs([experiment], filter_string=f"tags.`{ASSET_TAG}` = '{tag}'", max_results=1)
            if found:
                run_id = found[0].info.run_id
            else:
                run = c.create_run(experiment, run_name=f"{tenant} · {a['name']}",
                                   tags={ASSET_TAG: tag, "wenlv.tenant": tenant, "wenlv.source": a["source"],
                                         "wenlv.holding": a["holding"]})
                run_id = run.info.run_id
                c.log_param(run_id, "useful_life_months", a["useful_life_months"])
                c.log_param(run_id, "available_on", a["available_on"])
                c.set_terminated(run_id, "FINISHED")
            metrics = {k: a[k] for k in ASSET_METRICS if a[k] is not None}
            metrics["value_income_cny"] = a["value"]["income"]
            metrics["value_cost_cny"] = a["value"]["cost"]
            c.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])
            asset_runs[tag] = {"run_id": run_id, **metrics}
    return {"tracking_uri": c.tracking_uri, "as_of": as_of.isoformat(), "versions": versions,
            "skipped_versions": skipped, "assets": asset_runs}
