"""`wenlv demo`: every stage end to end on embedded defaults, then a summary.

Stages run in order; each is a `run(ctx) -> dict` function in its package's `demo_stage`
module and returns its section of the summary. `ctx.results` holds earlier sections.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# (summary key, module) in flow order; a stage's `run` may read earlier sections from ctx.results.
STAGES = (
    ("data", "wenlv.features.demo_stage"),
    ("features", "wenlv.spark_jobs.demo_stage"),
    ("train", "wenlv.training.demo_stage"),
    ("serving", "wenlv.serving.demo_stage"),
    ("itinerary", "wenlv.itinerary.demo_stage"),
    ("campaign", "wenlv.marketing.demo_stage"),
)


@dataclass
class DemoContext:
    workdir: Path
    scale: str = "tiny"
    seed: int = 7
    progress: bool = True
    results: dict = field(default_factory=dict)

    def log(self, message: str) -> None:
        print(f"[demo] {message}", file=sys.stderr, flush=True)


def register(sub) -> None:
    p = sub.add_parser("demo", help="run every stage end to end on embedded defaults")
    p.add_argument("--scale", choices=("tiny", "small"), default="tiny")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workdir", type=Path, default=None, help="where data, features and models go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="last line of stdout is the summary as one JSON object")
    p.set_defaults(func=main)


def run(ctx: DemoContext) -> dict:
    import importlib

    summary: dict = {"scale": ctx.scale, "seed": ctx.seed, "workdir": str(ctx.workdir), "stages": {}}
    for key, module in STAGES:
        stage = importlib.import_module(module)
        ctx.log(f"stage {key} …")
        started = time.perf_counter()
        section = stage.run(ctx)
        seconds = round(time.perf_counter() - started, 3)
        summary["stages"][key] = seconds
        ctx.results[key] = section
        ctx.log(f"stage {key} done in {seconds:.1f} s")
        summary.update(_summary_sections(key, section))
    return summary


def _summary_sections(key: str, section: dict) -> dict:
    """A stage may return several top-level summary keys under `_summary` (e.g. data + psi)."""
    extra = dict(section.get("_summary", {}))
    public = {k: v for k, v in section.items() if not k.startswith("_")}
    return {key: public, **extra}


def main(args) -> int:
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="wenlv-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(workdir=workdir, scale=args.scale, seed=args.seed)
    summary = run(ctx)
    if args.json:
        print(json.dumps(summary, default=str))
    else:
        print(_human(summary))
    return 0


def _human(summary: dict) -> str:
    lines = [f"Wenlv demo — scale {summary['scale']}, workdir {summary['workdir']}"]
    for key, seconds in summary["stages"].items():
        lines.append(f"  {key:<10} {seconds:8.1f} s")
    for key, value in summary.items():
        if key in ("scale", "seed", "workdir", "stages"):
            continue
        lines.append(f"{key}: {json.dumps(value, default=str)}")
    return "\n".join(lines)
