"""Options every command shares and the way a command gets its configuration."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from models.progress import write_line
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


def config_to_stderr(args: argparse.Namespace) -> Config:
    """The configuration for a command that prints its results on stdout: its log lines go to stderr."""
    cfg = config_from_args(args)
    configure(cfg.log.level, cfg.log.format, stream=StderrStream())
    return cfg


def human_size(n: int) -> str:
    """Bytes in decimal units, as ``ls -h --si`` would print them."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def progress_printer(what: str, quiet: bool):
    """A ``(done, total)`` callback that prints a files/s line on stderr at most once a second."""
    import time

    started, last = time.monotonic(), [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if quiet or (now - last[0] < 1.0 and done < total):
            return
        last[0] = now
        rate = done / (now - started) if now > started else 0.0
        eta = f", ETA {(total - done) / rate:.0f} s" if rate and done < total else ""
        status_line(f"{what}: {done}/{total} files, {rate:.1f} files/s{eta}", done >= total)

    return report


def status_line(text: str, final: bool) -> None:
    """One progress line on stderr: redrawn in place on a terminal, a new line in a log."""
    write_line(sys.stderr, text, final)
