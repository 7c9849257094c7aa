"""Ranking by the campaign's predicted effect, learnt from an earlier campaign's treatment and holdout.

A finished campaign is a randomised experiment on its audience: treatment and holdout differ
only by the contact. Its outcomes come from the ledger by the ledger's attribution rule — a
person's bookings for the tenant in [starts_on, ends_on + 7 days], whatever the campaign_id
field says. The S-learner is fitted on the members' features
(treated or not, booked or not) and then scores every candidate by predicted uplift. The model
is the propensity's split network with the arm as an input of the coordinator's top network
(`propensity.train(..., treated=...)`), so the parties' features still cross only as masked sums.
"""
from __future__ import annotations

from datetime import datetime, time, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select

from wenlv.db.schema import events
from wenlv.errors import WenlvError
from wenlv.marketing import audience, holdout, propensity

ATTRIBUTION_DAYS = 7
MIN_PER_ARM = 50


def campaign_outcomes(engine: Engine, campaign: dict) -> pd.DataFrame:
    """token, treated (bool), booked (bool), revenue_cny per member of `campaign`."""
    members = pd.DataFrame(audience.members(engine, campaign["id"]))
    if members.empty:
        raise WenlvError(f"campaign {campaign['id']} has no audience to learn from")
    start = datetime.combine(campaign["starts_on"], time(0, 0), tzinfo=timezone.utc)
    end = datetime.combine(campaign["ends_on"] + timedelta(days=ATTRIBUTION_DAYS + 1), time(0, 0), tzinfo=timezone.utc)
    with engine.connect() as c:
        rows = c.execute(select(events.c.token, events.c.amount_cny).where(
            events.c.tenant == campaign["tenant"], events.c.kind == "booking",
            events.c.occurred_at >= start, events.c.occurred_at < end)).all()
    bookings = pd.DataFrame(rows, columns=["token", "amount_cny"])
    revenue = bookings.assign(amount_cny=bookings.amount_cny.astype(float)).groupby("token").amount_cny.sum()
    return pd.DataFrame({"token": members.token, "treated": (members.arm == holdout.TREATMENT).to_numpy(),
                         "booked": members.token.isin(revenue.index).to_numpy(),
                         "revenue_cny": members.token.map(revenue).fillna(0.0).to_numpy()})


def fit(data: propensity.PropensityData, tokens: np.ndarray, outcomes: pd.DataFrame,
        seed: int = 0) -> tuple[propensity.PropensityModel, dict]:
    """Fit on the earlier members found among `tokens` (rows of `data`); refuses a thin experiment."""
    row_of = pd.Series(np.arange(len(tokens)), index=pd.Index(tokens))
    known = outcomes[outcomes.token.isin(row_of.index)]
    arms = {"treatment": int(known.treated.sum()), "holdout": int((~known.treated).sum())}
    if min(arms.values()) < MIN_PER_ARM:
        raise WenlvError(f"an uplift model needs at least {MIN_PER_ARM} people in each arm of the earlier campaign "
                         f"among today's candidates; found {arms}")
    members = propensity.subset(data, row_of[known.token].to_numpy(), known.booked.to_numpy())
    model = propensity.train(members, seed=seed, treated=known.treated.to_numpy(np.float32))
    rates = {"treatment_booking_rate": round(float(known.booked[known.treated].mean()), 4),
             "holdout_booking_rate": round(float(known.booked[~known.treated].mean()), 4)}
    return model, {"learnt_from_members": int(len(known)), **{f"{k}_members": v for k, v in arms.items()}, **rates}
