"""Demo stage `campaign`: a destination campaign on the demo data, judged by the synthetic truth.

The federated propensity is trained on the earlier window and scores everyone without
tourism history as of the split; the audience goes through consent, caps and the seeded
holdout into the demo's own SQLite database; the simulator then delivers it and books the
responses in the ledger. Precision = share of the audience that really visits in the test
window (truth), beside a random audience and the best single-party signal at the same size.
The demo data is small, so the demo tenant's minimum audience is set to half the audience
(the product default, 1,000, is for real campaigns) — reported as `min_audience_size`.
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np

from wenlv.db import engine as db_engine
from wenlv.marketing import audience, prospects, targets
from wenlv.marketing import campaigns as store
from wenlv.marketing.simulate import simulate_delivery

TENANT = "demo"
AUDIENCE_SHARE = 0.2


def run(ctx) -> dict:
    data_dir = ctx.results["data"]["_paths"]["data_dir"]
    evaluation = prospects.evaluate(data_dir, seed=ctx.seed, reps=100, progress=ctx.progress)
    model, data, label = evaluation["_model"], evaluation["_test_data"], evaluation["_label"]
    key = evaluation["_carrier_token_key"]  # the run's own: nothing outside this demo can link its tokens
    tokens = data.tokens
    candidates = targets.from_propensity(tokens, model.score(data), data.has_internet, data.home_city,
                                         f"propensity@{data.as_of}")
    engine = db_engine.make_engine(f"sqlite:///{ctx.workdir / 'campaigns.sqlite'}")
    db_engine.migrate(engine)
    size = max(20, int(AUDIENCE_SHARE * len(tokens)))
    store.set_min_audience_size(engine, TENANT, size // 2)
    starts = data.as_of + timedelta(days=1)
    spec = store.CampaignSpec(name="destination, no-history prospects", target_kind="destination", channel="sms",
                              audience_size=size, starts_on=starts, ends_on=starts + timedelta(days=20))
    campaign = store.create(engine, TENANT, spec)
    built = audience.compute(engine, campaign, candidates, targets.destination_query())
    chosen = {m["token"] for m in audience.members(engine, campaign["id"])}
    in_audience = np.isin(tokens, np.fromiter(chosen, dtype=object))
    share = len(chosen) / len(tokens)
    singles = {name: float(label[prospects.top_mask(data.signals[name].to_numpy(float), share)].mean())
               for name in data.signals.columns}
    best = max(singles, key=singles.get)
    delivered = simulate_delivery(engine, campaign["id"], data_dir, seed=ctx.seed, key=key)
    engine.dispose()
    ctx.log(f"campaign: {built['audience_size']} people ({built['holdout_size']} holdout), precision "
            f"{label[in_audience].mean():.3f} vs random {label.mean():.3f}")
    return {
        "campaign_id": campaign["id"],
        "audience_size": built["audience_size"],
        "holdout_size": built["holdout_size"],
        "prospect_share": built["prospect_share"],
        "audience_precision": round(float(label[in_audience].mean()), 4),
        "random_precision": round(float(label.mean()), 4),
        "baseline_precision": round(singles[best], 4),
        "baseline": best,
        "min_audience_size": size // 2,
        "top5_lift_vs_random": evaluation["lift_vs_random"],
        "top5_lift_vs_random_95ci": evaluation["lift_vs_random_95ci"],
        "top5_lift_vs_combined_baseline": evaluation["lift_vs_combined_baseline"],
        "true_incremental_revenue_cny": delivered["true_incremental_revenue_cny"],
        "true_incremental_visits": delivered["true_incremental_visits"],
        "events_written": delivered["events_written"],
    }
