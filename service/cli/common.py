"""Options every command shares and the way a command gets its configuration."""

from __future__ import annotations

import argparse
from typing import Any

from service.config import Config, load_config
from service.home import Home
from service.logs import StderrStream, configure


class CommandError(Exception):
    """A command cannot do what was asked; the message tells the user what to change."""


def add_common_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """The shared options; with ``suppress`` (on subcommands) an absent flag keeps the top-level value."""
    kw: dict[str, Any] = {"default": argparse.SUPPRESS} if suppress else {}
    parser.add_argument("--config", metavar="FILE", help="TOML configuration file (default: $SYNTHPACS_CONFIG or ./synthpacs.toml)", **kw)
    parser.add_argument("--home", metavar="DIR", help="home folder for store, datasets, models and runs (default ./var, $SYNTHPACS_HOME)", **kw)
    parser.add_argument("--log-level", choices=("debug", "info", "warning", "error"), help="log level", **kw)
    parser.add_argument("--log-format", choices=("json", "console"), help="log format (on stdout; on stderr for --json commands)", **kw)


def add_command(subparsers: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    """A subcommand that also takes the shared options after its name (``synthpacs scp --home DIR``)."""
    parser = subparsers.add_parser(name, **kwargs)
    add_common_options(parser, suppress=True)
    return parser


def config_from_args(args: argparse.Namespace, **overrides: Any) -> Config:
    """The effective configuration: file, then environment, then these flags; logging set up from it.

    A ``--json`` command prints its data on stdout, so its log lines go to stderr.
    """
    flags = {"home": getattr(args, "home", None), "log.level": getattr(args, "log_level", None), "log.format": getattr(args, "log_format", None)}
    flags.update(overrides)
    cfg = load_config(getattr(args, "config", None), overrides=flags)
    configure(cfg.log.level, cfg.log.format, stream=StderrStream() if getattr(args, "json", False) else None)
    return cfg


def home_from(cfg: Config) -> Home:
    return Home.at(cfg.home_path)
