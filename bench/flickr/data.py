"""The Flickr trajectories of one city: the CIKM'16 trajectory files or the IJCAI'15 visits."""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from wenlv.errors import DataValidationError


@dataclass
class CityData:
    city: str
    poi_ids: np.ndarray  # original ids; index = position
    category: np.ndarray  # int code per POI
    lat: np.ndarray
    lon: np.ndarray
    trajs: list[list[int]]  # POI positions, in visiting order
    users: list[str]
    durations: list[list[float]]  # seconds per visit
    dropped: dict


def load_trajectories(data_dir: str | Path, city: str) -> CityData:
    """The authors' trajectory files: trajectories/traj-CITY.csv and trajectories/poi-CITY.csv."""
    base = Path(data_dir) / "trajectories"
    poi_file, traj_file = base / f"poi-{city}.csv", base / f"traj-{city}.csv"
    for f in (poi_file, traj_file):
        if not f.exists():
            raise DataValidationError(str(f), None, None, "file not found")
    with poi_file.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    ids = [int(r["poiID"]) for r in rows]
    index = {p: i for i, p in enumerate(ids)}
    cats = sorted({r["poiCat"] for r in rows})
    trips: dict[int, list] = {}
    with traj_file.open(newline="") as fh:
        for n, r in enumerate(csv.DictReader(fh), start=2):
            poi = int(r["poiID"])
            if poi not in index:
                raise DataValidationError(str(traj_file), n, "poiID", f"POI {poi} is not in {poi_file.name}")
            trips.setdefault(int(r["trajID"]), []).append(
                (float(r["startTime"]), index[poi], r["userID"], float(r["poiDuration"])))
    trajs, users, durs = [], [], []
    for tid in sorted(trips):
        visits = sorted(trips[tid], key=lambda v: v[0])
        trajs.append([v[1] for v in visits])
        users.append(visits[0][2])
        durs.append([v[3] for v in visits])
    return CityData(city, np.array(ids), np.array([cats.index(r["poiCat"]) for r in rows]),
                    np.array([float(r["poiLat"]) for r in rows]), np.array([float(r["poiLon"]) for r in rows]),
                    trajs, users, durs, {"rows": 0})


MIN_YEAR_SECONDS, MAX_YEAR_SECONDS = 946684800, 1893456000  # 2000-01-01 .. 2030-01-01


def load_visits(data_dir: str | Path, city: str) -> CityData:
    """The IJCAI'15 visit format: userVisits-CITY*.csv (photos) and POI-CITY.csv.

    A trajectory is one seqID; consecutive photos at the same POI are one visit (arrival =
    first photo, departure = last). Photos with absurd timestamps are dropped and counted.
    """
    base = Path(data_dir)
    visit_files = sorted(base.glob(f"**/userVisits-{city}*.csv"))
    poi_files = sorted(base.glob(f"**/POI-{city}.csv"))
    if not visit_files or not poi_files:
        raise DataValidationError(str(base), None, None, f"need userVisits-{city}*.csv and POI-{city}.csv under it")
    poi_rows = _read_semicolon(poi_files[0])
    ids = [int(r["poiID"]) for r in poi_rows]
    index = {p: i for i, p in enumerate(ids)}
    cat_col = "theme" if "theme" in poi_rows[0] else "poiTheme"
    cats = sorted({r[cat_col] for r in poi_rows})
    photos: dict[int, list] = {}
    dropped = {"bad_time": 0, "unknown_poi": 0}
    for n, r in enumerate(_read_semicolon(visit_files[0]), start=2):
        try:
            t, poi, seq = float(r["dateTaken"]), int(r["poiID"]), int(r["seqID"])
        except (KeyError, ValueError):
            raise DataValidationError(str(visit_files[0]), n, None, "cannot read dateTaken/poiID/seqID") from None
        if not MIN_YEAR_SECONDS <= t <= MAX_YEAR_SECONDS:
            dropped["bad_time"] += 1
            continue
        if poi not in index:
            dropped["unknown_poi"] += 1
            continue
        photos.setdefault(seq, []).append((t, index[poi], r["userID"]))
    trajs, users, durs = [], [], []
    for seq in sorted(photos):
        shots = sorted(photos[seq])
        visits: list[list] = []
        for t, poi, _ in shots:
            if visits and visits[-1][0] == poi:
                visits[-1][2] = t
            else:
                visits.append([poi, t, t])
        trajs.append([v[0] for v in visits])
        users.append(shots[0][2])
        durs.append([v[2] - v[1] for v in visits])
    lat_col, lon_col = "lat", "long" if "long" in poi_rows[0] else "lon"
    return CityData(city, np.array(ids), np.array([cats.index(r[cat_col]) for r in poi_rows]),
                    np.array([float(r[lat_col]) for r in poi_rows]), np.array([float(r[lon_col]) for r in poi_rows]),
                    trajs, users, durs, dropped)


def _read_semicolon(path: Path) -> list[dict]:
    text = path.read_bytes().decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "\n")
    rows = list(csv.DictReader(text.splitlines(), delimiter=";", quotechar='"'))
    return [{k.strip(): (unquote(v).strip() if isinstance(v, str) else v) for k, v in r.items()} for r in rows]
