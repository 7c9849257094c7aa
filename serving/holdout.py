"""The recommendation surface's holdout: a persistent random share of visitors get the non-personalised list.

A visitor's arm is a keyed hash of their token (`marketing.holdout.arms`): the same on every
request, after a restart and on every replica that shares the key, and independent of
anything about the visitor, so the holdout is a true random sample. Comparing the arms'
revenue measures what the recommender itself adds. The fraction is WENLV_RECOMMENDATION_HOLDOUT
(0 turns it off); the key WENLV_HOLDOUT_KEY, else a 0600 file beside the SQLite database
(replicas on several machines must share WENLV_HOLDOUT_KEY).
"""
from __future__ import annotations

from functools import lru_cache

from wenlv.marketing.holdout import HOLDOUT, TREATMENT, arm
from wenlv.marketing.secret_file import setting_or_private_file
from wenlv.settings import Settings, get_settings

__all__ = ["HOLDOUT", "TREATMENT", "surface_arm"]


@lru_cache(maxsize=4)
def _key(settings: Settings) -> str:
    return setting_or_private_file(settings.holdout_key, settings.database_sqlite.with_suffix(".holdout-key")).decode()


def surface_arm(token: str, settings: Settings | None = None) -> str:
    """'holdout' or 'treatment' for this visitor on the recommendation surface."""
    settings = settings or get_settings()
    if settings.recommendation_holdout <= 0:
        return TREATMENT
    return arm(_key(settings), token, settings.recommendation_holdout)
