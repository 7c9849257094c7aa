"""Import real Flickr POI visits (Lim et al., IJCAI 2015; YFCC100M) into the tourism contract.

Input (`<source>/visits/userVisits-<CODE>*.csv`, `<source>/pois/POI-<CODE>.csv`): one row
per geo-tagged photo mapped to a POI, grouped by the authors into travel sequences
(`seqID`). A visit is a run of consecutive photos of one sequence at one POI: arrival =
first photo, departure = last photo.

Decisions (documented in features/README.md):
- Times. `dateTaken` is the camera's local wall-clock time, which the data set's authors
  turned into Unix seconds as if it were Melbourne time (their absurd dates fall on
  midnight AEST, and read that way the photos of every city peak in the afternoon). We
  convert back with Australia/Melbourne to recover the local time at the destination.
- Absurd timestamps: photos before 2000-01-01 (film scans, reset camera clocks) or after
  2014-12-31 (the data set was collected in 2014) are dropped and counted by reason.
- People. Flickr users have no phone number. `phone` holds the pseudonymous placeholder
  `flickr:<userID>`: it is NOT a phone number, cannot match any carrier or internet
  record, and marks the data as tourism-only (itinerary and recommendation evaluation).
  `visitor_id` = userID; age, origin unknown (null); consent_marketing = False (nobody
  agreed to be marketed to); created_at = the user's first kept photo.
- POIs. Themes map to contract categories (THEME_CATEGORY; Melbourne's sub-themes refine
  it); the original theme and sub-theme stay in `tags`. Opening hours and prices are not
  in the data: category defaults are used and tagged `hours:default;price:unknown`;
  `visit_minutes` is the mean observed duration of the POI's visits with two or more
  photos (as PersTour does; at least 15; the category default where there are none).
- Visits: spend_cny = 0 (unknown), channel = "app" (a shared photo).
"""
from __future__ import annotations

import io as _io
import urllib.parse
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.features.world import PROFILES
from wenlv.errors import WenlvError

CITY_NAMES = {"Toro": "Toronto", "Osak": "Osaka", "Glas": "Glasgow", "Edin": "Edinburgh", "Melb": "Melbourne",
              "Pert": "Perth", "Buda": "Budapest", "Delh": "Delhi", "Vien": "Vienna"}
SOURCE_TZ = "Australia/Melbourne"
VALID_FROM = datetime(2000, 1, 1)
VALID_UNTIL = datetime(2015, 1, 1)  # exclusive
MIN_VISIT_MINUTES = 15
PHONE_PLACEHOLDER = "flickr:"

THEME_CATEGORY = {
    "amusement": "theme_park", "sport": "theme_park",  # ticketed venues with long visits
    "entertainment": "nightlife",  # Osaka's Dotonbori, Namba, Amerikamura: going-out districts
    "park": "scenic_area", "beach": "scenic_area", "leisure/recreation": "scenic_area",
    "cultural": "museum", "museum": "museum", "place of assembly": "museum",
    "historical": "heritage_street", "structure": "heritage_street", "religion": "heritage_street",
    "place of worship": "heritage_street", "shopping": "heritage_street", "retail": "heritage_street",
    "mixed use": "heritage_street", "education": "heritage_street", "education centre": "heritage_street",
    "transport": "heritage_street", "community use": "heritage_street", "office": "heritage_street",
    "purpose built": "theme_park", "specialist residential accommodation": "hotel",
}
SUBTHEME_CATEGORY = {  # Melbourne's finer sub-themes win over its theme
    "theatre live": "nightlife", "cinema": "nightlife", "casino": "nightlife",
    "art gallery/museum": "museum", "library": "museum", "aquarium": "theme_park",
    "major sports & recreation facility": "theme_park", "outdoor recreation facility (zoo, golf course)": "theme_park",
    "observation tower/wheel": "scenic_area", "hostel": "hotel", "hotel/motel": "hotel",
    "restaurant/cafe": "restaurant", "department store": "heritage_street",
}
FALLBACK_CATEGORY = "heritage_street"  # a landmark of an unmapped theme; counted in the summary


def _read_semicolon_csv(path: Path) -> pd.DataFrame:
    """`;`-separated, quoted, with CR, CRLF or LF line ends (mixed within a file)."""
    raw = path.read_bytes().replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return pd.read_csv(_io.BytesIO(raw), sep=";", quotechar='"', dtype=str, skipinitialspace=True)


def find_files(city: str, source: str | Path) -> tuple[Path, Path]:
    source = Path(source)
    visits = sorted((source / "visits").glob(f"userVisits-{city}*.csv"))
    pois = source / "pois" / f"POI-{city}.csv"
    if not visits:
        raise WenlvError(f"no visits file {source}/visits/userVisits-{city}*.csv (city codes look like Toro, Osak, Glas, Edin, Melb)")
    if len(visits) > 1:
        raise WenlvError(f"several visits files match city {city!r}: {', '.join(p.name for p in visits)}")
    if not pois.exists():
        raise WenlvError(f"no POI file {pois}")
    return visits[0], pois


def read_photos(path: Path) -> pd.DataFrame:
    df = _read_semicolon_csv(path)
    need = ["photoID", "userID", "dateTaken", "poiID", "poiTheme", "seqID"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise WenlvError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    return df


def read_pois(path: Path) -> pd.DataFrame:
    """Both layouts: `poiID;poiName;lat;long;theme` and Melbourne's `poiID;theme;subTheme;poiName;lat;long`."""
    df = _read_semicolon_csv(path)
    need = ["poiID", "poiName", "lat", "long", "theme"]
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise WenlvError(f"{path}: missing column(s) {missing}; found {list(df.columns)}")
    if "subTheme" not in df.columns:
        df["subTheme"] = None
    df["lat"] = pd.to_numeric(df.lat.str.strip(), errors="raise")
    df["long"] = pd.to_numeric(df.long.str.strip(), errors="raise")
    return df


def local_times(unix_seconds: pd.Series) -> pd.Series:
    """The camera's local time (see module doc)."""
    utc = pd.to_datetime(unix_seconds, unit="s", utc=True)
    return utc.dt.tz_convert(SOURCE_TZ).dt.tz_localize(None).astype("datetime64[us]")


def category_of(theme: str, sub_theme: str | None) -> tuple[str, bool]:
    """(category, mapped?) — mapped is False when the fallback was used."""
    if isinstance(sub_theme, str) and sub_theme.strip().lower() in SUBTHEME_CATEGORY:
        return SUBTHEME_CATEGORY[sub_theme.strip().lower()], True
    key = str(theme).strip().lower()
    if key in THEME_CATEGORY:
        return THEME_CATEGORY[key], True
    return FALLBACK_CATEGORY, False


def build(city: str, source: str | Path) -> tuple[dict[str, pd.DataFrame], dict]:
    """The tourism tables (pois, visitors, visits) of one city and a summary of what was read and dropped."""
    visits_path, pois_path = find_files(city, source)
    photos = read_photos(visits_path)
    read = {"rows_read": len(photos), "users_read": int(photos.userID.nunique()),
            "pois_read": int(photos.poiID.nunique()), "sequences_read": int(photos.seqID.nunique())}
    dropped = {}
    seconds = pd.to_numeric(photos.dateTaken, errors="coerce")
    bad = seconds.isna()
    dropped["unparseable_time"] = int(bad.sum())
    photos = photos[~bad].assign(seconds=seconds[~bad].astype("int64"))
    when = local_times(photos.seconds)
    early, late = when < VALID_FROM, when >= VALID_UNTIL
    dropped["before_2000"] = int(early.sum())
    dropped["after_2014"] = int(late.sum())
    photos = photos[~(early | late)].assign(taken=when[~(early | late)])
    poi_table = read_pois(pois_path)
    unknown_poi = ~photos.poiID.isin(poi_table.poiID)
    dropped["unknown_poi"] = int(unknown_poi.sum())
    photos = photos[~unknown_poi]

    # visits: runs of consecutive photos of one sequence at one POI
    photos = photos.assign(seq=photos.seqID.astype("int64"), pid=photos.photoID.astype("int64"))
    photos = photos.sort_values(["userID", "seq", "taken", "pid"], kind="stable").reset_index(drop=True)
    new_run = (photos.seq.ne(photos.seq.shift()) | photos.poiID.ne(photos.poiID.shift())
               | photos.userID.ne(photos.userID.shift()))
    photos["run"] = new_run.cumsum()
    runs = photos.groupby("run", sort=True).agg(userID=("userID", "first"), seq=("seq", "first"), poiID=("poiID", "first"),
                                                 arrived_at=("taken", "min"), departed_at=("taken", "max"),
                                                 photos=("pid", "size"))
    runs["k"] = runs.groupby("seq").cumcount() + 1
    visits = pd.DataFrame({
        "visit_id": runs.seq.astype(str) + "." + runs.k.astype(str),
        "visitor_id": runs.userID.to_numpy(),
        "poi_id": runs.poiID.to_numpy(),
        "arrived_at": runs.arrived_at.to_numpy(),
        "departed_at": runs.departed_at.to_numpy(),
        "spend_cny": 0.0,
        "channel": "app",
    })

    # POIs that the kept photos touch, with observed durations
    minutes = (runs.departed_at - runs.arrived_at).dt.total_seconds() / 60
    multi = runs.photos >= 2  # a one-photo visit says nothing about its length
    mean_minutes = minutes[multi].groupby(runs.poiID[multi].to_numpy()).mean()
    seen = poi_table[poi_table.poiID.isin(runs.poiID)].copy()
    mapped = [category_of(t, s) for t, s in zip(seen.theme, seen.subTheme)]
    seen["category"] = [m[0] for m in mapped]
    unmapped_themes = sorted({t for (c, ok), t in zip(mapped, seen.theme) if not ok})
    prof = seen.category.map(PROFILES)
    tags = ("theme:" + seen.theme.str.strip() + np.where(seen.subTheme.notna(), ";subtheme:" + seen.subTheme.fillna("").str.strip(), "")
            + ";hours:default;price:unknown;source:flickr-ijcai15")
    pois = pd.DataFrame({
        "poi_id": seen.poiID.to_numpy(),
        "name": [urllib.parse.unquote(n).replace("_", " ").strip() for n in seen.poiName],
        "category": seen.category.to_numpy(),
        "city": CITY_NAMES.get(city, city),
        "lat": seen.lat.to_numpy(),
        "lon": seen.long.to_numpy(),
        "open_time": [p.open_time for p in prof],
        "close_time": [p.close_time for p in prof],
        "visit_minutes": np.maximum(MIN_VISIT_MINUTES, np.rint(seen.poiID.map(mean_minutes).fillna(
            pd.Series([sum(p.visit_minutes) / 2 for p in prof], index=seen.index)))).astype("int64"),
        "price_cny": 0.0,
        "tags": tags.to_numpy(),
    })
    pois = pois.sort_values("poi_id", key=lambda s: s.astype("int64")).reset_index(drop=True)

    firsts = runs.groupby("userID").arrived_at.min()
    visitors = pd.DataFrame({
        "visitor_id": firsts.index.to_numpy(),
        "phone": PHONE_PLACEHOLDER + firsts.index.to_series().to_numpy(),
        "age_band": None, "origin_city": None, "consent_marketing": False,
        "created_at": firsts.to_numpy(),
    })
    summary = {
        "city": city, "city_name": CITY_NAMES.get(city, city), "visits_file": visits_path.name, "pois_file": pois_path.name,
        **read, "photos_dropped": dropped, "photos_kept": int(len(photos)),
        "visits": int(len(visits)), "users": int(len(visitors)), "pois": int(len(pois)),
        "sequences": int(runs.seq.nunique()), "pois_in_file": int(len(poi_table)),
        "unmapped_themes": unmapped_themes,
        "time_range": [str(visits.arrived_at.min()), str(visits.departed_at.max())] if len(visits) else None,
    }
    return {"pois": pois, "visitors": visitors, "visits": visits}, summary


def import_city(city: str, source: str | Path, out: str | Path) -> dict:
    """Write `<out>/tourism/{pois,visitors,visits}.parquet` for one city; returns the summary."""
    tables, summary = build(city, source)
    for table in (C.POIS, C.VISITORS, C.VISITS):
        io.write_table(out, table, tables[table.name])
    summary["out"] = str(out)
    return summary
