"""`wenlv config show`: the effective settings (environment and defaults), secrets masked."""
from __future__ import annotations

import json
from pathlib import Path

from wenlv.settings import Settings, masked, readme_with_table, reset_settings, settings_table


def register(sub) -> None:
    p = sub.add_parser("config", help="the settings this process would use (from the environment and defaults)")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_sub.add_parser("show", help="print every setting's effective value; secrets and URL passwords masked")
    show.add_argument("--json", action="store_true", help="one JSON object {variable: value} instead of a table")
    show.set_defaults(func=_show)
    table = config_sub.add_parser("table", help="print the Markdown table of every setting (the README's)")
    table.add_argument("--readme", type=Path, default=None,
                       help="rewrite the table between the markers in this file (e.g. README.md) instead of printing")
    table.set_defaults(func=_table)


def _show(args) -> int:
    reset_settings()  # read the environment as it is now, not a copy cached earlier in this process
    values = masked()
    if args.json:
        print(json.dumps(values))
        return 0
    width = max(len(name) for name in values)
    for name, info in Settings.model_fields.items():
        value = values[info.alias]
        print(f"{info.alias:<{width}}  {value if value != '' else '(unset)'}")
    return 0


def _table(args) -> int:
    if args.readme is None:
        print(settings_table(), end="")
    else:
        args.readme.write_text(readme_with_table(args.readme.read_text()))
    return 0
