"""What people do: trips and POI visits (tourism), where their phones are (carrier presence),
and what they read online (internet engagement) — all from the same latent tastes and trips,
so carrier and internet data carry real signal about tourism behaviour.

Times are minutes since the timeline start (local); days are day indices into the timeline.
All functions are vectorised over a chunk of people.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wenlv.features.calendar import DayProfile
from wenlv.features.contracts import POI_CATEGORIES
from wenlv.features.population import People, distance_decay
from wenlv.features.world import PROFILES

HOTEL = POI_CATEGORIES.index("hotel")
RESTAURANT = POI_CATEGORIES.index("restaurant")
NIGHTLIFE = POI_CATEGORIES.index("nightlife")
CATEGORY_SEASON = np.array([PROFILES[c].season for c in POI_CATEGORIES]).T  # month × category

# Internet topics: those that mirror a POI category, generic travel ones, and unrelated noise.
CATEGORY_TOPICS = {
    "scenic_area": ("scenery", "hiking"), "museum": ("museum", "history"), "heritage_street": ("history", "shopping"),
    "theme_park": ("theme_park", "family"), "hotel": ("hotel_deals",), "restaurant": ("food",),
    "nightlife": ("nightlife", "music"),
}
TRAVEL_TOPICS = ("travel_guides", "train_tickets", "hotel_deals")
NOISE_TOPICS = ("sports", "finance", "gaming", "fashion", "tech", "parenting", "cars", "pets", "celebrity", "health")
TOPICS = tuple(dict.fromkeys([t for c in POI_CATEGORIES for t in CATEGORY_TOPICS[c]] + list(TRAVEL_TOPICS) + list(NOISE_TOPICS)))
TOPIC_INDEX = {t: i for i, t in enumerate(TOPICS)}
NEAR_KM = 80.0  # closer than this, trips are day trips
LOCAL_KM = 60.0  # closer than this, people live in the destination
SCOUTING_SHARE = 0.6  # of remote people whose interest starts mid-year, the share who first come to look around
BUSINESS_RATE = 0.8  # non-tourist stays a year of a remote person of median mobility (before distance decay)
FAMILIARITY = 2.0  # trip-rate multiplier once a remote person has stayed in the destination


@dataclass
class Trips:
    person: np.ndarray  # local index into the chunk
    start_day: np.ndarray
    days: np.ndarray
    far: np.ndarray  # bool: came from beyond NEAR_KM


@dataclass
class Exposure:
    """Non-tourist stays in the destination (business, family, transit) of people living
    elsewhere, and each person's first day of familiarity with the place (locals: day 0;
    never: n_days). Familiarity raises the trip rate, so the carrier, which sees these
    stays, can tell who is likely to come back as a tourist."""

    person: np.ndarray
    day: np.ndarray
    first_day: np.ndarray  # per person


@dataclass
class Visits:
    person: np.ndarray
    trip: np.ndarray
    poi: np.ndarray
    arrive: np.ndarray  # minutes since timeline start
    depart: np.ndarray
    spend: np.ndarray
    channel: np.ndarray  # index into contracts.CHANNELS
    dropped_closed: int = 0  # planned visits skipped because the POI had closed by then


def trip_rate(people: People, base_rate: float) -> np.ndarray:
    """Expected trips per year once interested (distance decay × personal activity)."""
    return base_rate * people.activity * distance_decay(people.distance_km)


def draw_exposure(people: People, n_days: int, rng: np.random.Generator) -> Exposure:
    """Business/family stays of non-locals (rate decays slowly with distance), plus a first
    look around soon after a mid-year onset of interest for SCOUTING_SHARE of those people."""
    remote = people.distance_km >= LOCAL_KM
    mobility = np.sqrt(people.activity) * rng.lognormal(-0.3, 0.8, people.n)  # who travels for work travels for fun
    rate = BUSINESS_RATE * mobility * distance_decay(people.distance_km) ** 0.4 * remote
    k = rng.poisson(rate * n_days / 365.0)
    person = np.repeat(np.arange(people.n), k)
    day = rng.integers(0, n_days, len(person))
    scout = np.flatnonzero(remote & (people.onset_day > 0) & (rng.random(people.n) < SCOUTING_SHARE))
    person = np.concatenate([person, scout])
    day = np.concatenate([day, people.onset_day[scout] + rng.integers(0, 21, len(scout))])
    keep = day < n_days
    person, day = person[keep], day[keep]
    first = np.where(remote, n_days, 0)
    np.minimum.at(first, person, day)
    return Exposure(person, day, first)


def _days_between(cum: np.ndarray, lo: np.ndarray, hi: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A day in [lo, hi) for each row, drawn with the calendar weights whose cumsum is `cum`."""
    c_lo = np.where(lo > 0, cum[np.maximum(lo - 1, 0)], 0.0)
    c_hi = cum[np.maximum(hi - 1, 0)]
    u = c_lo + rng.random(len(lo)) * (c_hi - c_lo)
    return np.clip(np.searchsorted(cum, u, side="right"), lo, np.maximum(hi - 1, lo))


def draw_trips(people: People, exposure: Exposure, n_days: int, cal: DayProfile, base_rate: float,
               rng: np.random.Generator) -> Trips:
    """Trips after the onset of interest; the rate is FAMILIARITY times higher once a remote
    person has stayed in the destination before (exposure)."""
    lam = trip_rate(people, base_rate) / 365.0
    pieces = []
    for lo, hi, boost in ((people.onset_day, np.maximum(people.onset_day, exposure.first_day), 1.0),
                          (np.maximum(people.onset_day, exposure.first_day), np.full(people.n, n_days), FAMILIARITY)):
        boost = np.where(people.distance_km >= LOCAL_KM, boost, 1.0)
        n = rng.poisson(lam * boost * np.maximum(hi - lo, 0))
        who = np.repeat(np.arange(people.n), n)
        pieces.append((who, lo[who], hi[who]))
    person = np.concatenate([p[0] for p in pieces])
    lo = np.concatenate([p[1] for p in pieces])
    hi = np.concatenate([p[2] for p in pieces])
    dist = people.distance_km[person]
    far_cal = rng.random(len(person)) < dist / (dist + 250.0)
    # a trip starts on a day drawn from the calendar (near or far profile) within its period
    start = np.empty(len(person), dtype=np.int64)
    for weights, mask in ((cal.near_weight, ~far_cal), (cal.far_weight, far_cal)):
        start[mask] = _days_between(np.cumsum(weights), lo[mask], hi[mask], rng)
    order = np.lexsort((start, person))
    person, start, dist = person[order], start[order], dist[order]
    far = dist >= NEAR_KM
    extra = np.where(far, rng.poisson(0.2 + np.minimum(dist, 1500.0) / 500.0), (rng.random(len(person)) < 0.08).astype(int))
    length = np.minimum(1 + extra + (far & cal.holiday[start]).astype(int), 7)
    length = np.minimum(length, n_days - start)
    return Trips(person, start, length, far)


def draw_visits(people: People, trips: Trips, pois: pd.DataFrame, cal: DayProfile, rng: np.random.Generator) -> Visits:
    """Visits on each trip day: categories by taste × season, POIs by district preference ×
    quality, times sequenced through the day within opening hours; one hotel stay per
    multi-day trip."""
    n_trips = len(trips.person)
    # ---- day-level: one row per trip day
    day_trip = np.repeat(np.arange(n_trips), trips.days)
    day_offset = np.arange(len(day_trip)) - np.repeat(np.cumsum(trips.days) - trips.days, trips.days)
    day = trips.start_day[day_trip] + day_offset
    day_person = trips.person[day_trip]
    day_far = trips.far[day_trip]
    per_day = np.minimum(1 + rng.poisson(np.where(day_far, 1.8, 1.2)), 5)
    # ---- visit-level (non-hotel)
    v_day = np.repeat(np.arange(len(day)), per_day)
    v_person = day_person[v_day]
    v_dayidx = day[v_day]
    w = people.taste[v_person] * CATEGORY_SEASON[cal.month[v_dayidx]]
    w[:, HOTEL] = 0.0
    cat = _sample_rows(w, rng)
    poi = _sample_poi(cat, people.district_pref[v_person], pois, rng)
    # ---- times: attractions around lunch, dinner after them (45% of meals), nightlife last
    meal = np.where(rng.random(len(cat)) < 0.45, 1.5, 0.55)
    order = np.where(cat == NIGHTLIFE, 2.0, np.where(cat == RESTAURANT, meal, rng.random(len(cat)) * 1.1))
    sort = np.lexsort((order, v_day))
    v_day, v_person, v_dayidx, cat, poi = v_day[sort], v_person[sort], v_dayidx[sort], cat[sort], poi[sort]
    base_minutes = pois.visit_minutes.to_numpy()[poi]
    stay = 1 + 0.08 * np.log1p(people.distance_km[v_person] / 100.0)  # far travellers linger
    duration = np.maximum(10, np.rint(base_minutes * rng.lognormal(0, 0.3, len(poi)) * stay)).astype(np.int64)
    travel = rng.integers(15, 46, len(poi))
    day_start = 510 + rng.integers(0, 91, len(day)) + np.where(day_far & (day_offset == 0), 180, 0)
    open_min = pois.open_min.to_numpy()[poi]
    close_min = pois.close_min.to_numpy()[poi]
    earliest = np.maximum(open_min + rng.integers(0, 31, len(poi)),
                          np.where(cat == NIGHTLIFE, 1200 + rng.integers(0, 150, len(poi)), 0))
    # walk each day's visits in order: arrive after the previous departure plus travel
    rank = np.arange(len(v_day)) - np.searchsorted(v_day, v_day, side="left")
    tod = np.zeros(len(poi), dtype=np.int64)
    for r in range(int(rank.max()) + 1 if len(rank) else 0):
        m = rank == r
        ready = day_start[v_day[m]] if r == 0 else tod[np.flatnonzero(m) - 1] + duration[np.flatnonzero(m) - 1] + travel[m]
        # meals at meal times: lunch from 11:15, or dinner from 17:30 once lunch time has passed
        lunch = 675 + rng.integers(0, 61, m.sum())
        dinner = 1050 + rng.integers(0, 91, m.sum())
        meal_time = np.where(ready > 14 * 60, dinner, lunch)
        ready = np.where(cat[m] == RESTAURANT, np.maximum(ready, meal_time), ready)
        tod[m] = np.maximum(ready, earliest[m])
        duration[m] = np.minimum(duration[m], np.maximum(close_min[m] - tod[m], 10))
    keep = (tod + 30 <= close_min) & (tod < 1440)  # still open; and no arrivals after midnight
    arrive = v_dayidx * 1440 + tod
    depart = arrive + duration
    price = pois.price_cny.to_numpy()[poi]
    arpu = people.arpu_tier[v_person]
    spend = np.round(price * rng.lognormal(0, 0.35, len(poi)) * (0.7 + 0.15 * arpu), 1)
    channel = np.select([cat == RESTAURANT, cat == NIGHTLIFE], [2, np.where(rng.random(len(poi)) < 0.6, 3, 2)],
                        np.where(rng.random(len(poi)) < 0.12, 3, 0))
    v_trip = day_trip[v_day]
    visits = [(v_person[keep], v_trip[keep], poi[keep], arrive[keep], depart[keep], spend[keep], channel[keep])]
    # ---- hotel stays: one per multi-day trip, check-in evening of day 1, check-out last morning
    stay_trips = np.flatnonzero(trips.days >= 2)
    if len(stay_trips):
        h_person = trips.person[stay_trips]
        h_poi = _sample_poi(np.full(len(stay_trips), HOTEL), people.district_pref[h_person], pois, rng,
                            price_pull=people.income[h_person])
        nights = trips.days[stay_trips] - 1
        h_arrive = trips.start_day[stay_trips] * 1440 + rng.integers(15 * 60, 22 * 60, len(stay_trips))
        h_depart = (trips.start_day[stay_trips] + nights) * 1440 + rng.integers(7 * 60, 12 * 60, len(stay_trips))
        h_spend = np.round(pois.price_cny.to_numpy()[h_poi] * nights * rng.lognormal(0, 0.15, len(stay_trips)), 1)
        visits.append((h_person, stay_trips, h_poi, h_arrive, h_depart, h_spend, np.full(len(stay_trips), 1)))
    cols = [np.concatenate(c) for c in zip(*visits)]
    order = np.lexsort((cols[3], cols[0]))  # by person, then arrival
    return Visits(*(c[order] for c in cols), dropped_closed=int((~keep).sum()))


def _sample_rows(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One column index per row, with probability proportional to that row's weights."""
    cum = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cum[:, -1]
    return np.minimum((cum < u[:, None]).sum(1), weights.shape[1] - 1)


def _sample_poi(cat: np.ndarray, district_pref: np.ndarray, pois: pd.DataFrame, rng: np.random.Generator,
                price_pull: np.ndarray | None = None) -> np.ndarray:
    """A POI of the given category: a district first (personal preference × the category's
    quality mass there), then a POI in that district by quality (the well-off lean to pricier
    hotels through `price_pull`)."""
    n_cat, n_dist = len(POI_CATEGORIES), district_pref.shape[1]
    q = pois.quality.to_numpy()
    group = pois.cat.to_numpy() * n_dist + pois.district.to_numpy()
    mass = np.bincount(group, weights=q, minlength=n_cat * n_dist).reshape(n_cat, n_dist)
    d = _sample_rows(district_pref * mass[cat] + 1e-12 * (mass[cat] > 0), rng)
    g = cat * n_dist + d
    if price_pull is None:
        order = np.argsort(group, kind="stable")
        cum = np.cumsum(q[order])
        starts = np.searchsorted(group[order], np.arange(n_cat * n_dist), side="left")
        base = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0.0)
        target = base[g] + rng.random(len(g)) * mass.ravel()[g]
        pos = np.minimum(np.searchsorted(cum, target, side="right"), len(cum) - 1)
        return order[pos]
    # hotels: weights depend on the person, so loop over the (few) hotel groups
    price = pois.price_cny.to_numpy()
    out = np.empty(len(g), dtype=np.int64)
    for grp in np.unique(g):
        members = np.flatnonzero(group == grp)
        rows = np.flatnonzero(g == grp)
        z = (np.log(price[members]) - np.log(price[members]).mean())
        w = q[members][None, :] * np.exp(np.outer(price_pull[rows], z))
        out[rows] = members[_sample_rows(w, rng)]
    return out


def _aggregate(keys: tuple[np.ndarray, ...], sizes: tuple[int, ...], values: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Sum `values` over unique key tuples (mixed-radix packed into one int64)."""
    packed = np.zeros(len(values), dtype=np.int64)
    for k, s in zip(keys, sizes):
        packed = packed * s + k
    uniq, inv = np.unique(packed, return_inverse=True)
    sums = np.bincount(inv, weights=values, minlength=len(uniq))
    out = []
    for s in reversed(sizes):
        out.append(uniq % s)
        uniq = uniq // s
    return out[::-1], sums


def draw_presence(people: People, exposure: Exposure, trips: Trips, visits: Visits, pois: pd.DataFrame, area_maps: dict, n_areas: int,
                  n_days: int, base_rate: float, rng: np.random.Generator):
    """Daily dwell per (subscriber, area, day): at the area of each visited POI on the visit
    day, hotel areas overnight, a transit hub on arrival/departure days, home/work cells for
    locals (a sample of days), taste-driven strolls past POIs without a ticket, and the
    non-tourist stays of remote people (Exposure).
    Returns (person, area, day, dwell_minutes) arrays, keys unique."""
    sub = people.is_subscriber
    parts = []
    poi_area = area_maps["poi_area"]
    # visits (hotel stays spread over the nights they span)
    m = sub[visits.person]
    p, poi, arr, dep = visits.person[m], visits.poi[m], visits.arrive[m], visits.depart[m]
    d0, d1 = arr // 1440, dep // 1440
    span = d1 - d0 + 1
    rp = np.repeat(np.arange(len(p)), span)
    off = np.arange(len(rp)) - np.repeat(np.cumsum(span) - span, span)
    dd = d0[rp] + off
    day_lo = np.maximum(arr[rp], dd * 1440)
    day_hi = np.minimum(dep[rp], (dd + 1) * 1440)
    dwell = (day_hi - day_lo) + rng.integers(10, 60, len(rp))
    ok = dd < n_days
    parts.append((p[rp][ok], poi_area[poi[rp]][ok], dd[ok], dwell[ok]))
    # transit hubs for out-of-town trips
    t = np.flatnonzero(trips.far & sub[trips.person])
    hubs = area_maps["hub_areas"]
    for day in (trips.start_day[t], trips.start_day[t] + trips.days[t] - 1):
        parts.append((trips.person[t], hubs[rng.choice(len(hubs), len(t), p=[0.55, 0.3, 0.15][:len(hubs)])],
                      day, rng.integers(20, 90, len(t))))
    # locals: home and work cells on a sample of days
    bg = area_maps["background_areas"]
    locals_ = np.flatnonzero(sub & (people.distance_km < LOCAL_KM))
    home = bg[rng.integers(0, len(bg), len(locals_))]
    work = bg[rng.integers(0, len(bg), len(locals_))]
    for cell, mean, lo, hi in ((home, 36, 480, 900), (work, 24, 360, 560)):
        k = rng.poisson(mean, len(locals_))
        who = np.repeat(np.arange(len(locals_)), k)
        parts.append((locals_[who], cell[who], rng.integers(0, n_days, len(who)), rng.integers(lo, hi, len(who))))
    # strolls past POIs (no ticket): taste-driven, after the person's onset of interest
    subs = np.flatnonzero(sub)
    lam = base_rate * people.activity[subs] * distance_decay(people.distance_km[subs]) * (n_days - people.onset_day[subs]) / 365
    k = rng.poisson(lam)
    who = subs[np.repeat(np.arange(len(subs)), k)]
    w = people.taste[who].copy()
    w[:, HOTEL] = 0.0
    cat = _sample_rows(w, rng)
    spoi = _sample_poi(cat, people.district_pref[who], pois, rng)
    sday = people.onset_day[who] + (rng.random(len(who)) * (n_days - people.onset_day[who])).astype(np.int64)
    parts.append((who, poi_area[spoi], sday, rng.integers(20, 120, len(who))))
    # stays of remote people (business, family, a first look): a hub, an office cell, often a POI they like
    m = sub[exposure.person]
    who, day = exposure.person[m], exposure.day[m]
    parts.append((who, hubs[rng.integers(0, len(hubs), len(who))], day, rng.integers(20, 90, len(who))))
    parts.append((who, bg[rng.integers(0, len(bg), len(who))], day, rng.integers(240, 540, len(who))))
    look = rng.random(len(who)) < 0.6
    w = people.taste[who[look]].copy()
    w[:, HOTEL] = 0.0
    spoi = _sample_poi(_sample_rows(w, rng), people.district_pref[who[look]], pois, rng)
    parts.append((who[look], poi_area[spoi], day[look], rng.integers(30, 150, look.sum())))
    cols = [np.concatenate([np.asarray(x[i], dtype=np.int64) for x in parts]) for i in range(4)]
    ok = cols[2] < n_days
    cols = [c[ok] for c in cols]
    (person, area, day), dwell = _aggregate(tuple(cols[:3]), (people.n, n_areas, n_days), cols[3].astype(float))
    return person, area, day, np.clip(dwell, 1, 1440).astype(np.int64)


def draw_engagement(people: People, trips: Trips, visits: Visits, pois: pd.DataFrame, n_days: int,
                    rng: np.random.Generator):
    """Daily events per (account holder, topic, day): everyday browsing (noise topics, plus
    travel topics by taste once interested), a ramp of trip planning in the three weeks
    before each trip, and reviews during trips. Returns (person, topic, day, events)."""
    acc = people.has_account
    parts = []
    cat_topics = [[TOPIC_INDEX[t] for t in CATEGORY_TOPICS[c]] for c in POI_CATEGORIES]
    holders = np.flatnonzero(acc)
    # everyday browsing
    rate = rng.beta(2.0, 8.0, len(holders)) * 0.4 * np.minimum(people.activity[holders], 3.0) ** 0.5
    k = rng.poisson(rate * n_days)
    who = holders[np.repeat(np.arange(len(holders)), k)]
    day = rng.integers(0, n_days, len(who))
    interested = day >= people.onset_day[who]
    p_travel = np.where(interested, 0.15 + 0.45 * np.minimum(1.0, distance_decay(people.distance_km[who]) * people.activity[who]), 0.04)
    travel = rng.random(len(who)) < p_travel
    topic = _topic_for_category(_sample_rows(people.taste[who], rng), cat_topics, rng)
    noise = np.where(rng.random(len(who)) < 0.7, people.noise_topics[who, rng.integers(0, 2, len(who))],
                     rng.integers(0, len(NOISE_TOPICS), len(who)))
    topic = np.where(travel, topic, TOPIC_INDEX[NOISE_TOPICS[0]] + noise)
    parts.append((who, topic, day, 1 + rng.poisson(1.5, len(who))))
    # planning ramp before each trip
    t = np.flatnonzero(acc[trips.person])
    far = trips.far[t]
    k = rng.poisson(np.where(far, 5.0, 2.5))
    ti = np.repeat(t, k)
    who = trips.person[ti]
    lead = 1 + np.floor(21 * rng.random(len(ti)) ** 1.6).astype(np.int64)  # more events close to departure
    day = trips.start_day[ti] - lead
    generic = np.where(trips.far[ti], rng.choice([TOPIC_INDEX[x] for x in TRAVEL_TOPICS], len(ti)), TOPIC_INDEX["travel_guides"])
    by_taste = _topic_for_category(_sample_rows(people.taste[who], rng), cat_topics, rng)
    topic = np.where(rng.random(len(ti)) < 0.35, generic, by_taste)
    ok = day >= 0
    parts.append((who[ok], topic[ok], day[ok], (1 + rng.poisson(3.0, len(ti)))[ok]))
    # reviews and photos during trips, about what they visited
    m = acc[visits.person] & (rng.random(len(visits.person)) < 0.3)
    vcat = pois.cat.to_numpy()[visits.poi[m]]
    parts.append((visits.person[m], _topic_for_category(vcat, cat_topics, rng), visits.arrive[m] // 1440,
                  1 + rng.poisson(1.0, m.sum())))
    cols = [np.concatenate([np.asarray(x[i], dtype=np.int64) for x in parts]) for i in range(4)]
    ok = cols[2] < n_days
    (person, topic, day), events = _aggregate(tuple(c[ok] for c in cols[:3]), (people.n, len(TOPICS), n_days),
                                              cols[3][ok].astype(float))
    return person, topic, day, events.astype(np.int64)


def _topic_for_category(cat: np.ndarray, cat_topics: list[list[int]], rng: np.random.Generator) -> np.ndarray:
    pick = rng.random(len(cat))
    out = np.empty(len(cat), dtype=np.int64)
    for c, topics in enumerate(cat_topics):
        m = cat == c
        out[m] = np.asarray(topics)[np.minimum((pick[m] * len(topics)).astype(int), len(topics) - 1)]
    return out
