"""Travel-time model of an itinerary request: haversine distance, a detour factor and a
speed and fixed overhead per mode, rounded UP to whole minutes (so every plan time is an
integer minute). This is part of what a request means; the checker recomputes it.
"""
from __future__ import annotations

import numpy as np

from wenlv.geo import haversine_km

# mode -> (speed km/h, detour factor over the great circle, fixed minutes per leg)
TRAVEL_MODES: dict[str, tuple[float, float, float]] = {
    "walk": (4.5, 1.3, 0.0),
    "transit": (20.0, 1.35, 8.0),
    "drive": (28.0, 1.4, 5.0),
}
SAME_PLACE_KM = 0.05  # closer than this is the same place: no travel


def minutes_matrix(lat: np.ndarray, lon: np.ndarray, mode: str) -> np.ndarray:
    """Whole-minute travel times between all points for one mode."""
    if mode not in TRAVEL_MODES:
        raise ValueError(f"travel_mode must be one of {sorted(TRAVEL_MODES)}, got {mode!r}")
    speed, detour, fixed = TRAVEL_MODES[mode]
    km = haversine_km(lat[:, None], lon[:, None], lat[None, :], lon[None, :])
    minutes = np.ceil(fixed + km * detour / speed * 60.0 - 1e-9)
    return np.where(km < SAME_PLACE_KM, 0.0, minutes)
