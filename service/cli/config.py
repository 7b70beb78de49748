"""``synthpacs config show``: the effective configuration, secrets masked."""

from __future__ import annotations

import argparse
import json

from service.cli.common import add_command, config_from_args
from service.config import as_dict, to_toml


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("config", help="show the effective configuration")
    sub = parser.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    show = add_command(sub, "show", help="print the configuration after file, environment and flags, secrets masked")
    show.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    show.set_defaults(func=_show)


def _show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    data = as_dict(cfg)
    print(json.dumps(data, indent=2) if args.json else to_toml(data))
    return 0
