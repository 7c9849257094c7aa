"""The `wenlv` command: one subcommand per stage; each stage package registers its own.

Each module listed in STAGE_CLIS has a `cli.py` with `register(subparsers)` that adds
its subcommands and sets `func` on them; benchmarks register under `wenlv bench`.
After registration, `build_parser` gives every (sub)command the same manners: defaults
shown in `--help` and `-v/--verbose` accepted after the subcommand too.
"""
from __future__ import annotations

import os

from wenlv.settings import Settings

# Before anything loads numpy: implicit and numpy BLAS without oversubscription (the
# setting's default, 1, unless the environment says otherwise).
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(Settings.model_fields["openblas_num_threads"].default))

import argparse  # noqa: E402 - after the BLAS default above
import importlib  # noqa: E402
import importlib.metadata  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from wenlv import config_cli  # noqa: E402
from wenlv.errors import WenlvError  # noqa: E402
from wenlv.serving.logs import configure_logging  # noqa: E402
from wenlv.settings import get_settings, reset_settings  # noqa: E402

# Stage CLIs are imported by name so `wenlv --help` stays one place to add a stage; each
# imports its own (heavy) libraries only inside the command that needs them.
STAGE_CLIS = ("wenlv.db.cli", "wenlv.privacy.cli", "wenlv.features.cli", "wenlv.spark_jobs.cli",
              "wenlv.training.cli", "wenlv.serving.cli", "wenlv.itinerary.cli", "wenlv.marketing.cli",
              "wenlv.ledger.cli")
BENCHES = ("wenlv.bench.features", "wenlv.bench.als", "wenlv.bench.serve", "wenlv.bench.itinerary", "wenlv.bench.audience",
           "wenlv.bench.wan", "wenlv.bench.privacy", "wenlv.bench.events", "wenlv.bench.faults.cli", "wenlv.bench.soak", "wenlv.bench.quality",
           "wenlv.bench.charts")
# Loggers that talk at INFO on a healthy run: per-request chatter, and faiss.loader, which
# logs each CPU-specific build it probes and cannot import (ModuleNotFoundError lines).
QUIET_LOGGERS = ("httpx", "httpcore", "py4j", "urllib3", "alembic", "faiss.loader")
VERBOSE_HELP = "debug logging"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show `(default: X)` where there is a default worth showing (not None/False, not already said)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default in (None, False, argparse.SUPPRESS) or "default" in text.lower():
            return text
        return super()._get_help_string(action)


def version() -> str:
    try:
        return importlib.metadata.version("wenlv")
    except importlib.metadata.PackageNotFoundError:  # a checkout on PYTHONPATH, never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wenlv", description="Wenlv tourism recommendation and marketing engine",
                                     formatter_class=HelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from wenlv import demo  # lazy: wenlv.demo sits above the stage CLIs in the layers, imported once here

    demo.register(sub)
    for name in STAGE_CLIS:
        importlib.import_module(name).register(sub)
    config_cli.register(sub)

    bench = sub.add_parser("bench", help="benchmarks (JSON on stdout, peers measured in the same run)")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for name in BENCHES:
        importlib.import_module(name).register(bench_sub)
    for _, command in subcommands(parser):
        _mannered(command)
    return parser


def subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(path, parser) of every subcommand under `parser`, depth first."""
    for action in parser._actions:  # argparse has no public walk over its tree
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield (*path, name), child
                yield from subcommands(child, (*path, name))


def _mannered(command: argparse.ArgumentParser) -> None:
    """Defaults in --help, and -v/--verbose after the subcommand (SUPPRESS: never resets the top-level flag)."""
    command.formatter_class = HelpFormatter
    if "--verbose" not in command._option_string_actions:
        command.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except WenlvError as exc:  # a bad environment variable: say which, before anything runs
        print(f"wenlv: error: {exc}", file=sys.stderr)
        return 2
    reset_settings()  # a command may still set variables before its own first read (the demo's MLflow store)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO, settings.log_format, settings.access_log,
                      force=False)
    for noisy in QUIET_LOGGERS:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except WenlvError as exc:
        print(f"wenlv: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
