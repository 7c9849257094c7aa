"""CLI manners: every option says what it does, defaults are shown, --version, -v after the subcommand."""
from __future__ import annotations

import argparse
import importlib.metadata
import os
import subprocess
import sys

import pytest

from wenlv.cli import build_parser, main as wenlv_main, subcommands


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    missing = []
    for path, command in [((), parser), *subcommands(parser)]:
        for action in command._actions:
            if isinstance(action, argparse._SubParsersAction):
                missing += [(*path, c.dest) for c in action._choices_actions if not c.help]
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append((*path, "/".join(action.option_strings) or action.dest))
    assert not missing, missing
    assert len(list(subcommands(parser))) > 20  # the walk really reached the stage and bench commands


def test_defaults_are_shown_in_every_commands_help():
    parser = build_parser()
    commands = dict(subcommands(parser))
    assert "(default: tiny)" in commands[("demo",)].format_help()
    assert "(default: 8000)" in commands[("serve",)].format_help()
    assert "(default: 10000)" in commands[("bench", "serve")].format_help()
    assert all(isinstance(c._get_formatter(), argparse.ArgumentDefaultsHelpFormatter) for c in commands.values())


def test_version_comes_from_the_installed_metadata(capsys):
    with pytest.raises(SystemExit) as done:
        wenlv_main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"wenlv {importlib.metadata.version('wenlv')}"


@pytest.mark.parametrize("argv, verbose", [
    (["demo", "-v"], True), (["-v", "demo"], True), (["demo"], False),
    (["config", "show", "--verbose"], True), (["bench", "serve", "-v"], True), (["db", "current", "-v"], True),
])
def test_verbose_is_accepted_before_or_after_the_subcommand(argv, verbose):
    assert build_parser().parse_args(argv).verbose is verbose


def test_verbose_after_the_subcommand_turns_on_debug_logging():
    code = ("import logging, sys; from wenlv import cli; from wenlv.config_cli import _show; "
            "cli.config_cli._show = lambda a: print(logging.getLogger().level); sys.exit(cli.main(sys.argv[1:]))")
    for argv, level in ((["config", "show", "-v"], "10"), (["config", "show"], "20")):
        done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == level, argv


def test_building_the_parser_loads_no_faiss():
    """Every command's parser is built at start-up (`wenlv demo` too): FAISS's OpenMP OpenBLAS loaded there would make
    implicit's ALS, later in the same process, run with 2 BLAS threads and warn (the demo's alarming-line check)."""
    code = "import sys; from wenlv.cli import build_parser; build_parser(); print('faiss' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "False"
