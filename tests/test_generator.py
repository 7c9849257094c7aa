"""The synthetic generator: contracts hold, it is deterministic, and its data has the shape
the models rely on (distance decay, taste, carrier and internet signal, prospects)."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.features.generator import generate
from wenlv.cli import main as wenlv_main
from wenlv.errors import DataValidationError

PEOPLE = 6_000  # the tiny world (60 POIs) with more people, so statistical checks have power (3 chunks)
TRAVEL_TOPIC_OF = {"scenic_area": "scenery", "museum": "museum", "theme_park": "theme_park",
                   "restaurant": "food", "nightlife": "nightlife"}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    summary = generate(out, scale="tiny", seed=11, progress=False, people=PEOPLE)
    tables = {t.qualified: io.read_pandas(out, t) for t in C.RAW_TABLES + C.TRUTH_TABLES}
    meta = json.loads((out / "meta.json").read_text())
    return out, summary, tables, meta


@pytest.fixture(scope="module")
def joined(data):
    """Visits with the visiting person's truth row and the POI category."""
    _, _, t, _ = data
    people = t["truth.people"].copy()
    people["taste"] = people.taste.map(json.loads)
    v = (t["tourism.visits"].merge(t["tourism.visitors"][["visitor_id", "phone"]], on="visitor_id")
         .merge(people, on="phone").merge(t["tourism.pois"][["poi_id", "category"]], on="poi_id"))
    return people, v


def test_every_table_is_written_and_validates_against_its_contract(data):
    out, summary, tables, _ = data
    for t in C.RAW_TABLES + C.TRUTH_TABLES:
        path = io.table_path(out, t)
        assert path.exists(), path
        assert pa.parquet.read_schema(path).equals(t.arrow_schema(), check_metadata=False)
        assert len(tables[t.qualified]) == summary["rows"][t.qualified] > 0


def test_keys_are_unique_and_foreign_keys_hold(data):
    out, _, t, _ = data
    assert pa.parquet.ParquetFile(io.table_path(out, C.VISITS)).num_row_groups == 3  # one per chunk of 2,000 people
    for table in C.RAW_TABLES + C.TRUTH_TABLES:
        if table.key:
            keys = t[table.qualified][list(table.key)]
            assert not keys.duplicated().any(), f"{table.qualified} key {table.key} not unique"
    visits, visitors, pois = t["tourism.visits"], t["tourism.visitors"], t["tourism.pois"]
    assert visits.visitor_id.isin(visitors.visitor_id).all()
    assert visits.poi_id.isin(pois.poi_id).all()
    assert (visits.departed_at >= visits.arrived_at).all()
    assert t["carrier.presence"].area_id.isin(t["carrier.areas"].area_id).all()
    assert t["carrier.presence"].phone.isin(t["carrier.subscribers"].phone).all()
    assert t["internet.engagement"].account_id.isin(t["internet.accounts"].account_id).all()
    assert t["truth.future_visits"].poi_id.isin(pois.poi_id).all()
    assert t["truth.future_visits"].person_id.isin(t["truth.people"].person_id).all()
    for party_table in ("tourism.visitors", "carrier.subscribers", "internet.accounts"):
        assert t[party_table].phone.isin(t["truth.people"].phone).all()
        assert t[party_table].phone.is_unique


def test_phones_look_like_chinese_mobiles_and_party_ids_differ(data):
    _, _, t, _ = data
    phones = t["truth.people"].phone
    assert phones.is_unique
    assert phones.str.fullmatch(r"861[3-9]\d{9}").all()
    ids = t["tourism.visitors"].visitor_id
    assert not ids.str.contains(r"861[3-9]\d{9}").any()
    both = t["tourism.visitors"].merge(t["internet.accounts"], on="phone")
    assert len(both) > 100 and (both.visitor_id.str[1:] != both.account_id.str[1:]).all()  # no id joins the parties
    assert ids.is_unique and t["internet.accounts"].account_id.is_unique


def test_population_coverage_and_consent_shares(data):
    _, _, t, _ = data
    n = len(t["truth.people"])
    assert 0.70 <= len(t["carrier.subscribers"]) / n <= 0.85
    assert 0.50 <= len(t["internet.accounts"]) / n <= 0.70
    for table, col in (("tourism.visitors", "consent_marketing"), ("carrier.subscribers", "consent_partner_share"),
                       ("internet.accounts", "consent_ads")):
        share = t[table][col].mean()
        assert 0.5 < share < 0.95, (table, share)


def test_meta_records_the_timeline_and_split(data):
    _, _, t, meta = data
    split = pd.Timestamp(meta["split_date"])
    assert pd.Timestamp(meta["test_window"][0]) == split
    assert (pd.Timestamp(meta["test_window"][1]) - split).days + 1 == meta["test_days"] == 28
    assert pd.Timestamp(meta["train_window"][1]) == split - pd.Timedelta(days=1)
    visits = t["tourism.visits"]
    assert visits.arrived_at.min() >= pd.Timestamp(meta["start"])
    assert visits.arrived_at.max() < pd.Timestamp(meta["end"]) + pd.Timedelta(days=1)
    assert io.read_meta(data[0]) == meta and io.read_meta(data[0] / "tourism") is None
    future = t["truth.future_visits"]
    assert (future.arrived_at >= split).all()
    assert len(future) == (visits.arrived_at >= split).sum()


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    a, b, c = (generate(tmp_path / name, scale="tiny", seed=seed, progress=False) for name, seed in
               (("a", 5), ("b", 5), ("c", 6)))
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.parquet"))
    assert len(files) == len(C.RAW_TABLES) + len(C.TRUTH_TABLES)
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "meta.json").read_text() == (tmp_path / "b" / "meta.json").read_text()
    va = pd.read_parquet(tmp_path / "a" / "tourism" / "visits.parquet")
    vc = pd.read_parquet(tmp_path / "c" / "tourism" / "visits.parquet")
    assert not va.equals(vc)
    assert a["rows"] == b["rows"] and a["rows"] != c["rows"]


def test_people_far_away_visit_less_often(joined):
    people, v = joined
    counts = people.phone.map(v.groupby("phone").arrived_at.agg(lambda s: s.dt.date.nunique())).fillna(0)  # visit days
    bands = pd.cut(people.home_distance_km, [0, 60, 400, 5000], labels=["local", "regional", "far"])
    rate = counts.groupby(bands, observed=True).mean()
    assert rate["local"] > 1.2 * rate["regional"] > 0
    assert rate["regional"] > 1.5 * rate["far"] > 0


def test_far_visitors_stay_longer(data, joined):
    _, v = joined
    hotel = v[v.category == "hotel"]
    nights = (hotel.departed_at.dt.normalize() - hotel.arrived_at.dt.normalize()).dt.days
    far = hotel.home_distance_km > 600
    assert nights[far].mean() > nights[~far].mean()


def test_visitors_choose_categories_they_like(joined):
    _, v = joined
    cats = list(C.POI_CATEGORIES)
    day = v[v.category != "hotel"]
    liked = np.array([taste[cats.index(c)] for taste, c in zip(day.taste, day.category)])
    non_hotel = [i for i, c in enumerate(cats) if c != "hotel"]
    chance = np.array([np.mean([taste[i] for i in non_hotel]) for taste in day.taste])
    assert liked.mean() > 1.5 * chance.mean()


def test_carrier_dwell_follows_visits(data, joined):
    _, _, t, _ = data
    _, v = joined
    pois, areas, presence = t["tourism.pois"], t["carrier.areas"], t["carrier.presence"]
    cell = pois.set_index("poi_id")[["lat", "lon"]].apply(lambda r: f"HZ-{int(np.floor(r.lat / 0.01)):04d}-{int(np.floor(r.lon / 0.01)):05d}", axis=1)
    assert cell.isin(areas.area_id).all()
    subs = set(t["carrier.subscribers"].phone)
    day_visits = v[(v.category != "hotel") & v.phone.isin(subs)].copy()
    day_visits["area_id"] = day_visits.poi_id.map(cell)
    day_visits["date"] = day_visits.arrived_at.dt.date
    keyed = presence.set_index(["phone", "area_id", "date"]).dwell_minutes
    at_visit = keyed.reindex(pd.MultiIndex.from_frame(day_visits[["phone", "area_id", "date"]]))
    assert at_visit.notna().mean() > 0.99  # a phone is where its owner's visit was
    # the same people at random POI areas on random days are rarely there
    rng = np.random.default_rng(0)
    sample = pd.DataFrame({"phone": day_visits.phone.to_numpy(),
                           "area_id": rng.choice(cell.unique(), len(day_visits)),
                           "date": (pd.Timestamp("2025-01-06") + pd.to_timedelta(rng.integers(0, 357, len(day_visits)), "D")).date})
    elsewhere = keyed.reindex(pd.MultiIndex.from_frame(sample))
    assert elsewhere.notna().mean() < 0.05
    # dwell at POI areas on days with no visit at all (strolls, passing by) is shorter
    stays = v[v.phone.isin(subs)]
    n_days = (stays.departed_at.dt.normalize() - stays.arrived_at.dt.normalize()).dt.days + 1
    visit_days = set(zip(stays.phone.repeat(n_days),
                         (stays.arrived_at.dt.normalize().repeat(n_days)
                          + pd.to_timedelta(np.concatenate([np.arange(k) for k in n_days]), "D")).dt.date))
    at_poi_areas = presence[presence.area_id.isin(set(cell))]
    no_visit = at_poi_areas[[k not in visit_days for k in zip(at_poi_areas.phone, at_poi_areas.date)]]
    assert len(no_visit) > 100
    assert at_visit.mean() > 1.5 * no_visit.dwell_minutes.mean()


def test_internet_engagement_follows_taste(data, joined):
    _, _, t, _ = data
    people, _ = joined
    eng = t["internet.engagement"].merge(t["internet.accounts"], on="account_id")
    per_topic = eng.pivot_table(index="phone", columns="topic", values="events", aggfunc="sum", fill_value=0)
    share = per_topic.div(per_topic.sum(axis=1), axis=0)
    taste = people.set_index("phone").taste.reindex(share.index)
    cats = list(C.POI_CATEGORIES)
    for cat, topic in TRAVEL_TOPIC_OF.items():
        affinity = taste.map(lambda x: x[cats.index(cat)])
        rho = share[topic].corr(affinity, method="spearman")
        assert rho > 0.2, (cat, topic, rho)


def test_prospects_exist_have_no_history_and_leave_signals(data, joined):
    _, _, t, meta = data
    people, v = joined
    split = pd.Timestamp(meta["split_date"])
    prospects = people[people.is_prospect]
    assert len(prospects) >= 10
    pv = v[v.phone.isin(prospects.phone)]
    assert (pv.arrived_at >= split).all()
    assert set(prospects.phone) <= set(pv.phone)
    # truth agrees with the visits: nobody else lacks pre-split visits yet visits in the test window
    pre = set(v.phone[v.arrived_at < split])
    test = set(v.phone[v.arrived_at >= split])
    assert set(prospects.phone) == test - pre
    # their pre-split internet activity: more travel-topic events in the four weeks before the split
    # than account holders who never visit
    eng = t["internet.engagement"].merge(t["internet.accounts"], on="account_id")
    window = eng[(pd.to_datetime(eng.date) < split) & (pd.to_datetime(eng.date) >= split - pd.Timedelta(days=28))
                 & eng.topic.isin(["travel_guides", "train_tickets", "hotel_deals", *TRAVEL_TOPIC_OF.values()])]
    travel = window.groupby("phone").events.sum()
    holders = set(t["internet.accounts"].phone)
    never = people[~people.phone.isin(pre | test) & people.phone.isin(holders)]
    p = prospects[prospects.phone.isin(holders)]
    assert travel.reindex(p.phone).fillna(0).mean() > 1.5 * travel.reindex(never.phone).fillna(0).mean()
    # the carrier saw remote prospects in the destination before the split more often than
    # remote people who never visit (business and family stays make people come back)
    presence = t["carrier.presence"]
    days_seen = presence[pd.to_datetime(presence.date) < split].groupby("phone").date.nunique()
    remote_subs = people[people.phone.isin(set(t["carrier.subscribers"].phone)) & (people.home_distance_km >= 60)]
    p_remote = remote_subs[remote_subs.is_prospect].phone
    never_remote = remote_subs[~remote_subs.phone.isin(pre | test)].phone
    assert len(p_remote) >= 10
    assert days_seen.reindex(p_remote).fillna(0).mean() > 1.5 * days_seen.reindex(never_remote).fillna(0).mean()


def test_travel_engagement_rises_before_trips(data, joined):
    _, _, t, _ = data
    _, v = joined
    eng = t["internet.engagement"].merge(t["internet.accounts"], on="account_id")
    travel = eng[eng.topic.isin(["travel_guides", "train_tickets", "hotel_deals", *TRAVEL_TOPIC_OF.values()])]
    daily = travel.groupby(["phone", "date"]).events.sum()
    days = v[v.phone.isin(set(eng.phone))].assign(day=v.arrived_at.dt.normalize())[["phone", "day"]].drop_duplicates()
    days = days.sort_values(["phone", "day"])
    gap = days.groupby("phone").day.diff().dt.days
    starts = days[gap.isna() | (gap > 60)]  # trip days after two quiet months
    starts = starts[starts.day >= pd.Timestamp("2025-03-10")]
    assert len(starts) > 100

    def events(lo, hi):
        idx = pd.MultiIndex.from_tuples([(p, (d - pd.Timedelta(days=k)).date())
                                         for p, d in zip(starts.phone, starts.day) for k in range(lo, hi)])
        return daily.reindex(idx).fillna(0).mean()

    assert events(1, 15) > 2 * events(46, 60)


def test_signal_report_ranks_prospects_better_than_chance(data, capsys):
    from wenlv.features.signal import auc

    assert auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.8, 0.3])) == 1.0
    assert auc(np.array([1, 0, 1, 0]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.5
    assert wenlv_main(["datagen-signal", "--data", str(data[0])]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["prospects"] == int(data[2]["truth.people"].is_prospect.sum())
    for name, value in report["auc"].items():
        assert value > 0.55, (name, value)


def test_truth_holds_no_personal_data_but_the_phone(data):
    out, _, t, _ = data
    for table in C.TRUTH_TABLES:
        assert {f.name for f in table.fields if f.personal} <= {"phone"}
        assert list(t[table.qualified].columns) == table.columns
    taste = json.loads(t["truth.people"].taste.iloc[0])
    assert len(taste) == len(C.POI_CATEGORIES) and abs(sum(taste) - 1) < 1e-2
    truth_meta = (out / "truth" / "meta.json").read_text()
    assert "861" not in truth_meta and "phone" not in truth_meta.lower()


def test_opening_hours_are_respected_and_nightlife_runs_past_midnight(data):
    _, _, t, _ = data
    pois = t["tourism.pois"].set_index("poi_id")
    assert (pois.close_time[pois.category == "nightlife"] <= "03:00").all()
    v = t["tourism.visits"].join(pois[["category", "open_time"]], on="poi_id")
    day = v[v.category != "hotel"]
    arrive = day.arrived_at.dt.strftime("%H:%M")
    assert (arrive[day.category != "nightlife"] >= day.open_time[day.category != "nightlife"]).all()
    night = day[day.category == "nightlife"]
    assert (night.departed_at.dt.date > night.arrived_at.dt.date).any()


def test_holidays_and_weekends_draw_more_visits(data):
    _, _, t, _ = data
    days = t["tourism.visits"].arrived_at.dt.normalize().value_counts()
    weekend = days[days.index.day_of_week >= 5].mean()
    weekday = days[days.index.day_of_week < 5].mean()
    golden = days[(days.index >= "2025-10-01") & (days.index <= "2025-10-08")].mean()
    assert weekend > 1.3 * weekday
    assert golden > 1.3 * weekend


def test_io_reads_csv_and_names_bad_rows(tmp_path):
    pois = pd.DataFrame([{"poi_id": "P1", "name": "West Lake", "category": "scenic_area", "city": "Hangzhou",
                          "lat": 30.25, "lon": 120.15, "open_time": "06:30", "close_time": "18:00",
                          "visit_minutes": 120, "price_cny": 0.0, "tags": None}])
    (tmp_path / "tourism").mkdir()
    pois.to_csv(tmp_path / "tourism" / "pois.csv", index=False)
    back = io.read_pandas(tmp_path, C.POIS)
    assert back.iloc[0].poi_id == "P1" and back.iloc[0].visit_minutes == 120
    bad = pd.concat([pois, pois.assign(poi_id="P2", category="zoo")])
    with pytest.raises(DataValidationError, match=r"row 2, column 'category'.*'zoo'"):
        io.write_table(tmp_path / "out", C.POIS, bad)
    with pytest.raises(DataValidationError, match="missing column"):
        io.write_table(tmp_path / "out", C.POIS, pois.drop(columns=["lat"]))
    visits = pd.DataFrame({"visit_id": ["S1"], "visitor_id": ["V1"], "poi_id": ["P1"],
                           "arrived_at": ["2025-05-01 10:00:00"], "departed_at": ["2025-05-01 11:00:00"],
                           "spend_cny": [-3.0], "channel": ["ticket"]})
    (tmp_path / "csv" / "tourism").mkdir(parents=True)
    visits.to_csv(tmp_path / "csv" / "tourism" / "visits.csv", index=False)
    with pytest.raises(DataValidationError, match=r"visits.csv, row 1, column 'spend_cny'"):
        io.read_table(tmp_path / "csv", C.VISITS)
    # chunked writing counts rows across chunks; a personal value is never quoted
    with pytest.raises(DataValidationError, match=r"row 3, column 'category'"):
        with io.TableWriter(tmp_path / "chunks", C.POIS) as writer:
            writer.write(pd.concat([pois, pois.assign(poi_id="P2")]))
            writer.write(pois.assign(poi_id="P3", category="zoo"))
    accounts = pd.DataFrame({"account_id": ["A1"], "phone": [None], "consent_ads": [True]})
    with pytest.raises(DataValidationError, match=r"row 1, column 'phone': null"):
        io.write_table(tmp_path / "out", C.ACCOUNTS, accounts)


def test_cli_datagen_and_contracts(tmp_path, capsys):
    assert wenlv_main(["datagen", "--scale", "tiny", "--seed", "2", "--out", str(tmp_path / "d"), "--no-progress"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows"]["truth.people"] == 2000 and (tmp_path / "d" / "meta.json").exists()
    assert wenlv_main(["datagen", "--scale", "tiny", "--people", "0", "--out", str(tmp_path / "e"), "--no-progress"]) == 2
    assert "people must be positive" in capsys.readouterr().err
    assert wenlv_main(["contracts", "--out", str(tmp_path / "contracts.md")]) == 0
    from pathlib import Path

    committed = Path(__file__).resolve().parents[1] / "docs" / "contracts.md"
    assert committed.read_text() == (tmp_path / "contracts.md").read_text(), "docs/contracts.md is stale: run `wenlv contracts --out docs/contracts.md`"


def test_demo_stage_reports_counts_and_data_dir(tmp_path):
    from wenlv.features import demo_stage
    from wenlv.demo import DemoContext

    section = demo_stage.run(DemoContext(workdir=tmp_path, scale="tiny", seed=7, progress=False))
    assert section["people"] == 2000 and section["pois"] == 60 and section["visits"] > 0
    assert section["subscribers"] > 0 and section["accounts"] > 0
    assert (tmp_path / "data" / "tourism" / "visits.parquet").exists()
    assert section["_paths"]["data_dir"] == str(tmp_path / "data")


def _snapshot(folder) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_chunk_keeps_the_earlier_table_and_leaves_no_partial_file(tmp_path):
    pois = pd.DataFrame([{"poi_id": "P1", "name": "West Lake", "category": "scenic_area", "city": "Hangzhou",
                          "lat": 30.25, "lon": 120.15, "open_time": "06:30", "close_time": "18:00",
                          "visit_minutes": 120, "price_cny": 0.0, "tags": None}])
    io.write_table(tmp_path, C.POIS, pois)
    before = _snapshot(tmp_path)
    with pytest.raises(DataValidationError, match="category"):
        with io.TableWriter(tmp_path, C.POIS) as writer:
            writer.write(pois.assign(poi_id="P2"))
            writer.write(pois.assign(poi_id="P3", category="zoo"))
    assert _snapshot(tmp_path) == before  # the old table, and no partial file beside it


def test_a_failed_run_leaves_the_earlier_data_untouched(tmp_path, monkeypatch):
    import wenlv.features.generator as generator

    out = tmp_path / "data"
    generate(out, scale="tiny", seed=3, progress=False)
    before = _snapshot(out)

    def disk_full(*args, **kwargs):  # fault injection: the run dies half-way through the people
        raise OSError("No space left on device")

    monkeypatch.setattr(generator, "draw_engagement", disk_full)
    with pytest.raises(OSError, match="No space"):
        generate(out, scale="tiny", seed=4, progress=False)
    assert _snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    monkeypatch.undo()
    summary = generate(out, scale="tiny", seed=4, progress=False)
    assert summary["out"] == str(out) and _snapshot(out) != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
