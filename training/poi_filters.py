"""Eligibility of POIs for one request, as one vectorised boolean mask.

Precomputed per model version (`PoiTable`): category and city codes, coordinates in
radians, opening minutes. A request's filters combine into a mask in microseconds with
no Python loop over POIs; the mask then drives a FAISS ID selector.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from wenlv.geo import EARTH_RADIUS_KM, haversine_km_radians
from wenlv.timeofday import hhmm_column_to_minutes

LOCAL_TZ = ZoneInfo("Asia/Shanghai")


@dataclass
class Filters:
    """One request's POI filters; every field optional."""

    category: str | None = None
    city: str | None = None
    near: tuple[float, float] | None = None  # (lat, lon) in degrees
    radius_km: float | None = None
    open_at_minute: int | None = None        # minute of the local day the POI must be open at

    @property
    def any(self) -> bool:
        return any(v is not None for v in (self.category, self.city, self.near, self.open_at_minute))


def now_minute() -> int:
    now = datetime.now(LOCAL_TZ)
    return now.hour * 60 + now.minute


class PoiTable:
    """Column arrays of the catalogue for fast masks; row i is POI i of the bundle."""

    def __init__(self, pois: pd.DataFrame):
        self.n = len(pois)
        self.poi_ids = pois["poi_id"].astype(str).to_numpy()
        self.names = pois["name"].astype(str).to_numpy()
        self.categories = pois["category"].astype(str).to_numpy()
        self.cities = pois["city"].astype(str).to_numpy() if "city" in pois else np.full(self.n, "")
        self.category_codes = {c: np.flatnonzero(self.categories == c) for c in np.unique(self.categories)}
        self.city_codes = {c: np.flatnonzero(self.cities == c) for c in np.unique(self.cities)}
        lowered = np.char.lower(self.cities.astype(str))
        self._city_rows_any_case = {c: np.flatnonzero(lowered == c) for c in np.unique(lowered)}
        self.lat = np.radians(pois["lat"].to_numpy(dtype=np.float64))
        self.lon = np.radians(pois["lon"].to_numpy(dtype=np.float64))
        self.cos_lat = np.cos(self.lat)
        self._by_lat = np.argsort(self.lat, kind="stable")  # rows by latitude: a radius filter starts from a band
        self._lat_sorted = self.lat[self._by_lat]
        self.open_min = hhmm_column_to_minutes(pois["open_time"])
        self.close_min = hhmm_column_to_minutes(pois["close_time"])
        self.index_of = pd.Index(self.poi_ids)
        self.row_of = {p: i for i, p in enumerate(self.poi_ids)}  # small lookups: a dict beats get_indexer

    def rows_in_city(self, city: str) -> np.ndarray:
        """Rows of the POIs in `city`, whatever its case (itineraries name cities as people type them)."""
        return self._city_rows_any_case.get(city.lower(), np.empty(0, dtype=np.int64))

    def distance_km(self, lat: float, lon: float) -> np.ndarray:
        return haversine_km_radians(self.lat, self.lon, np.radians(lat), np.radians(lon), cos_lat1=self.cos_lat)

    def within_km(self, lat: float, lon: float, radius_km: float) -> np.ndarray:
        """Bool per POI: within `radius_km` of (lat, lon) by the haversine, computed only for the POIs in a bounding
        box around the point (the haversine of every POI was the largest cost of a filtered request). The box only
        leaves out POIs that are certainly farther: along a meridian the distance is at least R·|Δlat|, and no point
        within angle δ of latitude φ0 is more than asin(sin δ / cos φ0) away in longitude."""
        lat0, lon0 = np.radians(lat), np.radians(lon)
        delta = radius_km / EARTH_RADIUS_KM * (1 + 1e-9) + 1e-12  # the margin covers rounding
        lo = np.searchsorted(self._lat_sorted, lat0 - delta, side="left")
        hi = np.searchsorted(self._lat_sorted, lat0 + delta, side="right")
        rows = self._by_lat[lo:hi]
        if abs(lat0) + delta < np.pi / 2 and delta < np.pi / 2:  # else the box spans every longitude
            dlon = np.abs(self.lon[rows] - lon0)
            dlon = np.minimum(dlon, 2 * np.pi - dlon)
            rows = rows[dlon <= np.arcsin(np.sin(delta) / np.cos(lat0)) * (1 + 1e-9) + 1e-12]
        near = np.zeros(self.n, dtype=bool)
        near[rows] = haversine_km_radians(self.lat[rows], self.lon[rows], lat0, lon0, cos_lat1=self.cos_lat[rows]) <= radius_km
        return near

    def open_mask(self, minute: int) -> np.ndarray:
        o, c = self.open_min, self.close_min
        same_day = (o <= minute) & (minute < c)
        past_midnight = (c < o) & ((minute >= o) | (minute < c))  # e.g. 18:00–02:00
        return same_day | past_midnight | (o == c)  # open == close: open all day

    def mask(self, filters: Filters, exclude: np.ndarray | None = None) -> np.ndarray | None:
        """Boolean eligibility per POI, or None when nothing is filtered."""
        if not filters.any and (exclude is None or len(exclude) == 0):
            return None
        mask = np.ones(self.n, dtype=bool)
        if filters.category is not None:
            only = np.zeros(self.n, dtype=bool)
            only[self.category_codes.get(filters.category, [])] = True
            mask &= only
        if filters.city is not None:
            only = np.zeros(self.n, dtype=bool)
            only[self.city_codes.get(filters.city, [])] = True
            mask &= only
        if filters.near is not None:
            mask &= self.within_km(*filters.near, filters.radius_km or 5.0)
        if filters.open_at_minute is not None:
            mask &= self.open_mask(filters.open_at_minute)
        if exclude is not None and len(exclude):
            mask[exclude] = False
        return mask

    def indices(self, poi_ids) -> np.ndarray:
        """Row numbers of known POI ids (unknown ids are ignored: the catalogue moved on)."""
        row_of = self.row_of
        return np.fromiter((row_of[p] for p in poi_ids if p in row_of), dtype=np.int64)
