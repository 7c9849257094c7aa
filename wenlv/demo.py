"""`wenlv demo`: every stage end to end on embedded defaults, then a summary.

Stages run in order; each is a `run(ctx) -> dict` function in its package's `demo_stage`
module and returns its section of the summary. `ctx.results` holds earlier sections.
"""
from __future__ import annotations

import importlib
import json
import shlex
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
    ("ledger", "wenlv.ledger.demo_stage"),
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
    p.add_argument("--scale", choices=("tiny", "small"), default="tiny", help="size of the generated data")
    p.add_argument("--seed", type=int, default=7, help="random seed of every stage")
    p.add_argument("--workdir", type=Path, default=None, help="where data, features and models go (default: a temp dir)")
    p.add_argument("--json", action="store_true", help="last line of stdout is the summary as one JSON object")
    p.set_defaults(func=main)


def run(ctx: DemoContext) -> dict:
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
    sys.stdout.flush()
    print(next_steps(ctx), file=sys.stderr, flush=True)
    return 0


def next_steps(ctx: DemoContext) -> str:
    """What to try after the demo, as commands for its workdir (the API, a key, a request, MLflow)."""
    train = ctx.results.get("train", {}).get("_paths", {})
    serving = ctx.results.get("serving", {}).get("_paths", {})
    workdir = shlex.quote(str(ctx.workdir))
    keys = shlex.quote(serving.get("api_keys") or f"{ctx.workdir}/api_keys.sqlite")
    tracking_uri = serving.get("tracking_uri") or train.get("tracking_uri")
    model = (f"--tracking-uri {shlex.quote(tracking_uri)}" if tracking_uri
             else f"--bundle {shlex.quote(str(train.get('bundle_dir', '')))}")
    serve = ["wenlv serve", model]
    if serving.get("sqlite"):
        serve.append(f"--sqlite {shlex.quote(serving['sqlite'])}")
    if serving.get("prefix") and serving["prefix"] != "wenlv:":  # REDIS_URL: the demo's own key prefix
        serve.append(f"--prefix {shlex.quote(serving['prefix'])}")
    serve += [f"--keys {keys}", "--port 8000"]
    ledger_db = ctx.results.get("ledger", {}).get("_paths", {}).get("database")
    if ledger_db:  # the campaign and ledger database the analytics routes and the dashboard read
        serve.insert(0, f"WENLV_DATABASE_SQLITE={shlex.quote(ledger_db)}")
    token = serving.get("example_token") or "some-visitor-token"
    lines = [
        f"Next steps (the demo's files are in {workdir}):",
        "  1. serve the API with the demo's model (leave it running):",
        "       " + " ".join(serve),
        "  2. in another shell, make a key (printed once):",
        f"       KEY=$(wenlv apikey create --role visitor-app --tenant demo --keys {keys}"
        " | python3 -c 'import json, sys; print(json.load(sys.stdin)[\"key\"])')",
        "  3. ask for recommendations:",
        f"       curl -s -H \"Authorization: Bearer $KEY\" "
        f"'http://127.0.0.1:8000/v1/visitors/{token}/recommendations?k=5'",
    ]
    if ledger_db:
        lines += ["  then the analyst dashboard (revenue, holdout intervals, returns by source, asset values):",
                  f"       wenlv apikey create --role analyst --tenant demo --keys {keys}",
                  "       open http://127.0.0.1:8000/dashboard and enter that key"]
    if tracking_uri:
        lines += ["  4. look at the training run and the registered model in the MLflow UI:",
                  f"       mlflow ui --backend-store-uri {shlex.quote(tracking_uri)} --port 5000"]
    return "\n".join(lines)


def _human(summary: dict) -> str:
    lines = [f"Wenlv demo — scale {summary['scale']}, workdir {summary['workdir']}"]
    for key, seconds in summary["stages"].items():
        lines.append(f"  {key:<10} {seconds:8.1f} s")
    for key, value in summary.items():
        if key in ("scale", "seed", "workdir", "stages"):
            continue
        lines.append(f"{key}: {json.dumps(value, default=str)}")
    return "\n".join(lines)
