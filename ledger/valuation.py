"""What a data asset is worth: cost, amortisation, ROI, and the income-approach value beside the cost approach.

Accounting (财会〔2023〕11号《企业数据资源相关会计处理暂行规定》): research-phase spending is
expensed; development-phase spending (acquisition, desensitisation, cleaning, labelling,
integration, quality assessment, security) is capitalised. An intangible data resource
(无形资产) is amortised straight-line over its useful life from the month it is ready for
use: amortised = capitalised × whole months elapsed / life months (capped at the life). A
data resource held as inventory (存货) is not amortised; it is carried at cost.

Valuation (《数据资产评估指导意见》):
* cost approach — the carrying amount (capitalised cost less accumulated amortisation);
* income approach — the attributed cash flows over the remaining life, discounted: the annual
  cash flow is the asset's attributed returns of the last 12 months (a shorter record is
  scaled up to a year from the months it covers, at least one), growing at `growth` a year;
  year k (k = 1 … ⌈R⌉ for a remaining life of R years) brings CF·(1+g)^(k−1), the last year
  only its fraction of a year, discounted by (1+r)^−min(k, R). Attributed returns that come out
  negative (an incremental-revenue estimate below zero: noise, or a model that hurt) give an
  income-approach value of 0, not a negative one: the holder can stop using the data, so the
  asset is worth at least nothing; the negative annual cash flow is still reported beside it.
ROI = (attributed returns − total cost) / total cost, to date (None without cost).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

FEN = Decimal("0.01")


def fen(value) -> Decimal:
    return Decimal(str(value)).quantize(FEN, rounding=ROUND_HALF_UP)


def months_between(start: date, end: date) -> int:
    """Whole months from `start` to `end` (0 if end is before start)."""
    months = (end.year - start.year) * 12 + end.month - start.month - (end.day < start.day)
    return max(0, months)


@dataclass(frozen=True)
class Valuation:
    capitalised: Decimal
    expensed: Decimal
    amortised: Decimal
    carrying: Decimal
    attributed: Decimal
    roi: float | None
    income_value: Decimal
    annual_cash_flow: Decimal
    remaining_years: float

    @property
    def cost(self) -> Decimal:
        return self.capitalised + self.expensed

    def as_dict(self) -> dict:
        return {"cost_cny": float(self.cost), "capitalised_cny": float(self.capitalised),
                "expensed_cny": float(self.expensed), "amortised_cny": float(self.amortised),
                "carrying_cny": float(self.carrying), "attributed_returns_cny": float(self.attributed),
                "roi": None if self.roi is None else round(self.roi, 4),
                "value": {"cost": float(self.carrying), "income": float(self.income_value)},
                "annual_cash_flow_cny": float(self.annual_cash_flow),
                "remaining_life_years": round(self.remaining_years, 4)}


def amortised(capitalised, available_on: date, life_months: int, as_of: date, holding: str = "intangible") -> Decimal:
    if holding == "inventory":
        return Decimal("0.00")
    elapsed = min(life_months, months_between(available_on, as_of))
    return fen(Decimal(str(capitalised)) * elapsed / life_months)


def income_value(annual_cash_flow: float, remaining_years: float, rate: float, growth: float) -> float:
    """Σ_k CF·(1+g)^(k−1)·fraction_k / (1+r)^min(k, R) over the remaining life R (years)."""
    total, years = 0.0, math.ceil(remaining_years - 1e-12) if remaining_years > 0 else 0
    for k in range(1, years + 1):
        fraction = min(1.0, remaining_years - (k - 1))
        total += annual_cash_flow * (1 + growth) ** (k - 1) * fraction / (1 + rate) ** min(k, remaining_years)
    return total


def annual_cash_flow(returns_by_day: dict[date, float], as_of: date) -> float:
    """Attributed returns of the 12 months to `as_of`, scaled up to a year when the record is shorter."""
    recent = {d: v for d, v in returns_by_day.items() if 0 <= (as_of - d).days < 365}
    if not recent:
        return 0.0
    covered = min(12, max(1, months_between(min(recent), as_of) + 1))
    return sum(recent.values()) * 12 / covered


def value(cost_lines: list[dict], *, available_on: date, life_months: int, holding: str,
          returns_by_day: dict[date, float], as_of: date, rate: float, growth: float) -> Valuation:
    """Everything the register shows for one asset, from its cost lines and its attributed returns."""
    capitalised = sum((fen(c["amount_cny"]) for c in cost_lines if c["phase"] == "development"), Decimal("0.00"))
    expensed = sum((fen(c["amount_cny"]) for c in cost_lines if c["phase"] == "research"), Decimal("0.00"))
    done = amortised(capitalised, available_on, life_months, as_of, holding)
    attributed = fen(sum(returns_by_day.values()))
    cost = capitalised + expensed
    roi = float((attributed - cost) / cost) if cost > 0 else None
    elapsed = min(life_months, months_between(available_on, as_of))
    remaining = (life_months - elapsed) / 12
    flow = annual_cash_flow(returns_by_day, as_of)
    income = fen(max(0.0, income_value(flow, remaining, rate, growth)))  # never below 0: see the module docstring
    return Valuation(capitalised, expensed, done, capitalised - done, attributed, roi, income, fen(flow), remaining)
