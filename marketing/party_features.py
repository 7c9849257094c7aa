"""Each party's propensity features as of a date, computed from its own folder only.

The feature blocks hold training-window totals (no dates), but a destination propensity
must be fitted on an earlier window (signals before a cut, labels after it) and scored
at the split, so it needs the same features "as of" any date. Each function here reads
one party's raw tables and nothing else — the step each party's own job would run — and
returns one row per person of that party, keyed by phone. The phone stays inside the
party: `alignment` (PSI through the carrier hub) gives each row its user token, and rows
are joined on tokens only.
"""
from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from wenlv.features import contracts as C
from wenlv.features import io, world
from wenlv.features.signal import TRAVEL_TOPICS

# Topics people read in the weeks before a trip (the generator's planning ramp shows here).
PLANNING_TOPICS = ("hotel_deals", "train_tickets", "travel_guides")
CARRIER_WINDOWS = (7, 28, 91, 365)
INTERNET_WINDOWS = (7, 14, 28, 91)
NEVER_DAYS = 730.0  # "days since" for someone never seen


def _days_before(dates: pd.Series, as_of: date) -> np.ndarray:
    return (pd.Timestamp(as_of) - pd.to_datetime(dates)).dt.days.to_numpy()


def carrier_features(data_dir, as_of: date) -> pd.DataFrame:
    """Consenting subscribers: home distance, days present in the destination per window, recency, ARPU, age."""
    subs = io.read_pandas(data_dir, C.SUBSCRIBERS, ["phone", "home_city", "age_band", "arpu_tier",
                                                    "consent_partner_share"])
    subs = subs[subs.consent_partner_share].drop(columns="consent_partner_share")
    cities = world.home_cities().set_index("city")["distance_km"]
    distance = subs.home_city.map(cities)
    out = pd.DataFrame({"phone": subs.phone.to_numpy(), "home_city": subs.home_city.to_numpy(),
                        "log_home_distance": np.log1p(distance.fillna(distance.median()).to_numpy()),
                        "arpu_tier": subs.arpu_tier.to_numpy(np.float64)})
    for band in C.AGE_BANDS:
        out[f"age_{band}"] = (subs.age_band == band).to_numpy(np.float64)
    presence = io.read_pandas(data_dir, C.PRESENCE, ["phone", "date", "area_id"])
    before = _days_before(presence.date, as_of)
    presence = presence.assign(before=before)[(before >= 1)]
    grouped = presence.drop_duplicates(["phone", "date"])
    for days in CARRIER_WINDOWS:
        counts = grouped[grouped.before <= days].groupby("phone").size()
        out[f"days_present_{days}"] = np.log1p(out.phone.map(counts).fillna(0).to_numpy())
    out["days_present_all"] = np.log1p(out.phone.map(grouped.groupby("phone").size()).fillna(0).to_numpy())
    last = grouped.groupby("phone").before.min()
    out["log_days_since_present"] = np.log1p(out.phone.map(last).fillna(NEVER_DAYS).to_numpy())
    out["log_areas"] = np.log1p(out.phone.map(presence.groupby("phone").area_id.nunique()).fillna(0).to_numpy())
    return out


def internet_features(data_dir, as_of: date) -> pd.DataFrame:
    """Consenting accounts: travel-topic and planning-topic events per window, share of travel, recency."""
    accounts = io.read_pandas(data_dir, C.ACCOUNTS, ["account_id", "phone", "consent_ads"])
    accounts = accounts[accounts.consent_ads]
    eng = io.read_pandas(data_dir, C.ENGAGEMENT, ["account_id", "topic", "date", "events"])
    before = _days_before(eng.date, as_of)
    eng = eng.assign(before=before)[(before >= 1) & (before <= max(INTERNET_WINDOWS))]
    eng = eng.merge(accounts[["account_id", "phone"]], on="account_id")
    travel = eng[eng.topic.isin(TRAVEL_TOPICS)]
    planning = eng[eng.topic.isin(PLANNING_TOPICS)]
    out = pd.DataFrame({"phone": accounts.phone.to_numpy()})
    for days in INTERNET_WINDOWS:
        counts = travel[travel.before <= days].groupby("phone").events.sum()
        out[f"travel_events_{days}"] = np.log1p(out.phone.map(counts).fillna(0).to_numpy())
        counts = planning[planning.before <= days].groupby("phone").events.sum()
        out[f"planning_events_{days}"] = np.log1p(out.phone.map(counts).fillna(0).to_numpy())
    total = eng[eng.before <= 28].groupby("phone").events.sum()
    out["all_events_28"] = np.log1p(out.phone.map(total).fillna(0).to_numpy())
    share = travel.groupby("phone").events.sum() / eng.groupby("phone").events.sum()
    out["travel_share_91"] = out.phone.map(share).fillna(0).to_numpy()
    last = travel.groupby("phone").before.min()
    out["log_days_since_travel"] = np.log1p(out.phone.map(last).fillna(NEVER_DAYS).to_numpy())
    return out


def tourism_visits(data_dir) -> pd.DataFrame:
    """The tourism party's visits with the visitor's phone and the visit date (labels and history)."""
    visitors = io.read_pandas(data_dir, C.VISITORS, ["visitor_id", "phone"])
    visits = io.read_pandas(data_dir, C.VISITS, ["visitor_id", "arrived_at", "spend_cny"]).merge(visitors, on="visitor_id")
    return visits.assign(day=pd.to_datetime(visits.arrived_at).dt.normalize())


def visited_between(visits: pd.DataFrame, start: date, end: date) -> set:
    """The user tokens (visits aligned by PSI) of everyone with a visit on a day in [start, end)."""
    day = visits.day
    return set(visits.token[(day >= pd.Timestamp(start)) & (day < pd.Timestamp(end))])
