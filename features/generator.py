"""The synthetic three-party data set: one hidden population, three parties' raw tables.

`generate(out, scale, seed)` writes `<out>/{tourism,carrier,internet}/*.parquet` per the
contracts, `<out>/truth/{people,future_visits}.parquet`, `<out>/truth/meta.json` (hidden
figures) and `<out>/meta.json` (the timeline and default split that jobs may use).
People are generated in chunks (one Parquet row group per chunk and table), each chunk
from its own random stream spawned from the seed, so memory stays flat at any scale and
the same seed gives byte-identical files.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.features.behaviour import NOISE_TOPICS, TOPICS, draw_engagement, draw_exposure, draw_presence, draw_trips, draw_visits, trip_rate
from wenlv.features.calendar import DEFAULT_TIMELINE, Timeline, day_profile
from wenlv.features.population import IdScheme, draw_people
from wenlv.features.world import DESTINATION, build_areas, build_pois, home_cities
from wenlv.features.contracts import AGE_BANDS, CHANNELS
from wenlv.errors import WenlvError
from wenlv.staging import staged_folder

GENERATOR_VERSION = "1"


@dataclass(frozen=True)
class Scale:
    people: int
    pois: int
    background_areas: int
    chunk: int = 100_000


SCALES = {
    "tiny": Scale(2_000, 60, 40, chunk=2_000),
    "small": Scale(50_000, 1_000, 200),
    "medium": Scale(1_000_000, 10_000, 400),
    "large": Scale(20_000_000, 50_000, 800),
}
TRIP_RATE = 7.0  # trips a year for a local of average activity: calibrated to ~10 visits per person
STROLL_RATE = 3.0  # passes by POIs without a ticket, same scaling
MEMBER_WITHOUT_VISITS = 0.03  # registered (membership, app) but no recorded visit in the timeline


def generate(out: str | Path, scale: str = "tiny", seed: int = 7, timeline: Timeline = DEFAULT_TIMELINE,
             progress: bool = True, people: int | None = None) -> dict:
    """Write the data set; returns a summary (row counts per table, seconds, bytes).
    `people` overrides the scale's head count (e.g. a denser tiny world for statistical tests)."""
    if scale not in SCALES:
        raise WenlvError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    sc = SCALES[scale]
    if people is not None:
        if people < 1:
            raise WenlvError(f"people must be positive, got {people}")
        sc = replace(sc, people=people)
    out = Path(out)
    if not _replaceable(out):  # a folder with other content: write the tables into it, each one atomically
        return _generate(out, out, scale, sc, seed, timeline, progress)
    with staged_folder(out) as staging:  # a failed run leaves the earlier data as it was
        return _generate(staging, out, scale, sc, seed, timeline, progress)


def _replaceable(out: Path) -> bool:
    """Nothing there yet, or an earlier generator run (which a new run replaces whole)."""
    if not out.exists():
        return True
    if not out.is_dir():
        raise WenlvError(f"{out} is a file, not a data folder")
    meta = out / "meta.json"
    if not any(out.iterdir()):
        return True
    try:
        return meta.is_file() and json.loads(meta.read_text()).get("generator") == "wenlv.features.generator"
    except ValueError:
        return False


def _generate(out: Path, shown: Path, scale: str, sc, seed: int, timeline: Timeline, progress: bool) -> dict:
    """Write every table into `out` (the staging folder or the target); the summary names `shown`."""
    started = time.perf_counter()
    root = np.random.SeedSequence(seed)
    world_seq, ids_seq, chunks_seq = root.spawn(3)
    world_rng = np.random.default_rng(world_seq)
    pois = build_pois(sc.pois, world_rng)
    areas, area_maps = build_areas(pois, sc.background_areas, world_rng)
    cities = home_cities()
    ids = IdScheme.draw(np.random.default_rng(ids_seq))
    cal = day_profile(tl := timeline)
    n_chunks = -(-sc.people // sc.chunk)
    chunk_seqs = chunks_seq.spawn(n_chunks)

    io.write_table(out, C.POIS, pois[C.POIS.columns])
    io.write_table(out, C.AREAS, areas[C.AREAS.columns])
    writers = {t.qualified: io.TableWriter(out, t) for t in (C.VISITORS, C.VISITS, C.SUBSCRIBERS, C.PRESENCE,
                                                             C.ACCOUNTS, C.ENGAGEMENT, C.TRUTH_PEOPLE, C.TRUTH_FUTURE)}
    hidden = {"visits_dropped_closed": 0, "prospects": 0, "people_with_visits": 0}
    bar = tqdm(total=sc.people, desc=f"datagen {scale}", unit="people", file=sys.stderr, disable=not progress)
    try:
        _write_chunks(writers, hidden, n_chunks, chunk_seqs, sc, pois, areas, area_maps, cities, ids, tl, cal, bar)
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    bar.close()
    rows = {"tourism.pois": len(pois), "carrier.areas": len(areas)}
    for name, w in writers.items():
        w.close()
        rows[name] = w.rows
    meta = {"generator": "wenlv.features.generator", "generator_version": GENERATOR_VERSION, "scale": scale,
            "seed": seed, "people": sc.people, "schema_version": C.SCHEMA_VERSION, "destination": DESTINATION, **tl.meta(),
            "topics": list(TOPICS)}
    _write_json(out / "meta.json", meta)
    _write_json(out / "truth" / "meta.json", {**meta, "rows": rows, **hidden, "trip_rate": TRIP_RATE})
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {"scale": scale, "seed": seed, "out": str(shown), "rows": rows, "seconds": round(seconds, 2),
            "bytes": size, **tl.meta(), "prospects": hidden["prospects"]}


def _write_chunks(writers, hidden, n_chunks, chunk_seqs, sc, pois, areas, area_maps, cities, ids, tl, cal, bar) -> None:
    """Draw the people chunk by chunk and append their rows to the writers."""
    visit_offset = 0
    for c in range(n_chunks):
        rng = np.random.default_rng(chunk_seqs[c])
        start = c * sc.chunk
        n = min(sc.chunk, sc.people - start)
        folk = draw_people(start, n, cities, tl.days, len(NOISE_TOPICS), rng)
        exposure = draw_exposure(folk, tl.days, rng)
        trips = draw_trips(folk, exposure, tl.days, cal, TRIP_RATE, rng)
        visits = draw_visits(folk, trips, pois, cal, rng)
        presence = draw_presence(folk, exposure, trips, visits, pois, area_maps, len(areas), tl.days, STROLL_RATE, rng)
        engagement = draw_engagement(folk, trips, visits, pois, tl.days, rng)
        tables, stats = _chunk_tables(folk, trips, visits, presence, engagement, pois, areas, cities, ids, tl,
                                      visit_offset, rng)
        for name, table in tables.items():
            writers[name].write(table)
        visit_offset += len(visits.person)
        hidden["visits_dropped_closed"] += visits.dropped_closed
        for k, v in stats.items():
            hidden[k] += v
        bar.update(n)


def _write_json(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def _strings(prefix: str, numbers: np.ndarray, width: int) -> pa.Array:
    digits = pc.utf8_lpad(pc.cast(pa.array(numbers, pa.int64()), pa.string()), width, padding="0")
    return pc.binary_join_element_wise(pa.scalar(prefix), digits, "")


def _json_lists(matrix: np.ndarray, decimals: int) -> pa.Array:
    """Each row as a JSON list of rounded floats, e.g. "[0.1234,0.5]" (vectorised)."""
    cols = [pc.cast(pc.round(pa.array(matrix[:, j]), decimals), pa.string()) for j in range(matrix.shape[1])]
    return pc.binary_join_element_wise(pa.scalar("["), pc.binary_join_element_wise(*cols, ","), pa.scalar("]"), "")


def _timestamps(tl: Timeline, minutes: np.ndarray) -> pa.Array:
    us = (tl.epoch_day() * 1440 + np.asarray(minutes, dtype=np.int64)) * 60_000_000
    return pa.array(us, pa.int64()).cast(pa.timestamp("us"))


def _dates(tl: Timeline, days: np.ndarray) -> pa.Array:
    return pa.array((tl.epoch_day() + np.asarray(days, dtype=np.int64)).astype(np.int32), pa.int32()).cast(pa.date32())


def _chunk_tables(people, trips, visits, presence, engagement, pois, areas, cities, ids: IdScheme, tl: Timeline,
                  visit_offset: int, rng: np.random.Generator):
    """The contract tables of one chunk, as arrow tables keyed by `party.table`."""
    n = people.n
    phone = _strings("", ids.phones(people.index), 13)
    city_names = cities.city.to_numpy(dtype=object)
    age = np.array(AGE_BANDS, dtype=object)[people.age]

    # tourism.visitors: everyone with a visit, plus a few members without one
    n_visits = np.bincount(visits.person, minlength=n)
    first = np.full(n, np.iinfo(np.int64).max)
    np.minimum.at(first, visits.person, visits.arrive)
    is_visitor = (n_visits > 0) | (rng.random(n) < MEMBER_WITHOUT_VISITS)
    split_min = tl.split_index * 1440
    has_pre = first < split_min
    visits_test = np.bincount(visits.person[visits.arrive >= split_min], minlength=n)
    prospect = (~has_pre) & (visits_test > 0)
    # registration: long-standing members, or shortly before the first visit (prospects: after the split)
    lead = rng.integers(0, 14 * 1440, n)
    daytime = rng.integers(8 * 60, 23 * 60, n)  # people sign up while awake
    created = np.where((rng.random(n) < 0.4) & has_pre, -1440 * rng.integers(1, 3 * 365, n) + daytime,
                       np.where(n_visits > 0, first - lead, 1440 * rng.integers(0, tl.days, n) + daytime))
    created = np.where(prospect, np.maximum(created, split_min), created)
    created = np.minimum(created, np.where(n_visits > 0, first, created))
    v = np.flatnonzero(is_visitor)
    origin = np.where(rng.random(n) < 0.05, None, city_names[people.home])
    visitors = pa.table({
        "visitor_id": _strings("V", ids.visitor_ids(people.index[v]), 9),
        "phone": phone.take(pa.array(v)),
        "age_band": pa.array(np.where(rng.random(n) < 0.04, None, age)[v], pa.string()),
        "origin_city": pa.array(origin[v], pa.string()),
        "consent_marketing": people.consent_marketing[v],
        "created_at": _timestamps(tl, created[v]),
    })
    vid_all = _strings("V", ids.visitor_ids(people.index), 9)
    nv = len(visits.person)
    visits_tbl = pa.table({
        "visit_id": _strings("S", np.arange(visit_offset, visit_offset + nv), 10),
        "visitor_id": vid_all.take(pa.array(visits.person)),
        "poi_id": pa.array(pois.poi_id.to_numpy(dtype=object)[visits.poi], pa.string()),
        "arrived_at": _timestamps(tl, visits.arrive),
        "departed_at": _timestamps(tl, visits.depart),
        "spend_cny": visits.spend.astype(float),
        "channel": pa.array(np.array(CHANNELS, dtype=object)[visits.channel], pa.string()),
    })

    # carrier
    s = np.flatnonzero(people.is_subscriber)
    inferred = np.where(rng.random(n) < 0.03, city_names[rng.integers(0, len(city_names), n)], city_names[people.home])
    subscribers = pa.table({
        "phone": phone.take(pa.array(s)),
        "home_city": pa.array(inferred[s], pa.string()),
        "age_band": pa.array(np.where(rng.random(n) < 0.02, None, age)[s], pa.string()),
        "gender": pa.array(np.where(rng.random(n) < 0.02, None, np.array(["F", "M"], dtype=object)[people.gender])[s], pa.string()),
        "arpu_tier": people.arpu_tier[s],
        "consent_partner_share": people.consent_partner_share[s],
    })
    p_person, p_area, p_day, p_dwell = presence
    presence_tbl = pa.table({
        "phone": phone.take(pa.array(p_person)),
        "area_id": pa.array(areas.area_id.to_numpy(dtype=object)[p_area], pa.string()),
        "date": _dates(tl, p_day),
        "dwell_minutes": p_dwell,
    })

    # internet
    a = np.flatnonzero(people.has_account)
    acc_all = _strings("A", ids.account_ids(people.index), 9)
    accounts = pa.table({"account_id": acc_all.take(pa.array(a)), "phone": phone.take(pa.array(a)),
                         "consent_ads": people.consent_ads[a]})
    e_person, e_topic, e_day, e_events = engagement
    engagement_tbl = pa.table({
        "account_id": acc_all.take(pa.array(e_person)),
        "topic": pa.array(np.array(TOPICS, dtype=object)[e_topic], pa.string()),
        "date": _dates(tl, e_day),
        "events": e_events,
    })

    # truth
    rate_test = trip_rate(people, TRIP_RATE) * tl.test_days / 365.0
    base_p = 1 - np.exp(-rate_test)
    response = np.clip(people.responsiveness * (0.05 + 0.6 * np.sqrt(base_p)), 0, 1)
    truth_people = pa.table({
        "person_id": _strings("P", people.index, 8),
        "phone": phone,
        "home_city": pa.array(city_names[people.home], pa.string()),
        "home_distance_km": np.round(people.distance_km, 2),
        "taste": _json_lists(people.taste, 4),
        "is_prospect": prospect,
        "campaign_response": np.round(response, 5),
    })
    fut = np.flatnonzero(visits.arrive >= split_min)
    future = pa.table({
        "person_id": _strings("P", people.index[visits.person[fut]], 8),
        "poi_id": pa.array(pois.poi_id.to_numpy(dtype=object)[visits.poi[fut]], pa.string()),
        "arrived_at": _timestamps(tl, visits.arrive[fut]),
    })
    tables = {"tourism.visitors": visitors, "tourism.visits": visits_tbl, "carrier.subscribers": subscribers,
              "carrier.presence": presence_tbl, "internet.accounts": accounts, "internet.engagement": engagement_tbl,
              "truth.people": truth_people, "truth.future_visits": future}
    return tables, {"prospects": int(prospect.sum()), "people_with_visits": int((n_visits > 0).sum())}
