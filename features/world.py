"""The synthetic world: the destination (Hangzhou), its districts and POIs, carrier areas,
and the home cities visitors come from.

Coordinates are real-ish (district centres and cities are where they are on a map); POIs
are scattered around district centres. Everything random here is drawn from the `rng` the
caller passes, so a seed fixes the world.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wenlv.features.contracts import POI_CATEGORIES
from wenlv.geo import haversine_km
from wenlv.timeofday import hhmm_to_minutes

DESTINATION = "Hangzhou"
DEST_LAT, DEST_LON = 30.2741, 120.1551
KM_PER_DEG_LAT = 111.0

CAT = {c: i for i, c in enumerate(POI_CATEGORIES)}


@dataclass(frozen=True)
class District:
    name: str
    lat: float
    lon: float
    spread_km: float
    mix: tuple[float, ...]  # relative weight of each POI category (POI_CATEGORIES order)


#                                                          scenic museum heritage theme hotel rest night
DISTRICTS = (
    District("West Lake", 30.2460, 120.1500, 1.8, (5.0, 2.0, 1.0, 0.0, 2.5, 3.0, 0.5)),
    District("Hubin-Wushan", 30.2470, 120.1690, 1.0, (0.5, 1.0, 4.0, 0.0, 3.0, 4.0, 2.5)),
    District("Lingyin-Longjing", 30.2380, 120.1000, 2.2, (4.0, 1.5, 1.0, 0.0, 1.0, 1.5, 0.0)),
    District("Xixi Wetland", 30.2700, 120.0650, 1.8, (3.0, 0.5, 0.5, 0.0, 1.5, 1.0, 0.0)),
    District("Grand Canal-Gongshu", 30.3180, 120.1450, 1.5, (1.0, 3.0, 3.0, 0.0, 1.5, 2.5, 1.0)),
    District("Wulin", 30.2750, 120.1650, 1.1, (0.2, 0.8, 1.0, 0.0, 3.0, 4.0, 3.0)),
    District("Qianjiang New Town", 30.2450, 120.2100, 1.4, (0.5, 1.0, 0.2, 0.0, 3.0, 3.0, 3.5)),
    District("Binjiang", 30.2080, 120.2100, 2.0, (0.5, 0.3, 0.2, 0.3, 2.0, 2.5, 1.0)),
    District("Songcheng-Xianghu", 30.1550, 120.1900, 3.5, (1.5, 0.5, 1.0, 3.0, 1.0, 1.0, 0.2)),
)


@dataclass(frozen=True)
class CategoryProfile:
    open_time: str
    close_time: str
    visit_minutes: tuple[int, int]  # typical duration range
    price_cny: tuple[float, float]  # typical spend range per person (hotel: per night)
    name_parts: tuple[str, ...]
    tags: tuple[str, ...]
    season: tuple[float, ...]  # monthly multiplier Jan..Dec of choosing this category on a trip day


PROFILES = {
    "scenic_area": CategoryProfile("06:30", "18:00", (90, 240), (0, 80), ("Lake", "Hill", "Garden", "Park", "Pagoda", "Spring", "Valley"),
                                   ("lake", "hiking", "photography", "garden", "tea", "temple", "sunset"),
                                   (0.7, 0.8, 1.2, 1.4, 1.2, 0.9, 0.8, 0.8, 1.0, 1.3, 1.3, 0.8)),
    "museum": CategoryProfile("09:00", "17:00", (60, 150), (0, 60), ("Museum", "Gallery", "Memorial Hall", "Art Centre"),
                              ("history", "art", "silk", "tea", "porcelain", "free-entry", "kids"),
                              (1.2, 1.2, 1.0, 0.9, 1.0, 1.1, 1.3, 1.3, 1.0, 0.9, 0.9, 1.2)),
    "heritage_street": CategoryProfile("09:00", "22:00", (60, 120), (30, 150), ("Old Street", "Lane", "Ancient Town", "Historic Block"),
                                       ("heritage", "shopping", "snacks", "crafts", "architecture"),
                                       (1.3, 1.4, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 1.0, 1.1, 1.0, 1.0)),
    "theme_park": CategoryProfile("09:30", "21:00", (240, 420), (180, 320), ("Paradise", "Adventure World", "Wonderland", "Theme Park"),
                                  ("family", "rides", "shows", "kids", "water-park"),
                                  (0.5, 0.8, 0.8, 0.9, 1.0, 1.3, 1.9, 1.9, 0.9, 1.0, 0.7, 0.6)),
    "hotel": CategoryProfile("00:00", "23:59", (600, 900), (280, 1400), ("Hotel", "Resort", "Inn", "Boutique Hotel", "Hostel"),
                             ("lake-view", "business", "family", "budget", "luxury", "spa"),
                             (1.0,) * 12),
    "restaurant": CategoryProfile("10:30", "21:30", (50, 110), (60, 320), ("Restaurant", "Noodle House", "Teahouse", "Kitchen", "Dumpling Bar"),
                                  ("hangbang-cuisine", "tea", "seafood", "vegetarian", "noodles", "michelin"),
                                  (1.0,) * 12),
    "nightlife": CategoryProfile("19:00", "02:00", (90, 200), (100, 320), ("Bar", "Club", "Livehouse", "Night Market", "Jazz Lounge"),
                                 ("bar", "live-music", "club", "night-market", "craft-beer"),
                                 (0.8, 0.9, 0.9, 1.0, 1.1, 1.2, 1.3, 1.3, 1.1, 1.0, 0.9, 1.1)),
}

# Relative share of each category among a destination's POIs (before district mixing).
CATEGORY_SHARE = np.array([0.14, 0.09, 0.08, 0.02, 0.22, 0.33, 0.12])

# Home cities: (name, lat, lon, weight in the hidden population). Hangzhou itself holds the locals.
HOME_CITIES = (
    ("Hangzhou", 30.2741, 120.1551, 22.0), ("Shanghai", 31.2304, 121.4737, 14.0), ("Suzhou", 31.2989, 120.5853, 5.0),
    ("Ningbo", 29.8683, 121.5440, 4.5), ("Shaoxing", 30.0023, 120.5810, 3.5), ("Jiaxing", 30.7469, 120.7555, 2.5),
    ("Huzhou", 30.8943, 120.0868, 2.0), ("Wenzhou", 27.9939, 120.6994, 3.0), ("Jinhua", 29.0790, 119.6474, 2.5),
    ("Taizhou", 28.6564, 121.4208, 2.0), ("Nanjing", 32.0603, 118.7969, 4.0), ("Wuxi", 31.4912, 120.3119, 2.5),
    ("Changzhou", 31.8107, 119.9741, 1.8), ("Hefei", 31.8206, 117.2272, 2.5), ("Nanchang", 28.6820, 115.8579, 1.5),
    ("Fuzhou", 26.0745, 119.2965, 1.5), ("Xiamen", 24.4798, 118.0894, 1.2), ("Wuhan", 30.5928, 114.3055, 2.5),
    ("Changsha", 28.2282, 112.9388, 1.6), ("Guangzhou", 23.1291, 113.2644, 2.5), ("Shenzhen", 22.5431, 114.0579, 2.5),
    ("Beijing", 39.9042, 116.4074, 3.5), ("Tianjin", 39.3434, 117.3616, 1.5), ("Jinan", 36.6512, 117.1201, 1.0),
    ("Qingdao", 36.0671, 120.3826, 1.2), ("Zhengzhou", 34.7466, 113.6254, 1.4), ("Xi'an", 34.3416, 108.9398, 1.4),
    ("Chengdu", 30.5728, 104.0668, 2.2), ("Chongqing", 29.5630, 106.5516, 1.8), ("Kunming", 25.0389, 102.7183, 0.8),
    ("Guiyang", 26.6470, 106.6302, 0.6), ("Nanning", 22.8170, 108.3665, 0.6), ("Shenyang", 41.8057, 123.4315, 0.9),
    ("Harbin", 45.8038, 126.5350, 0.7), ("Dalian", 38.9140, 121.6147, 0.8), ("Taiyuan", 37.8706, 112.5489, 0.6),
    ("Shijiazhuang", 38.0428, 114.5149, 0.7), ("Lanzhou", 36.0611, 103.8343, 0.4), ("Urumqi", 43.8256, 87.6168, 0.3),
    ("Hohhot", 40.8426, 111.7490, 0.3),
)

# Transit hubs in the destination: every out-of-town visitor passes one on arrival and departure.
TRANSIT_HUBS = (("Hangzhou East Railway Station", 30.2906, 120.2127), ("Hangzhou Railway Station", 30.2436, 120.1824),
                ("Xiaoshan International Airport", 30.2295, 120.4344))

CITY_BOX = (30.12, 30.36, 119.98, 120.32)  # lat_min, lat_max, lon_min, lon_max of background cells
CELL_DEG = 0.01  # carrier grid cell, about 1.1 km × 1.0 km here
# The radius every generated data set so far was drawn with: kept, so that a seed still
# gives the same people (home distances steer their behaviour); elsewhere geo.EARTH_RADIUS_KM.
GENERATOR_EARTH_RADIUS_KM = 6371.0


def home_cities() -> pd.DataFrame:
    df = pd.DataFrame(HOME_CITIES, columns=["city", "lat", "lon", "weight"])
    df["distance_km"] = haversine_km(df.lat, df.lon, DEST_LAT, DEST_LON, radius_km=GENERATOR_EARTH_RADIUS_KM)
    df["p"] = df.weight / df.weight.sum()
    return df


def build_pois(n: int, rng: np.random.Generator) -> pd.DataFrame:
    """`n` POIs in the districts; returns the contract columns plus hidden ones
    (`cat`, `district`, `quality`, `open_min`, `close_min`) the behaviour model uses."""
    mix = np.array([d.mix for d in DISTRICTS]) * CATEGORY_SHARE  # district × category
    # every category gets at least one POI, then the rest in proportion
    cats = list(range(len(POI_CATEGORIES)))
    cat_p = mix.sum(0) / mix.sum()
    cats += list(rng.choice(len(POI_CATEGORIES), size=n - len(cats), p=cat_p))
    cats = np.sort(np.array(cats[:n]))
    district = np.array([rng.choice(len(DISTRICTS), p=mix[:, c] / mix[:, c].sum()) for c in cats])
    d_lat = np.array([DISTRICTS[d].lat for d in district])
    d_lon = np.array([DISTRICTS[d].lon for d in district])
    spread = np.array([DISTRICTS[d].spread_km for d in district])
    lat = d_lat + rng.normal(0, 1, n) * spread / KM_PER_DEG_LAT
    lon = d_lon + rng.normal(0, 1, n) * spread / (KM_PER_DEG_LAT * np.cos(np.radians(DEST_LAT)))
    quality = rng.lognormal(0.0, 0.9, n)  # long-tailed popularity
    rows = []
    counters: dict[str, int] = {}
    for i in range(n):
        cat = POI_CATEGORIES[cats[i]]
        prof = PROFILES[cat]
        dname = DISTRICTS[district[i]].name
        counters[cat] = counters.get(cat, 0) + 1
        part = prof.name_parts[rng.integers(len(prof.name_parts))]
        name = f"{dname} {part} {counters[cat]}"
        lo, hi = prof.visit_minutes
        plo, phi = prof.price_cny
        price = 0.0 if (cat in ("museum", "scenic_area") and rng.random() < 0.35) else round(float(rng.uniform(plo, phi)), 0)
        tags = ";".join(sorted(rng.choice(prof.tags, size=min(2, len(prof.tags)), replace=False)))
        open_t, close_t = prof.open_time, prof.close_time
        if cat == "nightlife" and rng.random() < 0.4:
            close_t = "03:00"
        if cat == "restaurant" and rng.random() < 0.3:
            close_t = "22:30"
        rows.append((f"{DESTINATION[:2].upper()}{i + 1:06d}", name, cat, DESTINATION, round(float(lat[i]), 6), round(float(lon[i]), 6),
                     open_t, close_t, int(rng.integers(lo, hi + 1)), price, tags))
    pois = pd.DataFrame(rows, columns=["poi_id", "name", "category", "city", "lat", "lon", "open_time", "close_time",
                                       "visit_minutes", "price_cny", "tags"])
    pois["cat"] = cats
    pois["district"] = district
    pois["quality"] = quality
    pois["open_min"] = pois.open_time.map(hhmm_to_minutes)
    close = pois.close_time.map(hhmm_to_minutes)
    pois["close_min"] = np.where(close <= pois.open_min, close + 1440, close)  # past midnight
    return pois


def cell_of(lat, lon) -> tuple[np.ndarray, np.ndarray]:
    return np.floor(np.asarray(lat) / CELL_DEG).astype(np.int64), np.floor(np.asarray(lon) / CELL_DEG).astype(np.int64)


def area_id(ilat, ilon) -> list[str]:
    return [f"HZ-{a:04d}-{b:05d}" for a, b in zip(np.asarray(ilat), np.asarray(ilon))]


def build_areas(pois: pd.DataFrame, n_background: int, rng: np.random.Generator) -> tuple[pd.DataFrame, dict]:
    """Carrier cell areas: every grid cell holding a POI, the transit hubs, and `n_background`
    residential/office cells. Returns the areas table (plus hidden `kind`) and index maps:
    `poi_area` (area index per POI), `hub_areas`, `background_areas`."""
    plat, plon = cell_of(pois.lat.to_numpy(), pois.lon.to_numpy())
    hlat, hlon = cell_of([h[1] for h in TRANSIT_HUBS], [h[2] for h in TRANSIT_HUBS])
    cells: dict[tuple[int, int], str] = {}
    for a, b in zip(plat, plon):
        cells.setdefault((int(a), int(b)), "poi")
    for a, b in zip(hlat, hlon):
        cells.setdefault((int(a), int(b)), "hub")
    lat_min, lat_max, lon_min, lon_max = CITY_BOX
    all_lat = np.arange(int(lat_min / CELL_DEG), int(lat_max / CELL_DEG))
    all_lon = np.arange(int(lon_min / CELL_DEG), int(lon_max / CELL_DEG))
    free = [(int(a), int(b)) for a in all_lat for b in all_lon if (int(a), int(b)) not in cells]
    pick = rng.choice(len(free), size=min(n_background, len(free)), replace=False)
    for j in np.sort(pick):
        cells[free[j]] = "background"
    keys = sorted(cells)
    index = {k: i for i, k in enumerate(keys)}
    areas = pd.DataFrame({
        "area_id": area_id([k[0] for k in keys], [k[1] for k in keys]),
        "lat": [round((k[0] + 0.5) * CELL_DEG, 6) for k in keys],
        "lon": [round((k[1] + 0.5) * CELL_DEG, 6) for k in keys],
        "kind": [cells[k] for k in keys],
    })
    maps = {
        "poi_area": np.array([index[(int(a), int(b))] for a, b in zip(plat, plon)]),
        "hub_areas": np.array([index[(int(a), int(b))] for a, b in zip(hlat, hlon)]),
        "background_areas": np.array([i for i, k in enumerate(keys) if cells[k] == "background"]),
    }
    return areas, maps
