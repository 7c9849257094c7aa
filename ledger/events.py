"""Recording events in the ledger: each one validated on its own, stored once, durable on return.

A batch is checked event by event: bad events are rejected with a reason naming the field,
the good ones are kept. Storage is one INSERT ... ON CONFLICT DO NOTHING per batch in one
transaction, RETURNING the ids actually inserted, so a retried or interleaved batch stores
each `event_id` once and the caller learns which were duplicates. The function returns
only after the commit (SQLite runs with synchronous=FULL, see wenlv.db.engine), so an
acknowledgement means durable.

A `recommendation_id` the tenant's served lists do not hold is stored and flagged, not
rejected: a booking is a fact the books must hold whether or not its exposure can be proven
(rejecting it would understate revenue), the list may not be recorded yet (the serving
process writes served lists asynchronously) or may have been dropped under pressure, and
attribution joins at query time, so the event is credited to a model only once, and if, its
list is in the ledger. The flag tells the sender which events are, for now, unattributed;
another tenant's list id is flagged exactly like an unknown one.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import Connection, Engine, select
from sqlalchemy.dialects import sqlite

from wenlv.db.schema import EVENT_KINDS, campaigns, events, served_lists
from wenlv.privacy.tokens import PSI_TOKEN_RE as TOKEN_RE
PRINTABLE = r"^[^\x00-\x1f\x7f]*$"  # no control characters (PostgreSQL refuses NUL in text outright)
MAX_BATCH = 1000  # library callers' limit (the simulator); the API passes WENLV_EVENTS_MAX_BATCH
UNKNOWN_LIST = ("recommendation_id: no list served to this tenant under this id; stored, credited to a model "
                "only once the list is in the ledger")


class Event(BaseModel):
    """One impression, click, booking or visit, as a partner or the app reports it."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    event_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$",
                          description="the sender's unique id: a retried event with the same id is stored once")
    kind: Literal[EVENT_KINDS]  # type: ignore[valid-type]
    token: str = Field(description="the visitor's pseudonymous token (lowercase hex)")
    poi_id: str | None = Field(None, max_length=64, pattern=PRINTABLE)
    amount_cny: Decimal | None = Field(None, ge=0, max_digits=14, decimal_places=2,
                                       description="revenue in CNY (bookings and visits)")
    occurred_at: datetime = Field(description="when it happened (ISO 8601 with a time zone)")
    recommendation_id: str | None = Field(None, max_length=64, pattern=PRINTABLE)
    campaign_id: int | None = Field(None, ge=1, le=2**31 - 1)  # an INTEGER column on every backend

    @field_validator("poi_id", "recommendation_id")
    @classmethod
    def _storable(cls, value: str | None) -> str | None:
        if value is not None and "\x00" in value:  # PostgreSQL text cannot hold it: one event's error, not the batch's
            raise ValueError("must not contain a NUL character")
        return value

    @field_validator("token")
    @classmethod
    def _token(cls, value: str) -> str:
        if not TOKEN_RE.fullmatch(value):
            raise ValueError("must be a pseudonymous token (lowercase hex), never a phone number or a name")
        return value

    @field_validator("occurred_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("needs a time zone (e.g. 2026-05-01T10:00:00+08:00)")
        try:
            return value.astimezone(timezone.utc)
        except OverflowError:  # e.g. 9999-12-31T23:59:59-14:00 is past the year 9999 in UTC
            raise ValueError("is out of range once converted to UTC") from None

    @model_validator(mode="after")
    def _amount_where_it_applies(self) -> "Event":
        if self.amount_cny is not None and self.kind in ("impression", "click"):
            raise ValueError(f"amount_cny does not apply to a {self.kind}")
        return self


@dataclass
class BatchResult:
    """What happened to each event of a batch: stored now, already stored, or rejected (why)."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[tuple[int, str | None, str]] = field(default_factory=list)  # (index, event_id, reason)
    flagged: list[tuple[int, str, str]] = field(default_factory=list)  # stored now, but (index, event_id, why)

    def as_dict(self) -> dict:
        return {"accepted": len(self.accepted), "duplicates": len(self.duplicates),
                "rejected": [{"index": i, "event_id": eid, "reason": why} for i, eid, why in self.rejected],
                "flagged": [{"index": i, "event_id": eid, "reason": why} for i, eid, why in self.flagged]}


def validate(raw_events: list[dict]) -> tuple[list[Event], list[str], list[tuple[int, str | None, str]]]:
    """Split a batch into valid events, repeats of an id earlier in the batch, and rejections."""
    good, repeats, bad, seen = [], [], [], set()
    for i, raw in enumerate(raw_events):
        event_id = raw.get("event_id") if isinstance(raw, dict) else None
        event_id = event_id if isinstance(event_id, str) else None
        try:
            event = Event.model_validate(raw)
        except ValidationError as exc:
            bad.append((i, event_id, _reason(exc)))
            continue
        if event.event_id in seen:  # twice in one batch: keep the first, acknowledge the second
            repeats.append(event.event_id)
            continue
        seen.add(event.event_id)
        good.append(event)
    return good, repeats, bad


def _reason(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'event'}: {e['msg']}" for e in exc.errors())


class BatchTooLarge(ValueError):
    """More events in one batch than the ledger takes at once (WENLV_EVENTS_MAX_BATCH)."""


def record_events(engine: Engine, tenant: str, raw_events: list[dict], now: datetime | None = None,
                  max_batch: int = MAX_BATCH) -> BatchResult:
    """Validate and store a batch for `tenant`; returns after the commit (durable).

    An event naming a campaign of another tenant (or none) is rejected exactly like an
    unknown campaign, so one tenant can neither attach revenue to another's campaign nor
    learn which campaign ids exist.
    """
    if len(raw_events) > max_batch:
        raise BatchTooLarge(f"a batch holds at most {max_batch} events, got {len(raw_events)}")
    good, repeats, bad = validate(raw_events)
    result = BatchResult(duplicates=repeats, rejected=bad)
    if not good:
        result.rejected.sort(key=lambda r: r[0])
        return result
    received = now or datetime.now(timezone.utc)
    with _transaction(engine) as connection:
        good = _own_campaigns_only(connection, tenant, good, result, raw_events)
        inserted = _insert(connection, tenant, good, received) if good else {}
    unlisted = [e.event_id for e in good if inserted.get(e.event_id) is False]
    for e in good:
        (result.accepted if e.event_id in inserted else result.duplicates).append(e.event_id)
    if unlisted:
        at = _positions(raw_events)
        result.flagged = [(at.get(event_id, -1), event_id, UNKNOWN_LIST) for event_id in unlisted]
    result.rejected.sort(key=lambda r: r[0])
    return result


# PostgreSQL: one short statement over column arrays. A multi-row VALUES list would carry 10
# parameters per event, and psycopg re-parses such a long query on every call (~25 ms a batch).
_PG_INSERT = (f"INSERT INTO {events.name} (tenant, event_id, kind, token, poi_id, amount_cny, occurred_at, "
              "recommendation_id, campaign_id, received_at) "
              "SELECT %s, u.event_id, u.kind, u.token, u.poi_id, u.amount_cny, u.occurred_at, u.recommendation_id, "
              "u.campaign_id, %s FROM unnest(%b::varchar[], %b::varchar[], %b::varchar[], %b::varchar[], "
              "%b::numeric[], %b::timestamptz[], %b::varchar[], %b::integer[]) "
              "AS u(event_id, kind, token, poi_id, amount_cny, occurred_at, recommendation_id, campaign_id) "
              "ON CONFLICT (tenant, event_id) DO NOTHING RETURNING event_id, "
              f"recommendation_id IS NULL OR EXISTS (SELECT 1 FROM {served_lists.name} s "
              f"WHERE s.recommendation_id = {events.name}.recommendation_id AND s.tenant = {events.name}.tenant)")
# %b: arrays sent in binary, unescaped. RETURNING also says whether the list an event names is known: no extra round trip.
_COLUMNS = ("event_id", "kind", "token", "poi_id", "amount_cny", "occurred_at", "recommendation_id", "campaign_id")


@contextmanager
def _transaction(engine: Engine) -> Iterator[Connection]:
    """Where the batch is written; committed when the block ends.

    On PostgreSQL the one INSERT is its own transaction (autocommit): committed, and flushed to
    the WAL under the default synchronous_commit, when it returns, without the BEGIN and COMMIT
    round trips. (The campaign check before it reads rows whose tenant never changes.)
    """
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
            yield connection
    else:
        with engine.begin() as connection:
            yield connection


def _insert(connection: Connection, tenant: str, good: list[Event], received: datetime) -> dict[str, bool]:
    """Insert the events, skipping ids the tenant already has: {id actually inserted: its list is known (or none)}."""
    if connection.dialect.name == "postgresql":
        arrays = tuple([getattr(e, column) for e in good] for column in _COLUMNS)
        return {event_id: known for event_id, known in connection.exec_driver_sql(_PG_INSERT, (tenant, received, *arrays))}
    statement = (sqlite.insert(events).on_conflict_do_nothing(index_elements=["tenant", "event_id"])
                 .returning(events.c.event_id))
    rows = [{**e.model_dump(), "tenant": tenant, "received_at": received} for e in good]
    inserted = set(connection.execute(statement, rows).scalars())
    named = {e.recommendation_id for e in good if e.event_id in inserted and e.recommendation_id is not None}
    known = set(connection.execute(select(served_lists.c.recommendation_id).where(  # a local file: no round trip
        served_lists.c.tenant == tenant, served_lists.c.recommendation_id.in_(sorted(named)))).scalars()) if named else set()
    return {e.event_id: e.recommendation_id is None or e.recommendation_id in known for e in good if e.event_id in inserted}


def _positions(raw_events: list) -> dict[str, int]:
    """event_id -> its first position in the batch as sent."""
    positions: dict[str, int] = {}
    for i, raw in enumerate(raw_events):
        if isinstance(raw, dict) and isinstance(raw.get("event_id"), str):
            positions.setdefault(raw["event_id"].strip(), i)
    return positions


def _own_campaigns_only(connection: Connection, tenant: str, good: list[Event], result: BatchResult,
                        raw_events: list) -> list[Event]:
    """The events whose campaign (if any) is the tenant's; the others go to `result.rejected`."""
    wanted = {e.campaign_id for e in good if e.campaign_id is not None}
    if not wanted:
        return good
    owned = set(connection.execute(select(campaigns.c.id).where(
        campaigns.c.tenant == tenant, campaigns.c.id.in_(sorted(wanted)))).scalars())
    if owned == wanted:
        return good
    positions = _positions(raw_events)
    kept = []
    for e in good:
        if e.campaign_id is None or e.campaign_id in owned:
            kept.append(e)
        else:
            result.rejected.append((positions.get(e.event_id, -1), e.event_id,
                                    f"campaign_id: no campaign {e.campaign_id} for this tenant"))
    return kept
