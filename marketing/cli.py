"""`wenlv campaign create|list|audience|scores|export|min-size|simulate` (results as JSON on stdout, progress on stderr)."""
from __future__ import annotations

import json
import sys
from datetime import date
from pathlib import Path

from pydantic import ValidationError

from wenlv.errors import WenlvError


def register(sub) -> None:
    p = sub.add_parser("campaign", help="campaigns: create, list, compute the audience, export, simulate delivery")
    p.add_argument("--db", default=None, help="database URL (default: DATABASE_URL, else the SQLite file of the settings)")
    csub = p.add_subparsers(dest="campaign_command", required=True, metavar="ACTION")

    c = csub.add_parser("create", help="store a campaign (draft)")
    c.add_argument("--tenant", required=True, help='the tenant (tourism group) the campaign belongs to')
    c.add_argument("--name", required=True, help='a name people will recognise in lists and reports')
    c.add_argument("--target", choices=("destination", "pois", "category", "lookalike"), default="destination", help='who to reach: the whole destination (propensity), POIs or a category (affinity), or people like a seed list')
    c.add_argument("--poi-ids", default=None, help="comma list (target pois)")
    c.add_argument("--category", default=None, help="target category")
    c.add_argument("--seed-file", type=Path, default=None, help="lookalike seed: one token per line (>= 100)")
    c.add_argument("--channel", choices=("sms", "ads"), required=True, help='delivery: sms by the carrier, ads by the internet platform (decides the consent flag and the partner)')
    c.add_argument("--region", default=None, help="home city; destination targets always, affinity and lookalike only when the feature blocks carry a home city (else the audience is refused, never computed without the region)")
    c.add_argument("--uplift-from", type=int, default=None,
                   help="destination: rank by predicted uplift learnt from this earlier campaign's arms")
    c.add_argument("--size", type=int, required=True, help="audience size (treatment + holdout)")
    c.add_argument("--min-score", type=float, default=None, help='leave out people scoring below this')
    c.add_argument("--holdout", type=float, default=0.1, help="holdout fraction (default 0.1)")
    c.add_argument("--cap-contacts", type=int, default=3, help='frequency cap: at most this many contacts per person ...')
    c.add_argument("--cap-days", type=int, default=7, help="... within this many days, across all of the tenant's campaigns")
    c.add_argument("--starts", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    c.add_argument("--ends", type=date.fromisoformat, required=True, help="YYYY-MM-DD")
    c.set_defaults(func=_create)

    ls = csub.add_parser("list", help="a tenant's campaigns")
    ls.add_argument("--tenant", required=True, help="list this tenant's campaigns")
    ls.set_defaults(func=_list)

    a = csub.add_parser("audience", help="score, filter and store the audience (holdout drawn, contacts planned)")
    a.add_argument("--tenant", required=True, help="the campaign's tenant")
    a.add_argument("--id", type=int, required=True, help='campaign id')
    a.add_argument("--data", type=Path, default=None, help="raw data folder (destination target)")
    a.add_argument("--bundle", type=Path, default=None, help="model bundle folder (pois, category, lookalike); default: the champion version")
    a.add_argument("--features", type=Path, default=None, help="feature blocks of the bundle (channel consent)")
    a.add_argument("--seed", type=int, default=0, help='seed of the model fit (the holdout has its own, stored with the campaign)')
    a.add_argument("--method", choices=("faiss", "numpy"), default="faiss", help='top-N selection: FAISS inner-product search or a plain NumPy scan (same audience)')
    a.set_defaults(func=_audience)

    sc = csub.add_parser("scores", help="train the destination propensity and write its scores for the API "
                                         "(WENLV_CAMPAIGN_SCORES)")
    sc.add_argument("--data", type=Path, required=True, help="raw data folder (the parties' folders)")
    sc.add_argument("--out", type=Path, required=True, help="the scores file to write (Parquet, replaced atomically)")
    sc.add_argument("--seed", type=int, default=0, help="seed of the model fit")
    sc.set_defaults(func=_scores)

    e = csub.add_parser("export", help="the treatment group as the delivering partner's pseudonyms")
    e.add_argument("--tenant", required=True, help="the campaign's tenant")
    e.add_argument("--id", type=int, required=True, help='campaign id')
    e.add_argument("--format", choices=("csv", "json"), default="csv", help='file format of the exported partner tokens')
    e.set_defaults(func=_export)

    m = csub.add_parser("min-size", help="a tenant's minimum audience size (default WENLV_MIN_AUDIENCE_SIZE)")
    m.add_argument("--tenant", required=True, help='the tenant whose minimum audience size to show or set')
    m.add_argument("--size", type=int, default=None, help="set it (omit to show it)")
    m.set_defaults(func=_min_size)

    s = csub.add_parser("simulate", help="simulated delivery on generated data: responses from truth/ into the ledger")
    s.add_argument("--id", type=int, required=True, help='campaign id')
    s.add_argument("--data", type=Path, required=True, help='the synthetic data folder whose truth/ drives the responses')
    s.add_argument("--seed", type=int, default=0, help='seed of the simulated responses')
    s.set_defaults(func=_simulate)


def _engine(args):
    from wenlv.db import engine as db_engine

    engine = db_engine.make_engine(args.db)
    db_engine.migrate(engine)
    return engine


def _print(obj) -> None:
    print(json.dumps(obj, default=str))


def _create(args) -> int:
    from wenlv.marketing import campaigns as store

    seeds = None
    if args.seed_file is not None:
        if not args.seed_file.exists():
            raise WenlvError(f"seed file {args.seed_file} does not exist")
        seeds = [line.strip() for line in args.seed_file.read_text().splitlines() if line.strip()]
    try:
        spec = store.CampaignSpec(
            name=args.name, target_kind=args.target, channel=args.channel, region=args.region, audience_size=args.size,
            poi_ids=[p.strip() for p in args.poi_ids.split(",")] if args.poi_ids else None, category=args.category,
            seed_tokens=seeds, uplift_from=args.uplift_from, min_score=args.min_score, holdout_fraction=args.holdout,
            cap_contacts=args.cap_contacts,
            cap_days=args.cap_days, starts_on=args.starts, ends_on=args.ends)
    except ValidationError as exc:
        raise WenlvError("invalid campaign — " + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'campaign'}: {e['msg']}"
                                                            for e in exc.errors())) from None
    _print(store.public(store.create(_engine(args), args.tenant, spec)))
    return 0


def _list(args) -> int:
    from wenlv.marketing import campaigns as store

    _print([store.public(c) for c in store.list_for(_engine(args), args.tenant)])
    return 0


def _audience(args) -> int:
    # lazy: PyTorch and FAISS load only for the command that scores (keeps `wenlv --help` fast)
    from wenlv.marketing import audience, sources
    from wenlv.marketing import campaigns as store

    engine = _engine(args)
    campaign = store.get(engine, args.tenant, args.id)
    if campaign is None:
        raise WenlvError(f"campaign {args.id} not found for tenant {args.tenant}")
    candidates, query, info = sources.for_campaign(campaign, data_dir=args.data, bundle_dir=args.bundle,
                                                   features_dir=args.features, seed=args.seed, progress=True,
                                                   engine=engine)
    _print(audience.compute(engine, campaign, candidates, query, method=args.method) | {"scoring": info})
    return 0


def _scores(args) -> int:
    # lazy: PyTorch loads only for the command that trains
    from wenlv.marketing import served, sources

    candidates, _, info = sources.destination(args.data, seed=args.seed, progress=True)
    path = served.save_scores(args.out, candidates, info)
    _print({"scores": str(path), "people": len(candidates.tokens), "model_version": candidates.model_version})
    return 0


def _export(args) -> int:
    from wenlv.marketing import export

    try:
        _, rows = export.export_rows(_engine(args), args.tenant, args.id)
    except LookupError as exc:
        raise WenlvError(str(exc)) from None
    sys.stdout.write(export.to_csv(rows) if args.format == "csv" else json.dumps(rows) + "\n")
    return 0


def _min_size(args) -> int:
    from wenlv.marketing import campaigns as store

    engine = _engine(args)
    if args.size is not None:
        if args.size < 1:
            raise WenlvError(f"--size must be at least 1, got {args.size}")
        store.set_min_audience_size(engine, args.tenant, args.size)
    _print({"tenant": args.tenant, "min_audience_size": store.min_audience_size(engine, args.tenant)})
    return 0


def _simulate(args) -> int:
    # lazy: pandas/pyarrow for the truth tables load only here
    from wenlv.marketing.simulate import simulate_delivery

    _print(simulate_delivery(_engine(args), args.id, args.data, args.seed))
    return 0
