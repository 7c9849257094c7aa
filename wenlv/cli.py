"""The `wenlv` command: one subcommand per stage; each stage package registers its own.

Each module listed in STAGE_CLIS has a `cli.py` with `register(subparsers)` that adds
its subcommands and sets `func` on them; benchmarks register under `wenlv bench`.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from wenlv.errors import WenlvError

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # implicit and numpy BLAS: no oversubscription

STAGE_CLIS = ("wenlv.db.cli", "wenlv.features.cli", "wenlv.spark_jobs.cli", "wenlv.training.cli", "wenlv.serving.cli", "wenlv.itinerary.cli")
BENCHES = ("wenlv.bench.features", "wenlv.bench.als", "wenlv.bench.serve", "wenlv.bench.itinerary", "wenlv.bench.charts",
           "wenlv.bench.wan", "wenlv.bench.privacy")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wenlv", description="Wenlv tourism recommendation and marketing engine")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from wenlv import demo

    demo.register(sub)
    for name in STAGE_CLIS:
        importlib.import_module(name).register(sub)

    bench = sub.add_parser("bench", help="benchmarks (JSON on stdout, peers measured in the same run)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in BENCHES:
        importlib.import_module(name).register(bench_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("httpx", "httpcore", "py4j", "urllib3", "alembic"):  # per-request chatter
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except WenlvError as exc:
        print(f"wenlv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
