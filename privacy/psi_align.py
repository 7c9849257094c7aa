"""Aligning PSI results across the three parties: one canonical user token per person.

Two PSI sessions run through the carrier hub (tourism↔carrier, internet↔carrier); each
gives its two sides a session token per matched person, and the two sessions' tokens are
unrelated. The carrier knows, per subscriber, the session token from each session, so it
issues one canonical user token per user and tells each partner, for the session tokens
that partner already holds, which canonical token replaces it:

    carrier → tourism:  {tourism–carrier session token → user token}   (matched rows only)
    carrier → internet: {internet–carrier session token → user token}  (matched rows only)

Partners learn no new identity: only a random-looking label for rows they already know
are matched. The user token is a keyed PRF of the phone number under a key drawn fresh for
the run and never stored (HMAC-SHA256, truncated to 128 bits, hex), so nobody without the
key can recompute or reverse it, and tokens of two runs cannot be linked.

Leakage of alignment, by design: the same person carries the same token in the tourism and
internet blocks, so whoever reads both blocks (the coordinator training on them) learns
which tourism customers are also internet users — pseudonymously, never by phone number.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from typing import Iterable

USER_TOKEN_DOMAIN = b"wenlv/psi/v1/user-token"


def new_run_key() -> bytes:
    return os.urandom(32)


def user_token(run_key: bytes, normalised_phone: str) -> str:
    mac = hmac.new(run_key, USER_TOKEN_DOMAIN + b"\x00" + normalised_phone.encode("ascii"), hashlib.sha256)
    return mac.hexdigest()[:32]


def user_tokens(run_key: bytes, normalised_phones: Iterable[str]) -> list[str]:
    return [user_token(run_key, p) for p in normalised_phones]
