"""The architecture as the test command enforces it: import-linter contracts and one import root."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
STAGES = ("features", "spark_jobs", "privacy", "training", "itinerary", "marketing", "ledger", "serving", "bench")


def lint(cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold():
    proc = lint()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 broken" in proc.stdout


@pytest.mark.parametrize("source, target, contract", [
    ("features", "from wenlv.serving import app", "The flow"),
    ("serving", "from wenlv.bench import serve", "The product imports neither benchmarks nor tests"),
    ("itinerary", "from wenlv.itinerary import planner", "The itinerary checker shares no code"),
])
def test_a_deliberate_violation_fails_the_contracts(tmp_path, source, target, contract):
    """A scratch module that breaks a contract must make lint-imports fail (checked on a copy)."""
    copy = tmp_path / "repo"
    shutil.copytree(ROOT, copy, symlinks=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "docs", "mlflow", "tests", "__pycache__", "*.parquet"))
    name = "check.py" if source == "itinerary" else "_scratch_violation.py"
    module = copy / source / name
    body = module.read_text() if module.exists() else ""
    module.write_text(body + "\n" + textwrap.dedent(target) + "\n")
    env_root = str(copy)
    proc = subprocess.run([str(LINT), "--no-cache"], cwd=copy, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": env_root, "PATH": "/usr/bin:/bin"})
    assert proc.returncode != 0, proc.stdout
    assert contract in proc.stdout and "BROKEN" in proc.stdout


def render_layers() -> str:
    """The layer picture of docs/architecture.md, from the flow contract in pyproject.toml."""
    contracts = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in contracts if c["id"] == "flow")["layers"]
    rows = ["  ·  ".join(part.strip() for part in layer.split("|")) for layer in layers]
    return "```\n" + "\n  │\n".join(rows) + "\n```"


def test_architecture_doc_shows_the_layers_the_contracts_enforce():
    doc = (ROOT / "docs" / "architecture.md").read_text()
    block = re.search(r"<!-- layers:begin[^>]*-->\n(.*?)\n<!-- layers:end -->", doc, re.S)
    assert block, "docs/architecture.md lost its layers block"
    assert block.group(1) == render_layers(), "docs/architecture.md's layer picture is stale:\n" + render_layers()


def test_stage_folders_are_linked_under_one_root():
    for stage in STAGES:
        link = ROOT / "wenlv" / stage
        assert link.is_symlink() and link.resolve() == (ROOT / stage).resolve(), stage


@pytest.mark.slow
def test_built_wheel_exposes_only_the_root_package(tmp_path):
    source = tmp_path / "source"  # build from a copy: setuptools writes build/ and egg-info into the tree
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "mlflow", "docs", "tests", "*.parquet"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(source)], check=True, timeout=600, capture_output=True)
    wheel = next(tmp_path.glob("wenlv-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"wenlv"}, tops
    for stage in STAGES:
        assert f"wenlv/{stage}/__init__.py" in names, stage
    assert not any(n.startswith("wenlv/tests/") or "/support/" in n for n in names)
    assert "wenlv/db/migrations/env.py" in names and "wenlv/db/migrations/versions/0001_initial.py" in names
    assert {f"wenlv/serving/dashboard/{f}" for f in ("index.html", "dashboard.js", "charts.js", "dashboard.css")} <= set(names)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True, timeout=120)
    clean_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # nothing but the wheel
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, timeout=300, capture_output=True, env=clean_env)
    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = {p.name for p in site.iterdir() if not p.name.endswith((".dist-info", "__pycache__"))}
    assert "wenlv" in installed and not installed & {*STAGES, "tests"}, installed
    probe = ("import importlib.util, sys; import wenlv.features.contracts, wenlv.serving.schemas; "
             "sys.exit(any(importlib.util.find_spec(s) for s in %r))" % (STAGES,))
    proc = subprocess.run([str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=clean_env)
    assert proc.returncode == 0, proc.stderr
