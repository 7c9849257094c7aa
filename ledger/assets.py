"""The data-asset register: assets, their cost lines (from a CSV or the API), their attributed returns.

Cost lines carry a category and a phase (财会〔2023〕11号): research lines are expensed,
development lines are capitalised and must be one of the development categories
(acquisition, desensitisation, cleaning, labelling, integration, quality assessment,
security). A CSV is the whole cost record of the assets it names: loading it again
replaces those assets' lines, never doubles them; a bad row stops the load with the row
and column named, and nothing is written. The API adds lines to one asset.

Attributed returns of an asset: the tenant's returns credited to its data source
(`attributed_returns`), divided among the tenant's assets of that source in proportion
to their cost (equally when none has a cost yet).

Every read and write takes the tenant; another tenant's asset is indistinguishable from a
missing one (None).
"""
from __future__ import annotations

import csv
from collections import defaultdict
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from sqlalchemy import Engine, delete, func, insert, select

from wenlv.db.schema import SOURCES, asset_cost_lines, attributed_returns, data_assets
from wenlv.errors import WenlvError
from wenlv.ledger import valuation
from wenlv.settings import get_settings

DEVELOPMENT_CATEGORIES = ("acquisition", "desensitisation", "cleaning", "labelling", "integration",
                          "quality_assessment", "security")
RESEARCH_CATEGORIES = ("research", "feasibility", "exploration")
CATEGORIES = DEVELOPMENT_CATEGORIES + RESEARCH_CATEGORIES
CSV_COLUMNS = ("asset", "source", "holding", "useful_life_months", "available_on", "category", "phase",
               "amount_cny", "incurred_on", "note")


class AssetSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    name: str = Field(min_length=1, max_length=200)
    source: Literal[SOURCES] = Field(description="whose data: tourism (own), carrier or internet (licensed)")  # type: ignore[valid-type]
    holding: Literal["intangible", "inventory"] = Field("intangible", description="无形资产 or 存货")
    useful_life_months: int = Field(gt=0, le=600)
    available_on: date = Field(description="ready for use: amortisation starts here")
    description: str | None = Field(None, max_length=1000)


class CostLine(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    category: Literal[CATEGORIES] = Field(description="what the money bought")  # type: ignore[valid-type]
    phase: Literal["research", "development"] = Field(description="research: expensed; development: capitalised")
    amount_cny: Decimal = Field(ge=0, max_digits=14, decimal_places=2)
    incurred_on: date
    note: str | None = Field(None, max_length=500)

    @model_validator(mode="after")
    def _phase_fits_category(self) -> "CostLine":
        if self.phase == "development" and self.category not in DEVELOPMENT_CATEGORIES:
            raise ValueError(f"a development (capitalised) line must be one of {', '.join(DEVELOPMENT_CATEGORIES)}; "
                             f"{self.category!r} is research spending (expensed)")
        if self.phase == "research" and self.category not in RESEARCH_CATEGORIES:
            raise ValueError(f"category {self.category!r} is development work: phase must be 'development'")
        return self


class AssetNotFound(WenlvError):
    """No such asset for this tenant (another tenant's asset looks exactly like a missing one)."""


def _invalid(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'row'}: {e['msg']}" for e in exc.errors())


# --------------------------------------------------------------------------- writes
def ensure_asset(connection, tenant: str, spec: AssetSpec) -> int:
    """The id of the tenant's asset of that name, created from `spec` if new (an existing one must agree)."""
    row = connection.execute(select(data_assets).where(data_assets.c.tenant == tenant,
                                                       data_assets.c.name == spec.name)).mappings().first()
    if row is None:
        return connection.execute(insert(data_assets).values(tenant=tenant, **spec.model_dump())).inserted_primary_key[0]
    for key in ("source", "holding", "useful_life_months", "available_on"):
        if row[key] != getattr(spec, key):
            raise WenlvError(f"asset {spec.name!r} already exists with {key}={row[key]!s}, not {getattr(spec, key)!s}")
    return row["id"]


def add_cost_lines(engine: Engine, tenant: str, asset_id: int, lines: list[dict]) -> int:
    """Validate every line (errors name the line and field), then store all or none."""
    good, bad = [], []
    for i, raw in enumerate(lines):
        try:
            good.append(CostLine.model_validate(raw))
        except ValidationError as exc:
            bad.append(f"line {i}: {_invalid(exc)}")
    if bad:
        raise WenlvError("cost lines refused, none stored: " + " | ".join(bad[:10]))
    with engine.begin() as c:
        if get_asset_row(c, tenant, asset_id) is None:
            raise AssetNotFound(f"asset {asset_id} not found")
        if good:
            c.execute(insert(asset_cost_lines), [{"asset_id": asset_id, **g.model_dump()} for g in good])
    return len(good)


def load_csv(engine: Engine, tenant: str, path: str | Path) -> dict:
    """Load a cost-line CSV (columns CSV_COLUMNS); replaces the named assets' lines in one transaction."""
    path = Path(path)
    if not path.is_file():
        raise WenlvError(f"{path}: no such file")
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        missing = [c for c in CSV_COLUMNS if c not in (reader.fieldnames or []) and c != "note"]
        if missing:
            raise WenlvError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(CSV_COLUMNS)})")
        rows = list(reader)
    specs, lines, errors = {}, defaultdict(list), []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        row = {k: (v.strip() if isinstance(v, str) else v) for k, v in row.items() if k in CSV_COLUMNS}
        try:
            spec = AssetSpec(name=row["asset"], source=row["source"], holding=row["holding"] or "intangible",
                             useful_life_months=row["useful_life_months"], available_on=row["available_on"])
            line = CostLine(category=row["category"], phase=row["phase"], amount_cny=row["amount_cny"],
                            incurred_on=row["incurred_on"], note=row.get("note") or None)
        except ValidationError as exc:
            errors.append(f"{path}:{n}: {_invalid(exc)}")
            continue
        earlier = specs.setdefault(spec.name, spec)
        if earlier != spec:
            errors.append(f"{path}:{n}: asset {spec.name!r} is described differently on an earlier row")
            continue
        lines[spec.name].append(line)
    if errors:
        raise WenlvError("cost lines refused, nothing loaded: " + " | ".join(errors[:10])
                         + (f" | … {len(errors) - 10} more" if len(errors) > 10 else ""))
    with engine.begin() as c:
        ids = {}
        for name, spec in specs.items():
            ids[name] = ensure_asset(c, tenant, spec)
            c.execute(delete(asset_cost_lines).where(asset_cost_lines.c.asset_id == ids[name]))
            c.execute(insert(asset_cost_lines), [{"asset_id": ids[name], **line.model_dump()} for line in lines[name]])
    return {"assets": {name: ids[name] for name in specs}, "cost_lines": sum(len(v) for v in lines.values())}


# --------------------------------------------------------------------------- reads
def get_asset_row(connection, tenant: str, asset_id: int) -> dict | None:
    row = connection.execute(select(data_assets).where(data_assets.c.tenant == tenant,
                                                       data_assets.c.id == asset_id)).mappings().first()
    return dict(row) if row else None


def _cost_lines(connection, asset_ids: list[int]) -> dict[int, list[dict]]:
    out = defaultdict(list)
    if asset_ids:
        for r in connection.execute(select(asset_cost_lines).where(asset_cost_lines.c.asset_id.in_(asset_ids))
                                    .order_by(asset_cost_lines.c.incurred_on, asset_cost_lines.c.id)).mappings():
            out[r["asset_id"]].append(dict(r))
    return out


def _returns_by_source(connection, tenant: str) -> dict[str, list[dict]]:
    out = defaultdict(list)
    rows = connection.execute(select(attributed_returns.c.day, attributed_returns.c.source,
                                     attributed_returns.c.campaign_id, attributed_returns.c.model_version,
                                     func.sum(attributed_returns.c.amount_cny).label("amount"))
                              .where(attributed_returns.c.tenant == tenant)
                              .group_by(attributed_returns.c.day, attributed_returns.c.source,
                                        attributed_returns.c.campaign_id, attributed_returns.c.model_version)
                              .order_by(attributed_returns.c.day)).mappings()
    for r in rows:
        out[r["source"]].append(dict(r))
    return out


def register(engine: Engine, tenant: str, as_of: date | None = None, asset_id: int | None = None,
             detail: bool = False) -> list[dict]:
    """The tenant's assets with cost, amortisation, returns, ROI and both values (as of a date)."""
    settings = get_settings()
    as_of = as_of or date.today()
    with engine.connect() as c:
        query = select(data_assets).where(data_assets.c.tenant == tenant).order_by(data_assets.c.id)
        every = [dict(r) for r in c.execute(query).mappings()]
        lines = _cost_lines(c, [a["id"] for a in every])
        returns = _returns_by_source(c, tenant)
    costs = {a["id"]: sum((Decimal(str(x["amount_cny"])) for x in lines[a["id"]]), Decimal(0)) for a in every}
    out = []
    for asset in every:
        if asset_id is not None and asset["id"] != asset_id:
            continue
        peers = [a["id"] for a in every if a["source"] == asset["source"]]
        peer_cost = sum(costs[p] for p in peers)
        share = float(costs[asset["id"]] / peer_cost) if peer_cost > 0 else 1.0 / len(peers)
        credited = [{**r, "amount": float(r["amount"]) * share} for r in returns[asset["source"]]]
        by_day = defaultdict(float)
        for r in credited:
            by_day[r["day"]] += r["amount"]
        v = valuation.value(lines[asset["id"]], available_on=asset["available_on"],
                            life_months=asset["useful_life_months"], holding=asset["holding"],
                            returns_by_day=dict(by_day), as_of=as_of, rate=settings.ledger_discount_rate,
                            growth=settings.ledger_growth)
        item = {"id": asset["id"], "name": asset["name"], "source": asset["source"], "holding": asset["holding"],
                "useful_life_months": asset["useful_life_months"], "available_on": asset["available_on"].isoformat(),
                "as_of": as_of.isoformat(), "returns_share": round(share, 6), **v.as_dict()}
        if detail:
            item["cost_lines"] = [{"id": x["id"], "category": x["category"], "phase": x["phase"],
                                   "amount_cny": float(x["amount_cny"]), "incurred_on": x["incurred_on"].isoformat(),
                                   "note": x["note"]} for x in lines[asset["id"]]]
            item["returns"] = [{"day": r["day"].isoformat(), "campaign_id": r["campaign_id"],
                                "model_version": r["model_version"], "amount_cny": round(r["amount"], 2)}
                               for r in credited]
        out.append(item)
    return out
