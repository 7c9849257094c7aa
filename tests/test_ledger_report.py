"""`wenlv ledger report`: HTML with charts and the 其中：数据资源 lines; a failed run leaves the earlier report."""
from __future__ import annotations

import json
from datetime import date

import pytest
from sqlalchemy import create_engine

from wenlv.ledger import assets, attribution, report, returns
from wenlv.ledger.cli import EXAMPLE_CSV
from wenlv.ledger.events import record_events
from tests.support.campaign_db import sqlite_engine
from tests.test_ledger_attribution import T, _ev, _seed_campaign


def test_report_and_failed_rerun(tmp_path):
    out = tmp_path / "report"
    with sqlite_engine(tmp_path / "r.sqlite") as engine:
        cid = _seed_campaign(engine)
        record_events(engine, "hz", [_ev("a", T[0], "100.00", "2026-05-01T10:00:00+08:00", campaign_id=cid),
                                     _ev("e", T[6], "30.00", "2026-05-02T10:00:00+08:00")])
        returns.attribute(engine, "hz", attribution.Options(method="delta"), {"3": {"tourism": 1, "carrier": 1,
                                                                                    "internet": 1}})
        assets.load_csv(engine, "hz", EXAMPLE_CSV)
        page = report.write(engine, "hz", out, as_of=date(2026, 7, 1))
    text = page.read_text(encoding="utf-8")
    for line in ("存货 其中：数据资源", "无形资产 其中：数据资源", "开发支出 其中：数据资源", "associative"):
        assert line in text
    data = json.loads((out / "data.json").read_text(encoding="utf-8"))
    intangible = next(d for d in data["disclosure"] if d["item"] == "无形资产")
    assert intangible["carrying_cny"] == pytest.approx(sum(a["carrying_cny"] for a in data["assets"]))
    assert data["revenue"]["campaigns"][0]["incremental_revenue_cny"] == pytest.approx(100 - 3 * 30)
    for png in ("revenue_daily.png", "incremental.png", "returns_by_source.png", "asset_values.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f'src="{png}"' in text
    before = page.read_bytes()
    broken = create_engine(f"sqlite:///{tmp_path / 'empty.sqlite'}")  # no tables: the build fails
    with pytest.raises(Exception):
        report.write(broken, "hz", out)
    assert page.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".report")) == []


def test_disclosure_by_holding_and_readiness():
    rows = [{"holding": "inventory", "available_on": "2026-01-01", "carrying_cny": 10.0},
            {"holding": "intangible", "available_on": "2026-01-01", "carrying_cny": 20.0},
            {"holding": "intangible", "available_on": "2027-01-01", "carrying_cny": 5.5}]
    lines = {d["item"]: d["carrying_cny"] for d in report.disclosure(rows, date(2026, 7, 1))}
    assert lines == {"存货": 10.0, "无形资产": 20.0, "开发支出": 5.5}


def test_cli_load_attribute_report(tmp_path, capsys):
    from wenlv.cli import main

    db = f"sqlite:///{tmp_path / 'cli.sqlite'}"
    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    assert main(["ledger", "--db", db, "assets", "load", "--tenant", "hz"]) == 0
    assert len(json.loads(capsys.readouterr().out)["assets"]) == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("asset,source\n")
    assert main(["ledger", "--db", db, "assets", "load", "--tenant", "hz", "--csv", str(bad)]) == 2
    assert "missing column" in capsys.readouterr().err
    # nothing to attribute yet: no campaign, no surface; no version needed
    assert main(["ledger", "--db", db, "attribute", "--tenant", "hz", "--tracking-uri", uri]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 0
    assert main(["ledger", "--db", db, "report", "--tenant", "hz", "--out", str(tmp_path / "rep"),
                 "--as-of", "2026-01-01"]) == 0
    assert (tmp_path / "rep" / "report.html").is_file()
    assert main(["ledger", "--db", db, "assets", "list", "--tenant", "hz", "--as-of", "2026-01-01"]) == 0
    listed = json.loads(capsys.readouterr().out.splitlines()[-1])["assets"]
    assert {a["source"] for a in listed} == {"tourism", "carrier", "internet"}
