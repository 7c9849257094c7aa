"""The generator's calendar: the timeline, its train/test split, and how attractive each day is
for a trip (season, weekends, Chinese public holidays and school holidays)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta

import numpy as np

# Official mainland China public holidays (days off), 2024–2026.
HOLIDAYS = {
    "New Year": [("2024-01-01", "2024-01-01"), ("2025-01-01", "2025-01-01"), ("2026-01-01", "2026-01-03")],
    "Spring Festival": [("2024-02-10", "2024-02-17"), ("2025-01-28", "2025-02-04"), ("2026-02-15", "2026-02-23")],
    "Qingming": [("2024-04-04", "2024-04-06"), ("2025-04-04", "2025-04-06"), ("2026-04-04", "2026-04-06")],
    "Labour Day": [("2024-05-01", "2024-05-05"), ("2025-05-01", "2025-05-05"), ("2026-05-01", "2026-05-05")],
    "Dragon Boat": [("2024-06-08", "2024-06-10"), ("2025-05-31", "2025-06-02"), ("2026-06-19", "2026-06-21")],
    "Mid-Autumn": [("2024-09-15", "2024-09-17"), ("2026-09-25", "2026-09-27")],
    "Golden Week": [("2024-10-01", "2024-10-07"), ("2025-10-01", "2025-10-08"), ("2026-10-01", "2026-10-07")],
}
# School summer and winter breaks (families travel): approximate, Zhejiang.
SCHOOL_BREAKS = [("2024-07-06", "2024-08-31"), ("2025-01-18", "2025-02-16"), ("2025-07-05", "2025-08-31"),
                 ("2026-01-24", "2026-02-28"), ("2026-07-04", "2026-08-31")]
# Month multipliers for Hangzhou (spring blossoms and autumn are the high seasons).
MONTH_FACTOR = np.array([0.70, 0.80, 1.10, 1.35, 1.20, 0.95, 1.05, 1.10, 1.10, 1.30, 1.15, 0.75])


@dataclass(frozen=True)
class Timeline:
    """`start`..`end` inclusive; the last `test_days` days (from `split`) are the test window."""

    start: date
    end: date
    test_days: int = 28

    @property
    def days(self) -> int:
        return (self.end - self.start).days + 1

    @property
    def split(self) -> date:
        return self.end - timedelta(days=self.test_days - 1)

    @property
    def split_index(self) -> int:
        return (self.split - self.start).days

    def dates(self) -> list[date]:
        return [self.start + timedelta(days=i) for i in range(self.days)]

    def epoch_day(self) -> int:
        """Days from 1970-01-01 to `start` (arrow date32 / timestamp arithmetic)."""
        return (self.start - date(1970, 1, 1)).days

    def meta(self) -> dict:
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "split_date": self.split.isoformat(),
                "train_window": [self.start.isoformat(), (self.split - timedelta(days=1)).isoformat()],
                "test_window": [self.split.isoformat(), self.end.isoformat()], "test_days": self.test_days}


DEFAULT_TIMELINE = Timeline(date(2025, 1, 6), date(2025, 12, 28), test_days=28)  # 51 weeks, Mon..Sun


def _in_ranges(days: list[date], ranges) -> np.ndarray:
    out = np.zeros(len(days), dtype=bool)
    for lo, hi in ranges:
        lo, hi = date.fromisoformat(lo), date.fromisoformat(hi)
        out |= np.array([lo <= d <= hi for d in days])
    return out


@dataclass(frozen=True)
class DayProfile:
    """Per day of the timeline: month index, weekday, holiday and school-break flags, and the
    relative trip-start weight for nearby (day-trip) and far-away (multi-day) visitors."""

    month: np.ndarray
    weekday: np.ndarray
    holiday: np.ndarray
    school_break: np.ndarray
    near_weight: np.ndarray
    far_weight: np.ndarray


def day_profile(tl: Timeline) -> DayProfile:
    days = tl.dates()
    month = np.array([d.month - 1 for d in days])
    weekday = np.array([d.weekday() for d in days])
    holiday = _in_ranges(days, [r for rs in HOLIDAYS.values() for r in rs])
    school = _in_ranges(days, SCHOOL_BREAKS)
    weekend = weekday >= 5
    base = MONTH_FACTOR[month]
    # locals and nearby: weekends and holidays dominate day trips
    near = base * np.where(holiday, 3.0, np.where(weekend, 2.4, 1.0)) * np.where(school, 1.2, 1.0)
    # far away: long holidays (Golden Week, Spring Festival, Labour Day) dominate; trips start Fri/Sat more
    far = base * np.where(holiday, 5.0, np.where(weekday >= 4, 1.6, 1.0)) * np.where(school, 1.6, 1.0)
    return DayProfile(month, weekday, holiday, school, near / near.sum(), far / far.sum())
