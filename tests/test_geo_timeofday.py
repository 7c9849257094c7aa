"""The one haversine and the one HH:MM parser every stage uses."""
import numpy as np
import pandas as pd
import pytest

from wenlv.geo import EARTH_RADIUS_KM, haversine_km, haversine_km_radians
from wenlv.timeofday import hhmm_column_to_minutes, hhmm_to_minutes, minutes_to_hhmm


def test_haversine_known_distances():
    # a quarter of a meridian, and one degree of longitude on the equator
    assert haversine_km(0, 0, 90, 0) == pytest.approx(np.pi / 2 * EARTH_RADIUS_KM)
    assert haversine_km(0, 0, 0, 1) == pytest.approx(2 * np.pi * EARTH_RADIUS_KM / 360)
    lat, lon = np.array([30.2, 30.3]), np.array([120.1, 120.2])
    np.testing.assert_allclose(haversine_km(lat[:, None], lon[:, None], lat[None], lon[None]).diagonal(), 0)


def test_radians_form_with_precomputed_cosine_is_the_same():
    lat, lon = np.radians([30.2, 31.0, -10.0]), np.radians([120.1, 121.5, 40.0])
    a = haversine_km_radians(lat, lon, np.radians(30.25), np.radians(120.15), cos_lat1=np.cos(lat))
    np.testing.assert_allclose(a, haversine_km(np.degrees(lat), np.degrees(lon), 30.25, 120.15))


@pytest.mark.parametrize("text, minutes", [("00:00", 0), ("9:05", 545), (" 17:30 ", 1050), ("24:00", 1440)])
def test_hhmm_parses(text, minutes):
    assert hhmm_to_minutes(text) == minutes
    assert hhmm_column_to_minutes(pd.Series([text])).tolist() == [minutes]


@pytest.mark.parametrize("bad", ["9", "9:5", "25:00", "12:60", "24:30", "ab:cd", "", "-1:00"])
def test_bad_times_name_the_value(bad):
    with pytest.raises(ValueError, match="time of day"):
        hhmm_to_minutes(bad)
    with pytest.raises(ValueError, match="time of day"):
        hhmm_column_to_minutes(pd.Series(["10:00", bad]))


def test_minutes_to_hhmm_round_trips():
    assert [minutes_to_hhmm(hhmm_to_minutes(t)) for t in ("08:15", "23:59")] == ["08:15", "23:59"]
