"""The one definition of what a person's token looks like, for every route and table.

A visitor token is a `psi_align.user_token`: 128 bits as 32 lowercase hex digits. PSI
session tokens (`psi.py`, SHA-256 of a point) are 64. Nothing else is a token: a phone
number in any spelling (digits, separators, country code) fails these patterns, so it is
refused at the door instead of being stored.
"""
from __future__ import annotations

import re

VISITOR_TOKEN_PATTERN = r"^[0-9a-f]{32}$"
PSI_TOKEN_PATTERN = r"^(?:[0-9a-f]{32}|[0-9a-f]{64})$"  # a user token or a PSI session token

VISITOR_TOKEN_RE = re.compile(VISITOR_TOKEN_PATTERN)
PSI_TOKEN_RE = re.compile(PSI_TOKEN_PATTERN)


def is_visitor_token(value: object) -> bool:
    return isinstance(value, str) and VISITOR_TOKEN_RE.fullmatch(value) is not None


def is_psi_token(value: object) -> bool:
    return isinstance(value, str) and PSI_TOKEN_RE.fullmatch(value) is not None
