"""The radius filter's bounding box never changes the answer: `PoiTable.within_km` equals the haversine of
every POI, also for points on the radius, near the poles, across the antimeridian and for huge radii."""
import numpy as np
import pandas as pd
import pytest

from wenlv.training.poi_filters import Filters, PoiTable


def table_of(lat, lon) -> PoiTable:
    n = len(lat)
    return PoiTable(pd.DataFrame({"poi_id": [f"P{i}" for i in range(n)], "name": "x", "category": "museum",
                                  "city": "c", "lat": lat, "lon": lon, "open_time": "08:00", "close_time": "18:00"}))


@pytest.mark.parametrize("where", ["one city", "a province", "the world"])
def test_within_km_equals_the_haversine_of_every_poi(where):
    rng = np.random.default_rng(3)
    n = 5000
    if where == "the world":
        lat, lon = rng.uniform(-90, 90, n), rng.uniform(-180, 180, n)
    else:
        span = 0.2 if where == "one city" else 4.0
        lat, lon = 30 + rng.uniform(-span, span, n), 120 + rng.uniform(-span, span, n)
    table = table_of(lat, lon)
    centres = [(lat[i], lon[i]) for i in rng.integers(0, n, 40)] + [
        (89.95, 10.0), (-89.99, -170.0), (0.0, 179.99), (10.0, -179.99), (30.1, 120.05)]
    for clat, clon in centres:
        every = table.distance_km(clat, clon)
        radii = [0.001, 0.5, 4.0, 8.0, 60.0, 500.0, 25000.0, *every[rng.integers(0, n, 5)]]  # some exactly on a POI
        for radius in radii:
            np.testing.assert_array_equal(table.within_km(clat, clon, float(radius)), every <= radius,
                                          err_msg=f"centre {clat},{clon} radius {radius}")


def test_the_mask_uses_the_radius():
    table = table_of(np.array([30.0, 30.05, 31.0]), np.array([120.0, 120.0, 120.0]))  # 0, 5.6 and 111 km north
    assert table.mask(Filters(near=(30.0, 120.0), radius_km=6.0)).tolist() == [True, True, False]
    assert table.mask(Filters(near=(30.0, 120.0))).tolist() == [True, False, False]  # 5 km by default
