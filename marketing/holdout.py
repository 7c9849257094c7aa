"""A seeded, persistent random holdout.

A person's arm is a keyed hash of (campaign seed, token): the same on every recomputation,
whoever else is in the audience, and independent of the score — so the holdout is a true
random sample of the audience. The audience store also keeps an existing member's arm
(see `audience.compute`), so a person keeps their arm for the campaign's life.
"""
from __future__ import annotations

import hashlib
import hmac

import numpy as np

TREATMENT, HOLDOUT = "treatment", "holdout"


def _uniform(key: bytes, token: str) -> float:
    return int.from_bytes(hmac.digest(key, token.encode(), hashlib.sha256)[:8], "big") / 2.0 ** 64


def uniforms(seed: str, tokens) -> np.ndarray:
    """A number in [0, 1) per token: the first 8 bytes of HMAC-SHA256(seed, token)."""
    key = seed.encode()
    return np.array([_uniform(key, t) for t in tokens], dtype=np.float64)


def _check_fraction(fraction: float) -> None:
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"holdout fraction must be in [0, 1), got {fraction}")


def arms(seed: str, tokens, fraction: float) -> np.ndarray:
    """'holdout' for the tokens whose uniform falls below `fraction`, else 'treatment'."""
    _check_fraction(fraction)
    return np.where(uniforms(seed, tokens) < fraction, HOLDOUT, TREATMENT)


def arm(seed: str, token: str, fraction: float) -> str:
    """`arms` for one token, without the arrays (the recommendation route asks once per request)."""
    _check_fraction(fraction)
    return HOLDOUT if _uniform(seed.encode(), token) < fraction else TREATMENT
