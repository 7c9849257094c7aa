"""Rate limits per API key and per tenant: token buckets in process, checked by the guard before the body is read.

A role listed in `WENLV_RATE_LIMIT_KEY` gets a bucket per key holding `rate × WENLV_RATE_LIMIT_BURST`
tokens (at least one), refilled at `rate` per second; `WENLV_RATE_LIMIT_TENANT` the same per
(tenant, role), shared by all the tenant's keys of that role. A request takes one token from each;
an empty bucket answers 429 with `Retry-After` (whole seconds until a token is back). A role
listed in neither is not limited (by default only visitor-app keys are). The buckets live in
this process: with N server processes a key may get N times the rate.

Cheap by design (it runs on the recommendation route): one dict lookup per bucket, arithmetic,
no lock (the guard runs on the event loop's thread).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable

from wenlv.errors import WenlvError


class TokenBucket:
    __slots__ = ("rate", "capacity", "tokens", "updated")

    def __init__(self, rate: float, capacity: float, now: float):
        self.rate, self.capacity, self.tokens, self.updated = rate, capacity, capacity, now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until one is back (nothing taken)."""
        tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate

    def give_back(self) -> None:
        self.tokens = min(self.capacity, self.tokens + 1.0)


def parse_rates(name: str, text: str, roles: tuple[str, ...]) -> dict[str, float]:
    """`role=rate[,role=rate]` (a setting's value) as {role: requests per second}; empty: {}."""
    rates = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        role, sep, rate = part.partition("=")
        role = role.strip()
        try:
            value = float(rate) if sep else float("nan")
        except ValueError:
            value = float("nan")
        if not value > 0 or value == float("inf"):
            raise WenlvError(f"{name}: {part!r} must be role=rate with a positive number of requests per second "
                             "(e.g. visitor-app=200)")
        if role not in roles:
            raise WenlvError(f"{name}: unknown role {role!r}; one of: {', '.join(roles)}")
        rates[role] = value
    return rates


class RateLimiter:
    """Per-key and per-tenant token buckets by role; `check(principal)` is None (go on) or seconds to wait."""

    def __init__(self, key_rps: str, tenant_rps: str, burst_s: float, roles: tuple[str, ...],
                 on_refused: Callable[[str], None] | None = None):
        """`key_rps`, `tenant_rps`: the settings' text, `role=rate[,role=rate]` (see `parse_rates`)."""
        if not burst_s > 0:
            raise WenlvError(f"WENLV_RATE_LIMIT_BURST must be positive seconds, got {burst_s!r}")
        self.key_rps = parse_rates("WENLV_RATE_LIMIT_KEY", key_rps, roles)
        self.tenant_rps = parse_rates("WENLV_RATE_LIMIT_TENANT", tenant_rps, roles)
        self.burst_s = burst_s
        self.limited_roles = frozenset(self.key_rps) | frozenset(self.tenant_rps)
        self.on_refused = on_refused
        self._keys: dict[str, TokenBucket] = {}
        self._tenants: dict[tuple[str, str], TokenBucket] = {}

    def _bucket(self, buckets: dict, name, rate: float, now: float) -> TokenBucket:
        bucket = buckets.get(name)
        if bucket is None:
            bucket = buckets[name] = TokenBucket(rate, max(1.0, rate * self.burst_s), now)
        return bucket

    def check(self, principal) -> int | None:
        """None when the request may go on (its tokens taken); else the whole seconds for `Retry-After` (>= 1)."""
        role = principal.role
        if role not in self.limited_roles:
            return None
        now = time.monotonic()
        key_bucket = None
        rate = self.key_rps.get(role)
        if rate is not None:
            key_bucket = self._bucket(self._keys, principal.key_id, rate, now)
            wait = key_bucket.take(now)
            if wait:
                return self._refuse(role, wait)
        rate = self.tenant_rps.get(role)
        if rate is not None:
            wait = self._bucket(self._tenants, (principal.tenant, role), rate, now).take(now)
            if wait:
                if key_bucket is not None:
                    key_bucket.give_back()  # refused: the key's token was not used
                return self._refuse(role, wait)
        return None

    def _refuse(self, role: str, wait_s: float) -> int:
        if self.on_refused is not None:
            self.on_refused(role)
        return max(1, math.ceil(wait_s))
