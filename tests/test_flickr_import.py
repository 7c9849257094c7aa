"""`wenlv import flickr`: real Flickr visits into the tourism contract, counted honestly."""
from __future__ import annotations

import csv
import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from wenlv.features import contracts as C
from wenlv.features import io
from wenlv.features.flickr import build, import_city
from wenlv.cli import main as wenlv_main
from wenlv.errors import WenlvError

# Figures from ../shared/data/README.md (rows; users, POIs, sequences for Toronto).
README_ROWS = {"Toro": 39_419, "Osak": 7_747, "Glas": 11_434, "Edin": 33_944, "Melb": 17_087}
MELBOURNE = ZoneInfo("Australia/Melbourne")


def _local(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc).astimezone(MELBOURNE).replace(tzinfo=None)


@pytest.fixture(scope="module")
def toronto(shared_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("toro")
    summary = import_city("Toro", shared_data / "flickr", out)
    return out, summary


def test_toronto_counts_match_the_readme_and_drops_are_counted(toronto, shared_data):
    out, summary = toronto
    assert summary["rows_read"] == 39_419
    assert summary["users_read"] == 1_395
    assert summary["pois_read"] == 29
    assert summary["sequences_read"] == 6_057
    # recount the absurd timestamps independently, with the csv module
    with open(shared_data / "flickr" / "visits" / "userVisits-Toro.csv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter=";"))
    assert len(rows) == 39_419
    early = sum(_local(int(r["dateTaken"])) < datetime(2000, 1, 1) for r in rows)
    late = sum(_local(int(r["dateTaken"])) >= datetime(2015, 1, 1) for r in rows)
    assert summary["photos_dropped"] == {"unparseable_time": 0, "before_2000": early, "after_2014": late, "unknown_poi": 0}
    assert early == 233 and late == 0
    assert summary["photos_kept"] == 39_419 - 233
    assert (summary["visits"], summary["users"], summary["pois"]) == (7_813, 1_384, 29)
    # the written tables satisfy the contract and agree with the summary
    visits = io.read_pandas(out, C.VISITS)
    visitors = io.read_pandas(out, C.VISITORS)
    pois = io.read_pandas(out, C.POIS)
    assert (len(visits), len(visitors), len(pois)) == (summary["visits"], summary["users"], summary["pois"])
    assert visits.visit_id.is_unique and visitors.visitor_id.is_unique and pois.poi_id.is_unique
    assert visits.visitor_id.isin(visitors.visitor_id).all() and visits.poi_id.isin(pois.poi_id).all()
    assert (visits.departed_at >= visits.arrived_at).all()
    assert visits.arrived_at.min() >= pd.Timestamp("2000-01-01")


def test_a_visit_checked_by_hand(toronto):
    """userVisits-Toro.csv rows 3-6: user 10012675@N05, seqID 2, POI 6 (Art Gallery of Ontario),
    dateTaken 1142731848 .. 1142732445 — 2006-03-19 01:30:48 UTC, i.e. 12:30:48 on the
    Melbourne clock (AEDT, +11) the data set encoded local times with; row 7 (seqID 3) is
    another visit two days later."""
    out, _ = toronto
    visits = io.read_pandas(out, C.VISITS)
    mine = visits[visits.visitor_id == "10012675@N05"].sort_values("arrived_at")
    first = mine.iloc[0]
    assert first.poi_id == "6" and first.visit_id == "2.1"
    assert first.arrived_at == pd.Timestamp("2006-03-19 12:30:48")
    assert first.departed_at == pd.Timestamp("2006-03-19 12:40:45")
    assert mine.iloc[1].visit_id == "3.1" and mine.iloc[1].arrived_at == pd.Timestamp("2006-03-21 15:48:12")
    pois = io.read_pandas(out, C.POIS).set_index("poi_id")
    assert pois.loc["6", "name"] == "Art Gallery of Ontario" and pois.loc["6", "category"] == "museum"
    assert "theme:Cultural" in pois.loc["6", "tags"]
    assert pois.loc["16", "name"] == "CN Tower"


def test_flickr_visitors_carry_a_marked_placeholder_not_a_phone(toronto):
    out, _ = toronto
    visitors = io.read_pandas(out, C.VISITORS)
    assert (visitors.phone == "flickr:" + visitors.visitor_id).all()
    assert not visitors.phone.str.fullmatch(r"\d+").any()
    assert not visitors.consent_marketing.any()


@pytest.mark.parametrize("city", sorted(README_ROWS))
def test_every_ijcai_city_imports(city, shared_data, tmp_path):
    summary = import_city(city, shared_data / "flickr", tmp_path)
    assert summary["rows_read"] == README_ROWS[city]
    assert sum(summary["photos_dropped"].values()) + summary["photos_kept"] == README_ROWS[city]
    assert summary["visits"] > 1000 and summary["pois"] >= 20
    for table in (C.POIS, C.VISITORS, C.VISITS):
        io.read_table(tmp_path, table)  # validates against the contract
    if city == "Melb":  # the other POI layout; sub-themes refine categories
        pois = io.read_pandas(tmp_path, C.POIS)
        assert pois.tags.str.contains("subtheme:").all()
        assert {"museum", "nightlife", "scenic_area"} <= set(pois.category)
        assert summary["photos_dropped"]["after_2014"] >= 1  # the year-4500 photo


def test_mixed_line_ends_absurd_dates_and_runs(tmp_path):
    """A made-up city: CR, CRLF and LF line ends in one file; a photo in 1864 and one in 4500;
    one sequence that goes A, A, B, A is three visits."""
    (tmp_path / "visits").mkdir()
    (tmp_path / "pois").mkdir()
    t0 = 1_300_000_000
    lines = ['"photoID";"userID";"dateTaken";"poiID";"poiTheme";"poiFreq";"seqID"',
             f'1;"u1@N00";{t0};1;"Park";3;7', f'2;"u1@N00";{t0 + 600};1;"Park";3;7',
             f'3;"u1@N00";{t0 + 1800};2;"Museum";2;7', f'4;"u1@N00";{t0 + 3600};1;"Park";3;7',
             f'5;"u2@N00";-3316154692;2;"Museum";2;8', f'6;"u2@N00";79870626000;2;"Museum";2;8',
             f'7;"u2@N00";{t0 + 90000};1;"Park";3;9']
    ends = ["\r\n", "\r", "\n", "\r\n", "\r", "\n", "\r\n", "\n"]
    (tmp_path / "visits" / "userVisits-Test.csv").write_bytes("".join(l + e for l, e in zip(lines, ends)).encode())
    (tmp_path / "pois" / "POI-Test.csv").write_bytes(
        b"poiID;poiName;lat;long;theme\r1;Some_Park;1.5; 2.5;Park\r\n2;A%27s_Museum;1.6; 2.6;Museum\n")
    tables, summary = build("Test", tmp_path)
    assert summary["rows_read"] == 7
    assert summary["photos_dropped"] == {"unparseable_time": 0, "before_2000": 1, "after_2014": 1, "unknown_poi": 0}
    v = tables["visits"].sort_values(["visitor_id", "arrived_at"])
    assert list(v.visit_id) == ["7.1", "7.2", "7.3", "9.1"]
    assert list(v.poi_id) == ["1", "2", "1", "1"]
    assert (v.iloc[0].departed_at - v.iloc[0].arrived_at) == pd.Timedelta(minutes=10)
    assert tables["pois"].set_index("poi_id").loc["2", "name"] == "A's Museum"
    assert summary["users"] == 2 and summary["visits"] == 4


def test_cli_prints_a_json_summary_and_names_a_missing_city(shared_data, tmp_path, capsys):
    assert wenlv_main(["import", "flickr", "--city", "Osak", "--source", str(shared_data / "flickr"),
                       "--out", str(tmp_path)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["rows_read"] == 7_747 and (tmp_path / "tourism" / "visits.parquet").exists()
    with pytest.raises(WenlvError, match="userVisits-Nowhere"):
        build("Nowhere", shared_data / "flickr")
    assert wenlv_main(["import", "flickr", "--city", "Nowhere", "--source", str(shared_data / "flickr"),
                       "--out", str(tmp_path)]) == 2
