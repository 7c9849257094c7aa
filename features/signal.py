"""How much each party's raw data says about who becomes a tourist: ROC AUC of simple
pre-split signals for the prospects in the truth (synthetic data only).

Among people with no visit before the split (the people a prospect campaign is about),
each signal ranks who visits in the test window. 0.5 = no information. This is a sanity
check of the generator, not a model: the models measure data value properly (Shapley).
"""
from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd

from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.errors import WenlvError

TRAVEL_TOPICS = {"scenery", "hiking", "museum", "history", "shopping", "theme_park", "family", "hotel_deals",
                 "food", "nightlife", "music", "travel_guides", "train_tickets"}


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC by the rank-sum (Mann–Whitney) formula, ties counted half."""
    labels = np.asarray(labels, dtype=bool)
    ranks = pd.Series(np.asarray(scores, dtype=float)).rank(method="average").to_numpy()
    pos, neg = labels.sum(), (~labels).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def prospect_signal(data_dir) -> dict:
    meta = io.read_meta(data_dir)
    if meta is None or not (io.table_path(data_dir, C.TRUTH_PEOPLE)).exists():
        raise WenlvError(f"{data_dir} has no meta.json or truth/: prospect signal needs generated data")
    split = pd.Timestamp(meta["split_date"])
    people = io.read_pandas(data_dir, C.TRUTH_PEOPLE, ["phone", "home_distance_km", "is_prospect"])
    visitors = io.read_pandas(data_dir, C.VISITORS, ["visitor_id", "phone"])
    visits = io.read_pandas(data_dir, C.VISITS, ["visitor_id", "arrived_at"]).merge(visitors, on="visitor_id")
    pre = set(visits.phone[visits.arrived_at < split])
    cand = people[~people.phone.isin(pre)]
    subs = io.read_pandas(data_dir, C.SUBSCRIBERS, ["phone"])
    presence = io.read_pandas(data_dir, C.PRESENCE, ["phone", "date"])
    presence = presence[pd.to_datetime(presence.date) < split]
    accounts = io.read_pandas(data_dir, C.ACCOUNTS, ["account_id", "phone"])
    eng = io.read_pandas(data_dir, C.ENGAGEMENT).merge(accounts, on="account_id")
    eng_date = pd.to_datetime(eng.date)
    recent = eng[(eng_date < split) & (eng_date >= split - timedelta(days=28)) & eng.topic.isin(TRAVEL_TOPICS)]

    c_sub = cand[cand.phone.isin(set(subs.phone))]
    c_acc = cand[cand.phone.isin(set(accounts.phone))]
    days_seen = presence.groupby("phone").date.nunique()
    travel = recent.groupby("phone").events.sum()
    return {
        "split_date": meta["split_date"],
        "people_without_history": int(len(cand)),
        "prospects": int(cand.is_prospect.sum()),
        "base_rate": round(float(cand.is_prospect.mean()), 4),
        "auc": {
            "carrier_home_distance": round(auc(c_sub.is_prospect, -c_sub.home_distance_km), 3),
            "carrier_days_present_before_split": round(auc(c_sub.is_prospect, c_sub.phone.map(days_seen).fillna(0)), 3),
            "internet_travel_events_last_28_days": round(auc(c_acc.is_prospect, c_acc.phone.map(travel).fillna(0)), 3),
        },
        "note": "home distance here is the truth's; the carrier holds it as the subscriber's inferred home city",
    }
