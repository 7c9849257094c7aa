"""ALS confidence weights c = 1 + α·f(signal) for each party's interaction block (Hu, Koren, Volinsky).

Log-scaled signals keep a heavy visitor from drowning everyone else; recency halves the
tourism weight every RECENCY_HALF_LIFE_DAYS so last month's visit counts more than last
year's. Spark column expressions, so every party computes them where its data lives.
"""
from __future__ import annotations

from pyspark.sql import functions as F

ALPHA = 10.0
RECENCY_HALF_LIFE_DAYS = 90.0


def tourism_confidence(visits, spend_cny, dwell_minutes, recency_days):
    signal = F.log1p(visits) + 0.5 * F.log1p(spend_cny / 100.0) + 0.5 * F.log1p(dwell_minutes / 60.0)
    return 1.0 + ALPHA * signal * F.pow(F.lit(0.5), recency_days / RECENCY_HALF_LIFE_DAYS)


def carrier_confidence(days, dwell_minutes):
    return 1.0 + ALPHA * 0.5 * (F.log1p(days) + F.log1p(dwell_minutes / 60.0))


def internet_confidence(events):
    return 1.0 + ALPHA * 0.5 * F.log1p(events)
