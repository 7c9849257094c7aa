"""`wenlv features`: the Spark feature pipeline from raw party folders to aligned blocks."""
from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from wenlv.errors import WenlvError


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date YYYY-MM-DD: {text!r}") from None


def register(sub) -> None:
    p = sub.add_parser("features", help="validate, tokenise (PSI) and build per-party feature blocks in Spark")
    p.add_argument("--data", type=Path, required=True, help="raw data folder: <data>/<party>/<table>.parquet|csv")
    p.add_argument("--out", type=Path, required=True, help="feature folder: blocks, manifest.json, exchange/")
    p.add_argument("--master", default=None, help="Spark master URL (default local[*], or $SPARK_MASTER)")
    p.add_argument("--quarantine", action="store_true",
                   help="set bad rows aside in <out>/quarantine/ instead of stopping at the first")
    p.add_argument("--split-date", type=_date, default=None,
                   help="first day of the test window (default: the last 28 days of visits are the test window)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(func=main)


def main(args) -> int:
    from wenlv.spark_jobs import features_job  # lazy: CLI start-up (pyspark takes ~0.5 s to import)

    if not args.data.is_dir():
        raise WenlvError(f"--data {args.data} is not a folder")
    manifest = features_job.run(args.data, args.out, master=args.master, quarantine=args.quarantine,
                                split_date=args.split_date, progress=not args.no_progress)
    print(json.dumps({"out": str(args.out), "manifest": str(Path(args.out) / "manifest.json"),
                      "split_date": manifest["split_date"], "psi": manifest["psi"], "quarantine": manifest["quarantine"],
                      "rows": {k: v["rows"] for k, v in manifest["tables"].items()}}))
    return 0
