"""`wenlv features` on a hand-made three-party world whose answers are known.

People 0..29. Carrier: subscribers 0..24 (20..24 refuse partner sharing). Tourism:
visitors 10..29 (29 refuses marketing; some phones written with '+'). Internet: accounts
5..27 (27 refuses ads). Each person's own numbers (spend, dwell, events) encode the person,
so a block row can be traced back to its person and tokens compared across parties.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from wenlv.features import contracts as C
from wenlv.errors import DataValidationError

pytestmark = pytest.mark.spark

PEOPLE = range(30)
SUBSCRIBERS, SHARING = range(0, 25), range(0, 20)
VISITORS, MARKETING = range(10, 30), range(10, 29)
ACCOUNTS, ADS = range(5, 28), range(5, 27)
START, SPLIT = date(2025, 3, 3), date(2025, 5, 1)


def phone(i: int) -> str:
    return f"8613800{i:06d}"


def write(folder: Path, table, rows: list[dict]) -> None:
    path = folder / table.party / f"{table.name}.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(pd.DataFrame(rows, columns=table.columns), schema=table.arrow_schema(),
                                        preserve_index=False), path)


def make_raw(folder: Path) -> Path:
    """The known world, as raw party folders."""
    at = lambda day, hour: datetime.combine(START + timedelta(days=day), datetime.min.time()) + timedelta(hours=hour)
    write(folder, C.POIS, [dict(poi_id=f"P{k}", name=f"Place {k}", category=C.POI_CATEGORIES[k], city="Hangzhou",
                                lat=30.2 + k / 100, lon=120.1, open_time="08:00", close_time="02:00" if k == 6 else "18:00",
                                visit_minutes=60, price_cny=10.0 * k, tags="a;b") for k in range(7)])
    write(folder, C.VISITORS, [dict(visitor_id=f"V{i}", phone=("+" if i % 2 else "") + phone(i), age_band="25-34",
                                    origin_city="Shanghai", consent_marketing=i in MARKETING,
                                    created_at=at(0, 9)) for i in VISITORS])
    visits = []
    for i in VISITORS:
        for n, day in enumerate((3, 10, 20)):  # training visits: spend encodes the person
            visits.append(dict(visit_id=f"T{i}-{n}", visitor_id=f"V{i}", poi_id=f"P{i % 7}", arrived_at=at(day, 10),
                               departed_at=at(day, 12), spend_cny=float(100 + i), channel="ticket"))
        if i % 3 == 0:  # a visit in the test window
            visits.append(dict(visit_id=f"X{i}", visitor_id=f"V{i}", poi_id="P1", arrived_at=at((SPLIT - START).days + 2, 10),
                               departed_at=at((SPLIT - START).days + 2, 11), spend_cny=5.0, channel="app"))
    write(folder, C.VISITS, visits)
    write(folder, C.SUBSCRIBERS, [dict(phone=phone(i), home_city="Shanghai" if i % 2 else "Hangzhou", age_band="35-44",
                                       gender="F", arpu_tier=1 + i % 5, consent_partner_share=i in SHARING)
                                  for i in SUBSCRIBERS])
    write(folder, C.AREAS, [dict(area_id=f"A{k}", lat=30.2 + k / 100, lon=120.1) for k in range(4)])
    write(folder, C.PRESENCE, [dict(phone=phone(i), area_id=f"A{i % 4}", date=START + timedelta(days=d),
                                    dwell_minutes=100 + i) for i in SUBSCRIBERS for d in (5,)])
    write(folder, C.ACCOUNTS, [dict(account_id=f"U{i}", phone=phone(i), consent_ads=i in ADS) for i in ACCOUNTS])
    write(folder, C.ENGAGEMENT, [dict(account_id=f"U{i}", topic="museum", date=START + timedelta(days=4), events=i + 1)
                                 for i in ACCOUNTS])
    return folder


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    return make_raw(tmp_path_factory.mktemp("raw"))


BAD_ENGAGEMENT_ROW = len(ACCOUNTS)  # the last row: account U27, who refused ads (so no expectation moves)


@pytest.fixture(scope="module")
def run(spark, raw, tmp_path_factory):
    """One features run, with --quarantine, on the known world plus one bad engagement row;
    the logs it wrote are kept for the leakage scan."""
    import logging
    from io import StringIO

    from wenlv.spark_jobs import features_job

    world = tmp_path_factory.mktemp("world")
    shutil.copytree(raw, world, dirs_exist_ok=True)
    engagement = world / "internet" / "engagement.parquet"
    df = pq.read_table(engagement).to_pandas()
    df.loc[BAD_ENGAGEMENT_ROW - 1, "events"] = 0
    pq.write_table(pa.Table.from_pandas(df, schema=C.ENGAGEMENT.arrow_schema(), preserve_index=False), engagement)
    out = tmp_path_factory.mktemp("features")
    stream = StringIO()
    handler = logging.StreamHandler(stream)
    root, level = logging.getLogger(), logging.getLogger().level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        manifest = features_job.run(world, out, spark=spark, split_date=SPLIT, quarantine=True, progress=False)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return out, manifest, stream.getvalue()


def block(out: Path, table) -> pd.DataFrame:
    return pq.read_table(out / table.party / f"{table.name}.parquet").to_pandas()


def test_psi_counts_and_users_are_the_known_sets(run):
    out, manifest, _ = run
    tourism_matched = set(MARKETING) & set(SUBSCRIBERS)
    internet_matched = set(ADS) & set(SHARING)
    assert manifest["psi"]["tourism_carrier_matched"] == len(tourism_matched)
    assert manifest["psi"]["internet_carrier_matched"] == len(internet_matched)
    users = block(out, C.USERS)
    assert len(users) == len(set(SHARING) | tourism_matched) == manifest["tables"]["carrier/users"]["rows"]
    assert users.in_tourism.sum() == len(tourism_matched) and users.in_internet.sum() == len(internet_matched)
    assert users.token.is_unique


def test_same_person_same_token_in_every_party(run):
    out, _, _ = run
    tourism = block(out, C.TOURISM_INTERACTIONS)
    carrier = block(out, C.CARRIER_INTERACTIONS)
    internet = block(out, C.INTERNET_INTERACTIONS)
    by_person_t = {int(round(r.spend_cny / 3)) - 100: r.token for r in tourism.itertuples()}
    by_person_c = {int(r.dwell_minutes) - 100: r.token for r in carrier.itertuples()}
    by_person_i = {int(r.events) - 1: r.token for r in internet.itertuples()}
    assert set(by_person_t) == set(MARKETING) & set(SUBSCRIBERS)
    assert set(by_person_c) == set(SHARING)
    assert set(by_person_i) == set(ADS) & set(SHARING)
    in_all = set(by_person_t) & set(by_person_c) & set(by_person_i)
    assert in_all == set(range(10, 20))
    for person in in_all:
        assert by_person_t[person] == by_person_c[person] == by_person_i[person]
    users = set(block(out, C.USERS).token)
    assert set(by_person_t.values()) | set(by_person_i.values()) <= users


def test_blocks_follow_the_contract_and_the_manifest(run):
    out, manifest, _ = run
    assert manifest["split_date"] == SPLIT.isoformat()
    assert manifest["test_window"][0] == SPLIT.isoformat()
    assert set(manifest["tables"]) == {f"{t.party}/{t.name}" for t in C.BLOCK_TABLES}
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["tables"] == manifest["tables"]
    for t in C.BLOCK_TABLES:
        df = block(out, t)
        entry = manifest["tables"][f"{t.party}/{t.name}"]
        assert list(df.columns) == t.columns and len(df) == entry["rows"] > 0
        if t.key:
            assert not df.duplicated(list(t.key)).any(), t.qualified
        for f in t.fields:
            if not f.nullable:
                assert df[f.name].notna().all(), (t.qualified, f.name)
            if f.min is not None:
                assert (df[f.name] >= f.min).all(), (t.qualified, f.name)
    test = block(out, C.TOURISM_TEST)
    assert len(test) == len([i for i in MARKETING if i % 3 == 0 and i in SUBSCRIBERS])
    users = block(out, C.USERS)
    assert not users.is_prospect[users.in_tourism].any()  # every matched visitor has training visits here
    assert users.is_prospect[~users.in_tourism].all()
    features = block(out, C.CARRIER_USER_FEATURES)
    assert len(features) == len(SHARING)
    assert set(features.home_distance_km.round(0)) == {0.0, 165.0}  # Hangzhou, Shanghai


def plain_hashes(p: str) -> set[str]:
    out = set()
    for form in (p, "+" + p):
        for algo in ("sha256", "md5", "sha1"):
            out.add(hashlib.new(algo, form.encode()).hexdigest())
    return out


def test_no_phone_or_plain_hash_anywhere_in_the_output_or_logs(run):
    out, manifest, logs = run
    needles = {phone(i) for i in PEOPLE}
    hashes = set().union(*(plain_hashes(phone(i)) for i in PEOPLE))
    texts = [logs, json.dumps(manifest)]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    for path in files:
        blob = path.read_bytes()
        texts.append(blob.decode("latin-1"))
        if path.suffix == ".parquet" and blob[:4] == b"PAR1":
            for column in pq.read_table(path).columns:
                texts += [v.decode("latin-1") if isinstance(v, bytes) else str(v) for v in column.to_pylist()]
    corpus = "\n".join(texts).lower()
    found = [n for n in needles if n in corpus] + [h for h in hashes if h in corpus]
    assert not found, f"{len(found)} phone numbers or plain hashes leaked"


# ---------------------------------------------------------------------------- validation
def corrupt(raw: Path, tmp: Path, table, row: int, column: str, value, as_csv: bool = False) -> Path:
    """A copy of the raw world with one cell of one table changed (row is 1-based)."""
    folder = tmp / "bad"
    shutil.copytree(raw, folder)
    path = folder / table.party / f"{table.name}.parquet"
    df = pq.read_table(path).to_pandas()
    df[column] = df[column].astype(object)
    df.loc[row - 1, column] = value
    path.unlink()
    if as_csv:
        df.to_csv(path.with_suffix(".csv"), index=False)
    else:
        try:  # keep the contract's types where the bad value allows it
            data = pa.Table.from_pandas(df, schema=table.arrow_schema(), preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, ValueError):
            data = pa.Table.from_pandas(df, preserve_index=False)
        pq.write_table(data, path)
    return folder


@pytest.mark.parametrize("table,row,column,value,problem", [
    (C.VISITS, 4, "channel", "pigeon", "allowed values"),
    (C.VISITS, 7, "poi_id", "P404", "refers to no row of tourism/pois"),
    (C.VISITS, 2, "visit_id", "T10-0", "duplicates the key"),
    (C.POIS, 3, "close_time", "25:00", "HH:MM"),
    (C.PRESENCE, 5, "dwell_minutes", 5000, "maximum"),
    (C.SUBSCRIBERS, 6, "phone", "86138000abc05", "phone number"),
    (C.ACCOUNTS, 2, "consent_ads", None, "does not allow nulls"),
])
def test_a_bad_cell_names_file_row_and_column(spark, raw, tmp_path, table, row, column, value, problem):
    from wenlv.spark_jobs import validate

    folder = corrupt(raw, tmp_path, table, row, column, value)
    with pytest.raises(DataValidationError) as info:
        validate.check_party(spark, folder / table.party, table.party)
    err = info.value
    assert (Path(err.file).name, err.row, err.column) == (f"{table.name}.parquet", row, column)
    assert problem in str(err)
    assert "8613800" not in str(err)  # never the value, nor any phone


def test_csv_type_errors_and_order_rules_name_the_row(spark, raw, tmp_path):
    from wenlv.spark_jobs import validate

    folder = corrupt(raw, tmp_path, C.VISITS, 3, "spend_cny", "lots", as_csv=True)
    with pytest.raises(DataValidationError) as info:
        validate.check_party(spark, folder / "tourism", "tourism")
    assert (Path(info.value.file).name, info.value.row, info.value.column) == ("visits.csv", 3, "spend_cny")
    assert "not a valid float" in str(info.value)

    folder = corrupt(raw, tmp_path / "2", C.VISITS, 9, "departed_at", pd.Timestamp("2025-03-01 08:00"))
    with pytest.raises(DataValidationError, match="is before arrived_at") as info:
        validate.check_party(spark, folder / "tourism", "tourism")
    assert (info.value.row, info.value.column) == (9, "departed_at")


def test_quarantine_sets_bad_rows_aside_and_counts_them(spark, raw, tmp_path):
    from wenlv.spark_jobs import validate

    folder = corrupt(raw, tmp_path, C.SUBSCRIBERS, 2, "arpu_tier", 9)
    bad = folder / "carrier" / "presence.parquet"
    df = pq.read_table(bad).to_pandas()
    df.loc[[0, 3, 4], "area_id"] = "nowhere"
    pq.write_table(pa.Table.from_pandas(df, schema=C.PRESENCE.arrow_schema(), preserve_index=False), bad)
    checked = validate.check_party(spark, folder / "carrier", "carrier", tmp_path / "q")
    counts = {name: c.quarantined for name, c in checked.items()}
    # subscriber row 2 is bad, and so are its presence rows (their phone no longer refers to a good subscriber)
    assert counts == {"carrier.subscribers": 1, "carrier.areas": 0, "carrier.presence": 4}
    assert checked["carrier.presence"].good.count() == len(SUBSCRIBERS) - 4
    q = pq.read_table(tmp_path / "q" / "carrier" / "presence.parquet").to_pandas()
    assert "phone" not in q.columns and list(q.row) == [1, 2, 4, 5]
    assert set(q.reason) == {"refers to no row of carrier/areas", "refers to no row of carrier/subscribers"}


def test_quarantine_reaches_the_manifest(run):
    out, manifest, _ = run
    assert manifest["quarantine"]["internet/engagement"] == 1
    assert sum(manifest["quarantine"].values()) == 1
    q = pq.read_table(out / "quarantine" / "internet" / "engagement.parquet").to_pandas()
    assert list(q.row) == [BAD_ENGAGEMENT_ROW] and list(q.column) == ["events"]
    assert list(q.reason) == ["is below the minimum 1"]


def test_a_party_job_cannot_read_another_partys_table(tmp_path):
    from wenlv.spark_jobs.carrier_job import CarrierJob
    from wenlv.spark_jobs.tourism_job import TourismJob
    from wenlv.errors import WenlvError

    tourism = TourismJob(None, tmp_path, tmp_path / "out")
    assert tourism.raw_dir == tmp_path / "tourism"
    for table in (C.SUBSCRIBERS, C.PRESENCE, C.ACCOUNTS):
        with pytest.raises(WenlvError, match="may not read"):
            tourism.read_raw(table)
    with pytest.raises(WenlvError, match="may not write"):
        CarrierJob(None, tmp_path, tmp_path / "out").write_block(C.TOURISM_INTERACTIONS, None)


def _files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_failed_run_leaves_the_earlier_output_untouched(spark, raw, run, tmp_path):
    """Issue 13 item 6: `wenlv features --data BAD --out EXISTING` used to empty EXISTING (124 files → 0)."""
    from wenlv.spark_jobs import features_job

    existing = tmp_path / "features"
    shutil.copytree(run[0], existing)
    before = _files(existing)
    assert len(before) > 20 and "manifest.json" in before
    bad = corrupt(raw, tmp_path, C.VISITS, 4, "channel", "pigeon")
    with pytest.raises(DataValidationError, match="channel"):
        features_job.run(bad, existing, spark=spark, split_date=SPLIT, progress=False)
    assert _files(existing) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "features"], "no staging folder left behind"

    # a good run replaces it whole, and leaves nothing beside it either
    manifest = features_job.run(raw, existing, spark=spark, split_date=SPLIT, progress=False)
    after = _files(existing)
    assert json.loads((existing / "manifest.json").read_text()) == manifest
    assert not any(name.startswith("quarantine/") for name in after), "the earlier run's quarantine is gone"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "features"]
