"""Simulated delivery (`wenlv campaign simulate`): the truth decides who comes, the ledger records it.

Everyone in the audience visits "naturally" exactly when the synthetic truth says they
visit in the test window, spending what their test-window visits cost. A treated person
who would not have come converts with probability `truth/people.campaign_response` (the
true uplift), spending an amount drawn from the natural visitors' spends. Holdout people
get no effect. Every treated person is delivered: one `impression` event with the campaign id
at the contact time (the delivery receipt the frequency caps count, see `caps`). Bookings (with CNY amounts) and visits go to the ledger through
`ledger.events.record_events`, dated inside the campaign; treated people's bookings carry
the campaign id, the holdout's none (never contacted). The extra conversions are the true
incremental revenue, which the attribution estimator should recover.
"""
from __future__ import annotations

import logging
from datetime import datetime, time, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Engine

from wenlv.errors import WenlvError
from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.ledger.events import MAX_BATCH, record_events
from wenlv.marketing import alignment, audience, caps, holdout
from wenlv.marketing import campaigns as store
from wenlv.marketing import party_features as pf

log = logging.getLogger(__name__)
LOCAL = timezone(timedelta(hours=8))


def simulate_delivery(engine: Engine, campaign_id: int, data_dir, seed: int, key: bytes | None = None) -> dict:
    campaign = store.get_any(engine, campaign_id)
    if campaign is None:
        raise WenlvError(f"campaign {campaign_id} not found")
    rows = audience.members(engine, campaign_id)
    if not rows:
        raise WenlvError(f"campaign {campaign_id} has no audience; compute it first")
    meta = io.read_meta(data_dir)
    if meta is None or not io.table_path(data_dir, C.TRUTH_PEOPLE).exists():
        raise WenlvError(f"{data_dir} has no truth/: the simulator needs generated data")
    people = io.read_pandas(data_dir, C.TRUTH_PEOPLE, ["phone", "campaign_response"])
    # The world, and the carrier delivering the campaign: it resolves its own user tokens.
    people["token"] = alignment.carrier_tokens(people.phone, key or alignment.carrier_token_key())
    members = pd.DataFrame(rows)[["token", "arm"]].merge(people, on="token", how="left")
    unknown = int(members.phone.isna().sum())
    if unknown:
        raise WenlvError(f"{unknown} of {len(members)} audience tokens are not people of {data_dir} under this "
                         f"carrier token key: only audiences built from this data (target destination) can be simulated")
    split = pd.Timestamp(meta["split_date"])
    visits = pf.tourism_visits(data_dir)
    test = visits[visits.day >= split]
    natural_spend = test.groupby("phone").spend_cny.sum()
    members["natural"] = members.phone.isin(natural_spend.index)
    members["spend"] = members.phone.map(natural_spend).fillna(0.0)
    rng = np.random.default_rng(seed)
    treated = (members.arm == holdout.TREATMENT).to_numpy()
    draw = rng.random(len(members))
    extra = treated & ~members.natural.to_numpy() & (draw < members.campaign_response.to_numpy())
    pool = natural_spend.to_numpy() if len(natural_spend) else np.array([100.0])
    members.loc[extra, "spend"] = rng.choice(pool, size=int(extra.sum()))
    comes = members.natural.to_numpy() | extra
    span = (campaign["ends_on"] - campaign["starts_on"]).days + 1
    offsets = rng.integers(0, span, len(members))
    contacted = caps.contact_time(campaign["starts_on"]).isoformat()
    events = [{"event_id": f"sim-{campaign_id}-{seed}-{i}-d", "kind": caps.DELIVERY_KIND, "token": members.token.iat[i],
               "occurred_at": contacted, "campaign_id": campaign_id}
              for i in np.flatnonzero(treated)]  # the carrier's delivery receipts: what the frequency caps count
    for i in np.flatnonzero(comes):
        day = campaign["starts_on"] + timedelta(days=int(offsets[i]))
        at = datetime.combine(day, time(10, 0), tzinfo=LOCAL).isoformat()
        token = members.token.iat[i]
        base = f"sim-{campaign_id}-{seed}-{i}"
        events.append({"event_id": f"{base}-b", "kind": "booking", "token": token, "occurred_at": at,
                       "amount_cny": f"{members.spend.iat[i]:.2f}",
                       "campaign_id": campaign_id if treated[i] else None})
        events.append({"event_id": f"{base}-v", "kind": "visit", "token": token, "occurred_at": at})
    written = 0
    for start in range(0, len(events), MAX_BATCH):
        result = record_events(engine, campaign["tenant"], events[start:start + MAX_BATCH])
        if result.rejected:
            raise WenlvError(f"the ledger rejected simulated events: {result.rejected[:3]}")
        written += len(result.accepted)
    spend = members.spend.round(2).to_numpy()
    summary = {
        "campaign_id": campaign_id, "events_written": written, "treated": int(treated.sum()),
        "delivered": int(treated.sum()),
        "holdout": int((~treated).sum()),
        "true_incremental_visits": int(extra.sum()),
        "true_incremental_revenue_cny": round(float(spend[extra].sum()), 2),
        "treated_revenue_cny": round(float(spend[treated & comes].sum()), 2),
        "holdout_revenue_cny": round(float(spend[~treated & comes].sum()), 2),
        "treated_visit_rate": round(float(comes[treated].mean()), 4) if treated.any() else None,
        "holdout_visit_rate": round(float(comes[~treated].mean()), 4) if (~treated).any() else None,
    }
    log.info("campaign %s simulated: %d events", campaign_id, written)
    return summary
