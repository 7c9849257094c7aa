"""`wenlv datagen`, `wenlv import flickr` and `wenlv contracts`."""
from __future__ import annotations

import json
from pathlib import Path

from wenlv.features.contracts import markdown
from wenlv.features.flickr import import_city
from wenlv.features.generator import SCALES, generate
from wenlv.features.signal import prospect_signal


def register(sub) -> None:
    p = sub.add_parser("datagen", help="generate the synthetic three-party data set (tourism, carrier, internet + truth)")
    p.add_argument("--scale", choices=tuple(SCALES), default="tiny", help="how many people, POIs and visits")
    p.add_argument("--seed", type=int, default=7, help="random seed (same seed, same data)")
    p.add_argument("--out", type=Path, required=True, help="output folder (<out>/<party>/<table>.parquet)")
    p.add_argument("--people", type=int, default=None, help="override the scale's number of people (same world)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=_datagen)

    r = sub.add_parser("datagen-signal", help="how well each party's pre-split data ranks the true prospects (ROC AUC, JSON)")
    r.add_argument("--data", type=Path, required=True, help="a folder written by `wenlv datagen`")
    r.set_defaults(func=_signal)

    imp = sub.add_parser("import", help="import real data into the raw contracts")
    imp_sub = imp.add_subparsers(dest="source", required=True, metavar="SOURCE")
    f = imp_sub.add_parser("flickr", help="Flickr (YFCC100M) POI visits of one city, IJCAI'15 files, into tourism/")
    f.add_argument("--city", required=True, help="city code of the file names: Toro, Osak, Glas, Edin, Melb")
    f.add_argument("--source", type=Path, default=Path("../shared/data/flickr"), help="folder holding visits/ and pois/")
    f.add_argument("--out", type=Path, required=True, help="output data folder (writes <out>/tourism/)")
    f.set_defaults(func=_import_flickr)

    c = sub.add_parser("contracts", help="print the data contracts as Markdown (or write them with --out)")
    c.add_argument("--out", type=Path, default=None, help="write to this file (e.g. docs/contracts.md) instead of stdout")
    c.set_defaults(func=_contracts)


def _datagen(args) -> int:
    summary = generate(args.out, scale=args.scale, seed=args.seed, progress=not args.no_progress, people=args.people)
    print(json.dumps(summary))
    return 0


def _signal(args) -> int:
    print(json.dumps(prospect_signal(args.data)))
    return 0


def _import_flickr(args) -> int:
    print(json.dumps(import_city(args.city, args.source, args.out)))
    return 0


def _contracts(args) -> int:
    text = markdown()
    if args.out is None:
        print(text, end="" if text.endswith("\n") else "\n")
    else:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text if text.endswith("\n") else text + "\n")
        print(json.dumps({"written": str(args.out), "bytes": len(text.encode())}))
    return 0
