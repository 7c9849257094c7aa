"""Attribution: incremental revenue from the random holdouts, last-touch revenue beside it.

Causal (what the finance department signs):
* a campaign's people are its audience (`audience_members`, arms treatment and holdout); a
  person's outcome is their revenue (booking and visit amounts) and visit count from the
  campaign's first day to `window` days after its last, whatever the events say exposed them
  (the holdout was never contacted, so its events carry no campaign id);
* a recommendation surface's people are the visitors served lists by a model version
  (`served_lists`; the persistent holdout gets the non-personalised list, its row still names
  the version in service); a person's outcome counts events within `window` days after any
  list of that version was served to them.
Both go through `estimators.incremental`: (mean treated − mean holdout) × treated count,
with a 95% interval (bootstrap over persons, or the delta method; the `method` field says
which). Daily increments (Σ_T day − n_T/n_H · Σ_H day) add up to the total.

Associative (labelled so): last-touch revenue credits each amount to the latest exposure the
event names (its campaign: the last planned contact, else the campaign start; its
recommendation: the time the list was served) within `window` days before it. It counts
people who would have come anyway and is shown only beside the causal figure.

Every query takes the tenant: another tenant's campaigns, lists and events are never read.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime, time, timedelta, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Date, Engine, and_, case, cast, func, or_, select

from wenlv.db.schema import audience_members, campaigns, contacts, events, served_lists
from wenlv.ledger.estimators import Effect, incremental
from wenlv.settings import get_settings

OUTCOME_KINDS = ("booking", "visit")


@dataclass(frozen=True)
class Options:
    """Window, date filter and interval method of one attribution."""

    window_days: int = 7
    date_from: date | None = None
    date_to: date | None = None
    method: str = "bootstrap"
    reps: int = 1000
    seed: int = 0

    @classmethod
    def from_settings(cls, **over) -> "Options":
        s = get_settings()
        base = {"window_days": s.ledger_window_days, "method": s.ledger_interval, "reps": s.ledger_bootstrap_reps}
        return cls(**{**base, **{k: v for k, v in over.items() if v is not None}})

    def clip(self, start: datetime, end: datetime) -> tuple[datetime, datetime]:
        """[start, end) narrowed to the date filter (whole UTC days)."""
        if self.date_from is not None:
            start = max(start, _day_start(self.date_from))
        if self.date_to is not None:
            end = min(end, _day_start(self.date_to + timedelta(days=1)))
        return start, end


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


def utc(series: pd.Series) -> pd.Series:
    """Timestamps as UTC (SQLite returns naive UTC, PostgreSQL aware)."""
    out = pd.to_datetime(series)
    return out.dt.tz_localize("UTC") if out.dt.tz is None else out.dt.tz_convert("UTC")


def _money(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").fillna(0.0).astype(float)


# --------------------------------------------------------------------------- campaigns
@dataclass(frozen=True)
class CampaignResult:
    campaign_id: int
    name: str
    model_version: str | None
    revenue: Effect
    visits: Effect
    daily: dict  # day (date) -> incremental revenue that day

    def as_dict(self) -> dict:
        return {"campaign_id": self.campaign_id, "name": self.name, "model_version": self.model_version,
                "revenue": asdict(self.revenue), "visits": asdict(self.visits),
                "daily": {d.isoformat(): v for d, v in self.daily.items()}}


def tenant_campaigns(engine: Engine, tenant: str, campaign_id: int | None = None) -> list[dict]:
    query = select(campaigns.c.id, campaigns.c.name, campaigns.c.model_version, campaigns.c.starts_on,
                   campaigns.c.ends_on).where(campaigns.c.tenant == tenant).order_by(campaigns.c.id)
    if campaign_id is not None:
        query = query.where(campaigns.c.id == campaign_id)
    with engine.connect() as c:
        return [dict(r) for r in c.execute(query).mappings()]


def campaign_outcomes(engine: Engine, tenant: str, campaign: dict, options: Options) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(one row per audience member: token, arm, revenue, visits; the outcome events: token, arm, day, amount)."""
    start = _day_start(campaign["starts_on"])
    end = _day_start(campaign["ends_on"] + timedelta(days=1 + options.window_days))
    start, end = options.clip(start, end)
    with engine.connect() as c:
        members = pd.DataFrame(c.execute(select(audience_members.c.token, audience_members.c.arm)
                                         .where(audience_members.c.campaign_id == campaign["id"])).all(),
                               columns=["token", "arm"])
        rows = c.execute(
            select(events.c.token, audience_members.c.arm, events.c.kind, events.c.amount_cny, events.c.occurred_at)
            .join(audience_members, and_(audience_members.c.token == events.c.token,
                                         audience_members.c.campaign_id == campaign["id"]))
            .where(events.c.tenant == tenant, events.c.kind.in_(OUTCOME_KINDS),
                   events.c.occurred_at >= start, events.c.occurred_at < end)).all() if start < end else []
    found = pd.DataFrame(rows, columns=["token", "arm", "kind", "amount", "occurred_at"])
    found["amount"] = _money(found.amount)
    found["visit"] = (found.kind == "visit").astype(int)
    found["day"] = utc(found.occurred_at).dt.date if len(found) else pd.Series(dtype=object)
    per_person = found.groupby("token").agg(revenue=("amount", "sum"), visits=("visit", "sum"))
    members = members.join(per_person, on="token").fillna({"revenue": 0.0, "visits": 0})
    return members, found


def _arm_effects(members: pd.DataFrame, found: pd.DataFrame, options: Options, seed: int) -> tuple[Effect, Effect, dict]:
    t, h = members[members.arm == "treatment"], members[members.arm == "holdout"]
    kw = {"method": options.method, "reps": options.reps, "seed": seed}
    revenue = incremental(t.revenue.to_numpy(), h.revenue.to_numpy(), **kw)
    visits = incremental(t.visits.to_numpy(float), h.visits.to_numpy(float), **kw)
    daily = {}
    if len(t) and len(h) and len(found):
        by_day = found.groupby(["day", "arm"]).amount.sum().unstack(fill_value=0.0)
        for arm in ("treatment", "holdout"):
            if arm not in by_day:
                by_day[arm] = 0.0
        daily = {d: float(row.treatment - len(t) / len(h) * row.holdout) for d, row in by_day.iterrows()}
    return revenue, visits, daily


def campaign_effects(engine: Engine, tenant: str, options: Options, campaign_id: int | None = None) -> list[CampaignResult]:
    out = []
    for campaign in tenant_campaigns(engine, tenant, campaign_id):
        members, found = campaign_outcomes(engine, tenant, campaign, options)
        revenue, visits, daily = _arm_effects(members, found, options, seed=options.seed + campaign["id"])
        out.append(CampaignResult(campaign["id"], campaign["name"], campaign["model_version"], revenue, visits, daily))
    return out


# --------------------------------------------------------------------------- recommendation surfaces
@dataclass(frozen=True)
class SurfaceResult:
    model_version: str
    revenue: Effect
    visits: Effect
    daily: dict

    def as_dict(self) -> dict:
        return {"model_version": self.model_version, "revenue": asdict(self.revenue), "visits": asdict(self.visits),
                "daily": {d.isoformat(): v for d, v in self.daily.items()}}


def _served(engine: Engine, tenant: str, model_version: str | None = None, *only) -> pd.DataFrame:
    query = (select(served_lists.c.recommendation_id, served_lists.c.token, served_lists.c.model_version,
                    served_lists.c.arm, served_lists.c.served_at).where(served_lists.c.tenant == tenant, *only))
    if model_version is not None:
        query = query.where(served_lists.c.model_version == model_version)
    with engine.connect() as c:
        frame = pd.DataFrame(c.execute(query).all(),
                             columns=["recommendation_id", "token", "model_version", "arm", "served_at"])
    frame["served_at"] = utc(frame.served_at) if len(frame) else pd.Series(dtype="datetime64[ns, UTC]")
    return frame


def _outcome_events(engine: Engine, tenant: str, start: datetime, end: datetime, *only) -> pd.DataFrame:
    """The tenant's events in [start, end) meeting the conditions `only`, filtered in the database."""
    with engine.connect() as c:
        rows = c.execute(select(events.c.event_id, events.c.token, events.c.kind, events.c.amount_cny,
                                events.c.occurred_at, events.c.campaign_id, events.c.recommendation_id)
                         .where(events.c.tenant == tenant, events.c.occurred_at >= start,
                                events.c.occurred_at < end, *only)).all() if start < end else []
    frame = pd.DataFrame(rows, columns=["event_id", "token", "kind", "amount", "occurred_at", "campaign_id",
                                        "recommendation_id"])
    frame["amount"] = _money(frame.amount)
    frame["occurred_at"] = utc(frame.occurred_at) if len(frame) else pd.Series(dtype="datetime64[ns, UTC]")
    return frame


def surface_effects(engine: Engine, tenant: str, options: Options, model_version: str | None = None) -> list[SurfaceResult]:
    served = _served(engine, tenant, model_version)
    served = served[served.model_version.notna()]
    if served.empty:
        return []
    window = pd.Timedelta(days=options.window_days)
    start, end = options.clip(served.served_at.min().to_pydatetime(), (served.served_at.max() + window).to_pydatetime())
    found = _outcome_events(engine, tenant, start, end, events.c.kind.in_(OUTCOME_KINDS))
    out = []
    for version, lists in served.groupby("model_version", sort=True):
        # A person's arm is that of their first list (the holdout is persistent per visitor).
        people = lists.sort_values("served_at").drop_duplicates("token")[["token", "arm"]]
        hits = found.merge(lists[["token", "served_at"]], on="token")
        hits = hits[(hits.occurred_at >= hits.served_at) & (hits.occurred_at < hits.served_at + window)]
        hits = hits.drop_duplicates("event_id").merge(people, on="token")
        hits["visit"] = (hits.kind == "visit").astype(int)
        hits["day"] = hits.occurred_at.dt.date
        per_person = hits.groupby("token").agg(revenue=("amount", "sum"), visits=("visit", "sum"))
        members = people.join(per_person, on="token").fillna({"revenue": 0.0, "visits": 0})
        revenue, visits, daily = _arm_effects(members, hits, options, seed=options.seed + _stable(version))
        out.append(SurfaceResult(str(version), revenue, visits, daily))
    return out


def _stable(text: str) -> int:
    return sum(ord(ch) * 31 ** i for i, ch in enumerate(text)) % 1_000_003


# --------------------------------------------------------------------------- last touch (associative)
def paid_and_tagged() -> tuple:
    """SQL conditions of the events last touch can credit: an amount, and a campaign or list that exposed it."""
    return events.c.amount_cny > 0, or_(events.c.campaign_id.is_not(None), events.c.recommendation_id.is_not(None))


def last_touch(engine: Engine, tenant: str, options: Options) -> dict:
    """{"campaigns": {campaign_id: CNY}, "model_versions": {version: CNY}} — associative, not causal."""
    far = (_day_start(date(1970, 1, 1)), _day_start(date(9999, 1, 1)))
    start, end = options.clip(*far)
    paid = paid_and_tagged()
    found = _outcome_events(engine, tenant, start, end, *paid)
    empty = {"campaigns": {}, "model_versions": {}}
    if found.empty:
        return empty
    window = pd.Timedelta(days=options.window_days)
    touches = []
    tagged = found[found.campaign_id.notna()].copy()
    if len(tagged):
        tagged["campaign_id"] = tagged.campaign_id.astype(int)
        touch = _campaign_touch_times(engine, tenant, tagged)
        touches.append(pd.DataFrame({"event_id": tagged.event_id, "amount": tagged.amount,
                                     "occurred_at": tagged.occurred_at, "touch_at": touch,
                                     "campaign_id": tagged.campaign_id, "model_version": None}))
    recs = found[found.recommendation_id.notna()]
    if len(recs):
        served = _served(engine, tenant, None, served_lists.c.arm == "treatment",  # a holdout list was not the model's
                         served_lists.c.recommendation_id.in_(select(events.c.recommendation_id).where(
                             events.c.tenant == tenant, events.c.occurred_at >= start, events.c.occurred_at < end,
                             *paid)))
        joined = recs.merge(served[["recommendation_id", "served_at", "model_version"]], on="recommendation_id")
        touches.append(pd.DataFrame({"event_id": joined.event_id, "amount": joined.amount,
                                     "occurred_at": joined.occurred_at, "touch_at": joined.served_at,
                                     "campaign_id": None, "model_version": joined.model_version}))
    if not touches:
        return empty
    every = pd.concat(touches, ignore_index=True)
    every = every[every.touch_at.notna() & (every.touch_at <= every.occurred_at)
                  & (every.occurred_at < every.touch_at + window)]
    latest = every.sort_values("touch_at").drop_duplicates("event_id", keep="last")
    by_campaign = latest[latest.campaign_id.notna()].groupby("campaign_id").amount.sum()
    by_version = latest[latest.model_version.notna()].groupby("model_version").amount.sum()
    return {"campaigns": {int(k): float(v) for k, v in by_campaign.items()},
            "model_versions": {str(k): float(v) for k, v in by_version.items()}}


def _campaign_touch_times(engine: Engine, tenant: str, tagged: pd.DataFrame) -> pd.Series:
    """Per tagged event: the last planned contact of its person for its campaign before it, else the start."""
    ids = sorted(set(tagged.campaign_id))
    with engine.connect() as c:
        starts = dict(c.execute(select(campaigns.c.id, campaigns.c.starts_on)
                                .where(campaigns.c.tenant == tenant, campaigns.c.id.in_(ids))).all())
        sent = pd.DataFrame(c.execute(select(contacts.c.campaign_id, contacts.c.token, contacts.c.contacted_at)
                                      .where(contacts.c.tenant == tenant, contacts.c.campaign_id.in_(ids))).all(),
                            columns=["campaign_id", "token", "contacted_at"])
    start = tagged.campaign_id.map({k: pd.Timestamp(_day_start(v)) for k, v in starts.items()})
    start = pd.to_datetime(start, utc=True)  # a foreign or unknown campaign id: NaT, never credited
    if sent.empty:
        return start
    sent["contacted_at"] = utc(sent.contacted_at)
    keyed = tagged[["event_id", "campaign_id", "token", "occurred_at"]].merge(sent, on=["campaign_id", "token"])
    keyed = keyed[keyed.contacted_at <= keyed.occurred_at]
    last = keyed.groupby("event_id").contacted_at.max()
    contact = tagged.event_id.map(last)
    return pd.to_datetime(contact, utc=True).fillna(start) if len(last) else start


# --------------------------------------------------------------------------- observed revenue by day
def utc_day(column, dialect: str):
    """The UTC calendar day of a timestamp column, in SQL (SQLite stores naive UTC text)."""
    return cast(func.timezone("UTC", column), Date) if dialect == "postgresql" else func.date(column)


def daily_revenue(engine: Engine, tenant: str, options: Options, campaign_id: int | None = None,
                  model_version: str | None = None) -> list[dict]:
    """Observed revenue, bookings and visits per UTC day, by the campaign and model version that exposed them.

    Rolled up in the database (one GROUP BY): an analytics request reads one row per day,
    campaign and version, not every event of the tenant."""
    day = utc_day(events.c.occurred_at, engine.dialect.name).label("day")
    version = served_lists.c.model_version
    start, end = options.clip(_day_start(date(1970, 1, 1)), _day_start(date(9999, 1, 1)))
    if start >= end:
        return []
    query = (select(day, events.c.campaign_id, version, func.sum(events.c.amount_cny),
                    func.sum(case((events.c.kind == "booking", 1), else_=0)),
                    func.sum(case((events.c.kind == "visit", 1), else_=0)))
             .select_from(events.outerjoin(served_lists, and_(served_lists.c.recommendation_id == events.c.recommendation_id,
                                                              served_lists.c.tenant == tenant)))
             .where(events.c.tenant == tenant, events.c.kind.in_(OUTCOME_KINDS),
                    events.c.occurred_at >= start, events.c.occurred_at < end)
             .group_by(day, events.c.campaign_id, version))
    if campaign_id is not None:
        query = query.where(events.c.campaign_id == campaign_id)
    if model_version is not None:
        query = query.where(version == model_version)
    with engine.connect() as c:
        rows = c.execute(query).all()
    rows.sort(key=lambda r: (str(r[0]), -1 if r[1] is None else r[1], r[2] or ""))
    return [{"day": str(d), "campaign_id": camp, "model_version": ver or None,
             "revenue_cny": round(float(revenue or 0), 2), "bookings": int(bookings), "visits": int(visits)}
            for d, camp, ver, revenue, bookings, visits in rows]


def rounded_ci(ci) -> list[float] | None:
    return None if ci is None else [round(float(ci[0]), 2), round(float(ci[1]), 2)]


def finite_or_none(value) -> float | None:
    return None if value is None or not np.isfinite(value) else round(float(value), 2)


def utc_iso(moment: datetime) -> str:
    """ISO 8601 in UTC (a naive value from SQLite is UTC already)."""
    moment = moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)
    return moment.isoformat().replace("+00:00", "Z")
