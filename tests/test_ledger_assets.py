"""The data-asset register: cost lines by phase, straight-line amortisation, ROI and both valuations by hand."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import func, insert, select

from wenlv.db.schema import asset_cost_lines, attributed_returns
from wenlv.errors import WenlvError
from wenlv.ledger import assets, valuation
from tests.support.campaign_db import sqlite_engine

EXAMPLE = Path(assets.__file__).with_name("examples") / "cost_lines.csv"
LINES = [{"category": "research", "phase": "research", "amount_cny": "30000.00"},
         {"category": "acquisition", "phase": "development", "amount_cny": "70000.00"},
         {"category": "cleaning", "phase": "development", "amount_cny": "50000.00"}]


def test_months_and_amortisation_by_hand():
    assert valuation.months_between(date(2026, 1, 1), date(2026, 7, 15)) == 6
    assert valuation.months_between(date(2026, 1, 31), date(2026, 2, 28)) == 0
    assert valuation.months_between(date(2026, 3, 1), date(2026, 1, 1)) == 0
    assert valuation.amortised(120000, date(2026, 1, 1), 60, date(2026, 7, 15)) == Decimal("12000.00")
    assert valuation.amortised(120000, date(2026, 1, 1), 60, date(2036, 1, 1)) == Decimal("120000.00")  # capped
    assert valuation.amortised(1000, date(2026, 1, 1), 7, date(2026, 2, 1)) == Decimal("142.86")
    assert valuation.amortised(120000, date(2026, 1, 1), 60, date(2027, 1, 1), "inventory") == Decimal("0.00")


def test_valuation_by_hand():
    returns = {date(2026, 6, 1): 3000.0, date(2026, 7, 1): 3000.0, date(2025, 1, 1): 99999.0}  # the last: > 12 months ago
    v = valuation.value([{"phase": p["phase"], "amount_cny": p["amount_cny"]} for p in LINES],
                        available_on=date(2026, 1, 1), life_months=60, holding="intangible",
                        returns_by_day=returns, as_of=date(2026, 7, 15), rate=0.08, growth=0.0)
    assert (v.capitalised, v.expensed, v.amortised, v.carrying) == (Decimal("120000.00"), Decimal("30000.00"),
                                                                  Decimal("12000.00"), Decimal("108000.00"))
    assert v.attributed == Decimal("105999.00")
    assert v.roi == pytest.approx((105999 - 150000) / 150000)
    # Annual cash flow: 6,000 over the 2 months June–July → 36,000 a year; remaining life 54 months = 4.5 years.
    assert v.annual_cash_flow == Decimal("36000.00") and v.remaining_years == 4.5
    by_hand = (36000 / 1.08 + 36000 / 1.08 ** 2 + 36000 / 1.08 ** 3 + 36000 / 1.08 ** 4 + 18000 / 1.08 ** 4.5)
    assert float(v.income_value) == pytest.approx(by_hand, abs=0.006)
    # 33,333.33 + 30,864.20 + 28,577.97 + 26,461.08 + 12,731.08
    assert float(v.income_value) == pytest.approx(131967.66, abs=0.01)
    assert v.as_dict()["value"] == {"cost": 108000.0, "income": float(v.income_value)}
    grown = valuation.income_value(1000, 2, 0.1, 0.05)
    assert grown == pytest.approx(1000 / 1.1 + 1050 / 1.21)



def test_negative_attributed_returns_value_the_asset_at_zero_by_income_not_below():
    """An incremental-revenue estimate below zero (the demo's campaign drew one: −8,637 CNY with a 95% interval
    covering the true +9,320) gave an income-approach value of −324,000 CNY."""
    v = valuation.value([{"phase": p["phase"], "amount_cny": p["amount_cny"]} for p in LINES],
                        available_on=date(2026, 1, 1), life_months=60, holding="intangible",
                        returns_by_day={date(2026, 7, 1): -6000.0}, as_of=date(2026, 7, 15), rate=0.08, growth=0.0)
    assert v.annual_cash_flow < 0 and v.attributed == Decimal("-6000.00")  # the estimate itself is kept as it is
    assert v.income_value == Decimal("0.00") and v.carrying == Decimal("108000.00")

def test_cost_lines_by_phase_are_checked():
    with pytest.raises(Exception, match="development"):
        assets.CostLine(category="research", phase="development", amount_cny="1.00", incurred_on="2026-01-01")
    with pytest.raises(Exception, match="development"):
        assets.CostLine(category="cleaning", phase="research", amount_cny="1.00", incurred_on="2026-01-01")
    with pytest.raises(Exception):
        assets.CostLine(category="cleaning", phase="development", amount_cny="-1.00", incurred_on="2026-01-01")


def test_example_csv_loads_once_and_register_values_it(tmp_path):
    with sqlite_engine(tmp_path / "a.sqlite") as engine:
        first = assets.load_csv(engine, "hz", EXAMPLE)
        again = assets.load_csv(engine, "hz", EXAMPLE)  # replaces, never doubles
        assert first == again and len(first["assets"]) == 3 and first["cost_lines"] == 17
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(asset_cost_lines)).scalar() == 17
            c.execute(insert(attributed_returns), [
                {"tenant": "hz", "day": date(2026, 5, 2), "source": "tourism", "amount_cny": Decimal("8000.00"),
                 "model_version": "3", "computed_at": datetime.now(timezone.utc)},
                {"tenant": "other", "day": date(2026, 5, 2), "source": "tourism", "amount_cny": Decimal("5.00"), "model_version": None,
                 "computed_at": datetime.now(timezone.utc)}])
            c.commit()
        register = {a["source"]: a for a in assets.register(engine, "hz", as_of=date(2026, 7, 1))}
        tourism = register["tourism"]
        assert tourism["capitalised_cny"] == 595000.0 and tourism["expensed_cny"] == 180000.0
        assert tourism["amortised_cny"] == pytest.approx(595000 * 12 / 60)
        assert tourism["carrying_cny"] == tourism["value"]["cost"] == pytest.approx(595000 * 48 / 60)
        assert tourism["attributed_returns_cny"] == 8000.0 and register["carrier"]["attributed_returns_cny"] == 0.0
        assert tourism["value"]["income"] > 0 and register["carrier"]["value"]["income"] == 0.0
        assert register["carrier"]["roi"] == -1.0
        assert assets.register(engine, "other") == []
        (detail,) = assets.register(engine, "hz", asset_id=tourism["id"], detail=True)
        assert len(detail["cost_lines"]) == 9 and detail["returns"][0]["amount_cny"] == 8000.0


def test_a_bad_csv_row_names_row_and_column_and_loads_nothing(tmp_path):
    bad = tmp_path / "bad.csv"
    text = EXAMPLE.read_text(encoding="utf-8").splitlines()
    text[3] = text[3].replace("120000.00", "lots")
    bad.write_text("\n".join(text) + "\n", encoding="utf-8")
    with sqlite_engine(tmp_path / "b.sqlite") as engine:
        with pytest.raises(WenlvError, match=r"bad.csv:4: amount_cny"):
            assets.load_csv(engine, "hz", bad)
        assert assets.register(engine, "hz") == []
        with pytest.raises(WenlvError, match="missing column"):
            (tmp_path / "cols.csv").write_text("asset,source\nx,tourism\n")
            assets.load_csv(engine, "hz", tmp_path / "cols.csv")


def test_api_style_lines_all_or_none(tmp_path):
    with sqlite_engine(tmp_path / "c.sqlite") as engine:
        aid = assets.load_csv(engine, "hz", EXAMPLE)["assets"]["运营商信号授权 licensed carrier signals"]
        added = assets.add_cost_lines(engine, "hz", aid, [{**line, "incurred_on": "2026-02-01"} for line in LINES])
        assert added == 3
        with pytest.raises(WenlvError, match="line 1"):
            assets.add_cost_lines(engine, "hz", aid, [{**LINES[0], "incurred_on": "2026-02-01"},
                                                      {**LINES[1], "incurred_on": "yesterday"}])
        with pytest.raises(WenlvError, match="not found"):
            assets.add_cost_lines(engine, "other", aid, [{**LINES[0], "incurred_on": "2026-02-01"}])
        (carrier,) = assets.register(engine, "hz", asset_id=aid)
        assert carrier["capitalised_cny"] == 695000.0 + 120000.0 and carrier["expensed_cny"] == 30000.0
