"""Local times of day as 'HH:MM' text and as minutes after midnight, parsed in one place."""
from __future__ import annotations

import numpy as np
import pandas as pd


def hhmm_to_minutes(value: str) -> int:
    """'HH:MM' -> minutes after midnight ('24:00' is the end of the day); a clear error otherwise."""
    text = str(value).strip()
    hours, sep, minutes = text.partition(":")
    if not (sep and hours.isdigit() and minutes.isdigit() and len(minutes) == 2):
        raise ValueError(f"time of day must be HH:MM, got {text!r}")
    h, m = int(hours), int(minutes)
    if m > 59 or h > 24 or (h == 24 and m):
        raise ValueError(f"time of day out of range: {text!r}")
    return h * 60 + m


def minutes_to_hhmm(value: float) -> str:
    value = int(round(value))
    return f"{value // 60:02d}:{value % 60:02d}"


def hhmm_column_to_minutes(values: pd.Series) -> np.ndarray:
    """A column of 'HH:MM' strings -> int32 minutes (vectorised; the same rules as hhmm_to_minutes)."""
    text = values.astype(str).str.strip()
    bad = ~text.str.fullmatch(r"(?:[01]?\d|2[0-3]):[0-5]\d|24:00")
    if bad.any():
        raise ValueError(f"time of day must be HH:MM, got {text[bad].iloc[0]!r}")
    parts = text.str.split(":", n=1, expand=True)
    return (parts[0].astype(int) * 60 + parts[1].astype(int)).to_numpy(dtype=np.int32)
