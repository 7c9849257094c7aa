"""Great-circle distances: the one haversine every stage uses."""
from __future__ import annotations

import numpy as np

EARTH_RADIUS_KM = 6371.0088  # IUGG mean Earth radius


def haversine_km(lat1, lon1, lat2, lon2, radius_km: float = EARTH_RADIUS_KM) -> np.ndarray:
    """Distance in km between points given in degrees; broadcasts over arrays."""
    lat1, lon1, lat2, lon2 = (np.radians(np.asarray(v, dtype=float)) for v in (lat1, lon1, lat2, lon2))
    return haversine_km_radians(lat1, lon1, lat2, lon2, radius_km)


def haversine_km_radians(lat1, lon1, lat2, lon2, radius_km: float = EARTH_RADIUS_KM,
                         cos_lat1=None) -> np.ndarray:
    """The same from radians, for callers that convert their coordinates once (serving filters
    also pass cos(lat1), precomputed for a fixed table of points)."""
    cos_lat1 = np.cos(lat1) if cos_lat1 is None else cos_lat1
    a = np.sin((lat2 - lat1) / 2) ** 2 + cos_lat1 * np.cos(lat2) * np.sin((lon2 - lon1) / 2) ** 2
    return 2 * radius_km * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))
