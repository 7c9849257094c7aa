"""Consent, region and frequency caps — the filters every audience passes through.

Frequency caps hold across all of a tenant's campaigns: each delivered (planned) contact is
a row in `contacts`, and a person may join a campaign only if fewer than `cap_contacts`
of the tenant's contacts fall within `cap_days` either side of the campaign's contact
time — then no window of `cap_days` ever holds more than `cap_contacts` contacts. The
check and the insert of the new contacts run in one transaction under a per-tenant lock
(a PostgreSQL advisory lock; on SQLite the campaign row is written first, which takes the
database's single write lock), so concurrent campaigns cannot both take a person's last
free slot.
"""
from __future__ import annotations

import hashlib
from datetime import date, datetime, time, timedelta, timezone

import numpy as np
from sqlalchemy import delete, func, insert, select, text, update

from wenlv.db.schema import campaigns, contacts


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
                                            contacts.c.contacted_at < at + window)
             .group_by(contacts.c.token).having(func.count() >= cap_contacts))
    if except_campaign is not None:
        query = query.where(contacts.c.campaign_id != except_campaign)
    return set(connection.execute(query).scalars())


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
