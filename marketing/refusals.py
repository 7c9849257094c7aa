"""Why an audience may not be built or exported: one error type with a short reason code.

The reason code (`min_size`, `consent_coverage`, `seed_size`, `region`, `no_audience`) lets the
API answer each refusal under its own name; the message says the counts and what to change.
"""
from __future__ import annotations

from wenlv.errors import WenlvError

REASONS = ("min_size", "consent_coverage", "seed_size", "region", "no_audience")


class AudienceRefused(WenlvError):
    """The audience may not be built or exported; the message says why, `reason` names the rule."""

    def __init__(self, message: str, reason: str = "min_size"):
        if reason not in REASONS:
            raise ValueError(f"unknown refusal reason {reason!r}")
        super().__init__(message)
        self.reason = reason
