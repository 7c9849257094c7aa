"""Consent, region and frequency caps — the filters every audience passes through.

Frequency caps hold across all of a tenant's campaigns: each planned contact is a row in
`contacts` (the treatment group, at the campaign's contact time), and a person may join a
campaign only if fewer than `cap_contacts` of the tenant's *counted* contacts fall within
`cap_days` either side of the campaign's contact time — then no window of `cap_days` ever
holds more than `cap_contacts` counted contacts.

Which contacts count (delivered when reported, planned otherwise): a delivery report is a
ledger event of kind `impression` carrying the campaign's id (the partner's receipt; the
simulator writes one per delivered person). A campaign without any report counts all its
planned contacts; once a campaign has reports, only its planned contacts whose person was
reported delivered count — the others were never delivered and free their slot. A report
decides *whether* a planned contact counts, never *when* (it stays at the planned contact
time), so a report can only remove counted contacts: a later report never breaks a cap that
held when an audience was computed. Reports for people the campaign never planned are not
counted (they stay in the ledger; the partner contacted someone it was not given). The
check and the insert of the new contacts run in one transaction under a per-tenant lock
(a PostgreSQL advisory lock; on SQLite the campaign row is written first, which takes the
database's single write lock), so concurrent campaigns cannot both take a person's last
free slot.
"""
from __future__ import annotations

import hashlib
from datetime import date, datetime, time, timedelta, timezone

import numpy as np
from sqlalchemy import delete, func, insert, or_, select, text, update

from wenlv.db.schema import campaigns, contacts, events

DELIVERY_KIND = "impression"  # a ledger event of this kind with a campaign id is the partner's delivery receipt


def contact_time(day: date) -> datetime:
    """A campaign contacts its treatment group once, at the start of its first day (UTC)."""
    return datetime.combine(day, time(0, 0), tzinfo=timezone.utc)


def lock_tenant(connection, tenant: str, campaign_id: int) -> None:
    """Serialise audience commits of one tenant until the transaction ends."""
    if connection.dialect.name == "postgresql":
        key = int.from_bytes(hashlib.sha256(f"wenlv-caps:{tenant}".encode()).digest()[:8], "big", signed=True)
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})
    # first statement of the transaction is a write: on SQLite it takes the write lock now
    connection.execute(update(campaigns).where(campaigns.c.id == campaign_id).values(status="computing"))


def capped_tokens(connection, tenant: str, at: datetime, cap_contacts: int, cap_days: int,
                  except_campaign: int | None = None) -> set[str]:
    """Tokens that already have `cap_contacts` of the tenant's contacts within `cap_days` of `at`."""
    window = timedelta(days=cap_days)
    query = (select(contacts.c.token).where(contacts.c.tenant == tenant, contacts.c.contacted_at > at - window,
                                            contacts.c.contacted_at < at + window, counted_contact())
             .group_by(contacts.c.token).having(func.count() >= cap_contacts))
    if except_campaign is not None:
        query = query.where(contacts.c.campaign_id != except_campaign)
    return set(connection.execute(query).scalars())


def counted_contact():
    """SQL condition on a `contacts` row: its campaign has no delivery report, or this person was reported delivered."""
    reports = select(events.c.event_id).where(events.c.tenant == contacts.c.tenant, events.c.kind == DELIVERY_KIND,
                                              events.c.campaign_id == contacts.c.campaign_id)
    return or_(~reports.exists(), reports.where(events.c.token == contacts.c.token).exists())


def counted_contacts(connection, tenant: str) -> list[dict]:
    """The tenant's contacts that count against caps (id, token, campaign_id, contacted_at), by the rule above."""
    query = (select(contacts.c.id, contacts.c.token, contacts.c.campaign_id, contacts.c.contacted_at)
             .where(contacts.c.tenant == tenant, counted_contact()).order_by(contacts.c.id))
    return [dict(r) for r in connection.execute(query).mappings()]


def replace_contacts(connection, tenant: str, campaign_id: int, channel: str, tokens, at: datetime) -> None:
    """The campaign's planned contacts become exactly `tokens` at `at` (recomputation replaces them)."""
    connection.execute(delete(contacts).where(contacts.c.campaign_id == campaign_id))
    rows = [{"tenant": tenant, "token": t, "campaign_id": campaign_id, "channel": channel, "contacted_at": at}
            for t in tokens]
    if rows:
        connection.execute(insert(contacts), rows)


def region_mask(home_cities: np.ndarray | None, region: str | None, n: int) -> np.ndarray:
    """Everyone when no region is asked; else people whose home city is the region (case-insensitive)."""
    if region is None:
        return np.ones(n, dtype=bool)
    if home_cities is None:
        raise ValueError("this target's candidates carry no home city, so a region filter cannot be applied; "
                         "leave region unset or use target_kind=destination")
    return np.char.lower(home_cities.astype(str)) == region.lower()
