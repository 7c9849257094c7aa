"""`wenlv ledger assets load|list`, `attribute`, `publish`, `report` (results as JSON on stdout)."""
from __future__ import annotations

import json
from datetime import date
from pathlib import Path

from wenlv.errors import WenlvError

EXAMPLE_CSV = Path(__file__).with_name("examples") / "cost_lines.csv"


def register(sub) -> None:
    p = sub.add_parser("ledger", help="the revenue ledger: attribution, returns by data source, the data-asset register")
    p.add_argument("--db", default=None, help="database URL (default: DATABASE_URL, else the SQLite file of the settings)")
    lsub = p.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")

    a = lsub.add_parser("assets", help="the data-asset register")
    asub = a.add_subparsers(dest="assets_command", required=True, metavar="ACTION")
    load = asub.add_parser("load", help="load cost lines from a CSV (replaces the named assets' lines)")
    load.add_argument("--tenant", required=True, help="the tenant (tourism group) owning the assets")
    load.add_argument("--csv", type=Path, default=EXAMPLE_CSV,
                      help=f"cost-line CSV with columns asset, source, holding, useful_life_months, available_on, "
                           f"category, phase, amount_cny, incurred_on, note (default: the shipped example {EXAMPLE_CSV.name})")
    load.set_defaults(func=_assets_load)
    ls = asub.add_parser("list", help="the register with cost, amortisation, returns, ROI and both values")
    ls.add_argument("--tenant", required=True, help="list this tenant's assets")
    ls.add_argument("--as-of", type=date.fromisoformat, default=None, help="valuation date YYYY-MM-DD (default: today)")
    ls.set_defaults(func=_assets_list)

    t = lsub.add_parser("attribute", help="compute incremental revenue and store the returns split by data source")
    _attribution_options(t)
    t.set_defaults(func=_attribute)

    pub = lsub.add_parser("publish", help="log attributed returns to MLflow: on each earning version's run and "
                                          "one run per data asset")
    _attribution_options(pub)
    pub.add_argument("--as-of", type=date.fromisoformat, default=None, help="valuation date YYYY-MM-DD (default: today)")
    pub.set_defaults(func=_publish)

    rep = lsub.add_parser("report", help="HTML report with charts and the balance-sheet disclosure lines")
    rep.add_argument("--tenant", required=True, help="the tenant to report on")
    rep.add_argument("--out", type=Path, required=True, help="report folder (replaced only when the new one is complete)")
    rep.add_argument("--as-of", type=date.fromisoformat, default=None, help="valuation date YYYY-MM-DD (default: today)")
    rep.set_defaults(func=_report)


def _attribution_options(p) -> None:
    p.add_argument("--tenant", required=True, help="the tenant whose ledger to attribute (publish then logs the "
                                                   "stored returns of every tenant)")
    p.add_argument("--tracking-uri", default=None, help="MLflow store holding the versions' Shapley splits "
                                                        "(default: MLFLOW_TRACKING_URI, else the embedded store)")
    p.add_argument("--fallback-version", default=None,
                   help="split campaigns scored outside the registry by this version's Shapley values "
                        "(default: the champion)")
    p.add_argument("--window-days", type=int, default=None, help="attribution window (default: WENLV_LEDGER_WINDOW_DAYS)")


def _engine(args):
    from wenlv.db import engine as db_engine

    engine = db_engine.make_engine(args.db)
    db_engine.migrate(engine)
    return engine


def _print(obj) -> None:
    print(json.dumps(obj, default=str, ensure_ascii=False))


def _assets_load(args) -> int:
    from wenlv.ledger import assets

    _print(assets.load_csv(_engine(args), args.tenant, args.csv))
    return 0


def _assets_list(args) -> int:
    from wenlv.ledger import assets

    _print({"assets": assets.register(_engine(args), args.tenant, as_of=args.as_of)})
    return 0


def _attribute(args) -> int:
    from wenlv.ledger import returns

    result = returns.attribute_from_registry(_engine(args), args.tenant, args.tracking_uri, args.fallback_version,
                                             args.window_days)
    if result["unsplit"]:
        raise WenlvError(f"no data-source split for {', '.join(result['unsplit'])} (the others are stored): "
                         f"train a version with Shapley values or pass --fallback-version")
    _print(result)
    return 0


def _publish(args) -> int:
    from wenlv.ledger import publish, returns

    engine = _engine(args)
    attributed = returns.attribute_from_registry(engine, args.tenant, args.tracking_uri, args.fallback_version,
                                                 args.window_days)
    _print({"attribution": attributed, **publish.publish(engine, args.tracking_uri, as_of=args.as_of)})
    return 0


def _report(args) -> int:
    from wenlv.ledger import report  # lazy: matplotlib loads only for the report

    _print({"report": str(report.write(_engine(args), args.tenant, args.out, as_of=args.as_of))})
    return 0
