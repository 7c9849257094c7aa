"""`wenlv ledger report --out DIR`: an HTML report with charts and the balance-sheet disclosure lines.

The same numbers as the API (`ledger.analytics`): observed revenue by day, incremental revenue
with 95% intervals beside last-touch (associative) by campaign and model version, returns by
data source, and the data-asset register with both values. The disclosure follows
财会〔2023〕11号: the carrying amounts of data resources shown as 其中：数据资源 under 存货
(held as inventory), 无形资产 (intangible, ready for use) and 开发支出 (intangible, still in
development: its ready-for-use date is after the report date).

The report is built in a temporary folder beside DIR and swapped in only when complete, so a
failed run leaves an earlier report intact.
"""
from __future__ import annotations

import html
import json
import shutil
import tempfile
from datetime import date
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a display
import matplotlib.pyplot as plt  # noqa: E402 - after choosing the backend

from sqlalchemy import Engine  # noqa: E402

from wenlv.ledger import analytics  # noqa: E402


def disclosure(asset_rows: list[dict], as_of: date) -> list[dict]:
    """The 其中：数据资源 lines: carrying amounts by balance-sheet item."""
    lines = {"存货": 0.0, "无形资产": 0.0, "开发支出": 0.0}
    for a in asset_rows:
        if a["holding"] == "inventory":
            lines["存货"] += a["carrying_cny"]
        elif date.fromisoformat(a["available_on"]) > as_of:
            lines["开发支出"] += a["carrying_cny"]
        else:
            lines["无形资产"] += a["carrying_cny"]
    return [{"item": item, "line": f"{item} 其中：数据资源", "carrying_cny": round(v, 2)} for item, v in lines.items()]


def _chart_daily(daily: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    series: dict[str, dict[str, float]] = {}
    for row in daily:
        label = (f"campaign {row['campaign_id']}" if row["campaign_id"] is not None
                 else f"model {row['model_version']}" if row["model_version"] else "not exposed / holdout")
        series.setdefault(label, {})
        series[label][row["day"]] = series[label].get(row["day"], 0.0) + row["revenue_cny"]
    for label, points in sorted(series.items()):
        days = sorted(points)
        ax.plot([date.fromisoformat(d) for d in days], [points[d] for d in days], marker=".", label=label)
    ax.set_ylabel("revenue (CNY)")
    ax.set_title("Observed revenue by day")
    if series:
        ax.legend(fontsize=8)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_incremental(rows: list[tuple[str, dict]], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8, 3.5))
    labels = [name for name, _ in rows]
    x = range(len(rows))
    inc = [r["incremental_revenue_cny"] or 0.0 for _, r in rows]
    lo = [inc[i] - (r["ci95"] or [inc[i], inc[i]])[0] for i, (_, r) in enumerate(rows)]
    hi = [(r["ci95"] or [inc[i], inc[i]])[1] - inc[i] for i, (_, r) in enumerate(rows)]
    ax.bar([i - 0.2 for i in x], inc, 0.4, yerr=[lo, hi], capsize=4, label="incremental (treatment − holdout), 95% CI")
    ax.bar([i + 0.2 for i in x], [r["last_touch_revenue_cny"] for _, r in rows], 0.4, alpha=0.6,
           label="last touch (associative)")
    ax.set_xticks(list(x), labels, fontsize=8)
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("CNY")
    ax.set_title("Incremental revenue vs last touch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_sources(by_source: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.bar(list(by_source), list(by_source.values()), color=["#4c72b0", "#dd8452", "#55a868"])
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_ylabel("CNY")
    ax.set_title("Attributed returns by data source (Shapley split)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _chart_assets(asset_rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    x = range(len(asset_rows))
    ax.bar([i - 0.2 for i in x], [a["value"]["cost"] for a in asset_rows], 0.4, label="cost approach (carrying)")
    ax.bar([i + 0.2 for i in x], [a["value"]["income"] for a in asset_rows], 0.4, label="income approach")
    ax.set_xticks(list(x), [f"#{a['id']} {a['source']}" for a in asset_rows], fontsize=8)
    ax.set_ylabel("CNY")
    ax.set_title("Data assets: cost vs income value")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return "" if value is None else str(value)


def build(engine: Engine, tenant: str, folder: Path, as_of: date) -> dict:
    """Write report.html, its charts and data.json into `folder`; returns the data."""
    revenue = analytics.revenue(engine, tenant)
    register = [analytics.asset_detail(engine, tenant, a["id"], as_of)
                for a in analytics.asset_list(engine, tenant, as_of)["assets"]]
    lines = disclosure(register, as_of)
    _chart_daily(revenue["daily"], folder / "revenue_daily.png")
    rows = ([(f"campaign {c['campaign_id']}", c) for c in revenue["campaigns"]]
            + [(f"model {m['model_version']}", m) for m in revenue["model_versions"]])
    _chart_incremental(rows, folder / "incremental.png")
    _chart_sources(revenue["returns_by_source"], folder / "returns_by_source.png")
    _chart_assets(register, folder / "asset_values.png")
    data = {"tenant": tenant, "as_of": as_of.isoformat(), "revenue": revenue, "assets": register,
            "disclosure": lines}
    (folder / "data.json").write_text(json.dumps(data, ensure_ascii=False, indent=1, default=str), encoding="utf-8")
    asset_cols = ["id", "name", "source", "holding", "cost_cny", "capitalised_cny", "expensed_cny", "amortised_cny",
                  "carrying_cny", "attributed_returns_cny", "roi", "value"]
    camp_cols = ["campaign_id", "name", "treated", "holdout", "incremental_revenue_cny", "ci95", "incremental_visits",
                 "visits_ci95", "last_touch_revenue_cny", "method"]
    ver_cols = ["model_version", "treated", "holdout", "incremental_revenue_cny", "ci95", "last_touch_revenue_cny"]
    page = f"""<!doctype html><html lang="zh"><head><meta charset="utf-8"><title>Wenlv ledger report — {html.escape(tenant)}</title>
<style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{background:#f4f4f4}}</style></head><body>
<h1>Revenue ledger and data assets — tenant {html.escape(tenant)}, as of {as_of.isoformat()}</h1>
<h2>Balance-sheet disclosure (财会〔2023〕11号)</h2>
{_table(lines, ["line", "carrying_cny"])}
<h2>Incremental revenue (treatment − holdout, 95% interval: {html.escape(revenue['attribution']['interval'])})</h2>
<p>Last-touch revenue (window {revenue['attribution']['window_days']} days) is associative: it credits the latest
exposure and counts people who would have come anyway. The incremental figure is the causal one.</p>
<img src="incremental.png" alt="incremental revenue vs last touch">
{_table(revenue["campaigns"], camp_cols)}
{_table(revenue["model_versions"], ver_cols)}
<h2>Observed revenue by day</h2><img src="revenue_daily.png" alt="revenue by day">
<h2>Returns by data source</h2><img src="returns_by_source.png" alt="returns by data source">
{_table([revenue["returns_by_source"]], list(revenue["returns_by_source"]))}
<h2>Data-asset register</h2><img src="asset_values.png" alt="asset values">
{_table(register, asset_cols)}
<p>Cost approach = carrying amount (capitalised development cost less straight-line amortisation); income approach =
attributed cash flows over the remaining life, discounted. Raw numbers: <a href="data.json">data.json</a>.</p>
</body></html>"""
    (folder / "report.html").write_text(page, encoding="utf-8")
    return data


def write(engine: Engine, tenant: str, out: str | Path, as_of: date | None = None) -> Path:
    """Build the report in a temporary folder beside `out`, then swap it in (an earlier report survives a failure)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    work.chmod(0o755)  # a report folder, readable like any other output
    try:
        build(engine, tenant, work, as_of or date.today())
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{work.name[-8:]}"
        out.rename(old)
    work.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out / "report.html"
