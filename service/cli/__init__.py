"""The ``synthpacs`` command line.

One module per command group, named after the command (``store.py`` is ``synthpacs store``); each defines
``register(subparsers)``. :data:`COMMANDS` lists them, and only the module of the command being run is
imported, so commands that need no PyTorch (``--version``, ``store``, ``outbox``, ``echo``, ``config``)
start without loading it. Option names follow dcmtk and pynetdicom where they exist
(``--ae-title``, ``--port``, ``--max-pdu``, ``--acse-timeout``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from service import __version__
from service.archive.backends import IndexDatabaseError
from service.archive.migrations import SchemaTooNew
from service.archive.writer_lock import WriterLockError
from service.cli.common import CommandError, add_common_options
from service.config import ConfigError
from service.logs import StderrStream, configure


# The command groups, each the module of this package of the same name; a test keeps this in step with
# the package. Helpers that register no command (common, conditions) are not listed.
COMMANDS = (
    "client", "config", "dataset", "dicomweb", "echo", "evaluate", "generate", "inference", "ingest",
    "models", "outbox", "scp", "serve", "store", "synthesize", "train",
)
# Options of the top-level parser that take a value: the word after them is not a command.
_VALUE_OPTIONS = frozenset({"--config", "--home", "--log-level", "--log-format"})


def command_of(argv: Sequence[str]) -> str | None:
    """The command that ``argv`` runs, or None where it names none (``--help``, ``--version``, a typo)."""
    skip = False
    for word in argv:
        if skip:
            skip = False
        elif word in _VALUE_OPTIONS:
            skip = True
        elif not word.startswith("-"):
            return word if word in COMMANDS else None
    return None


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: with its command's module alone where it names one, else with all of them
    (so ``--help`` and a mistyped command list every command), but with none for a bare ``--version``."""
    parser = argparse.ArgumentParser(
        prog="synthpacs",
        description="Synthetic bone radiographs inside the hospital network: DICOM in, GANs, gRPC and DICOM out.",
    )
    parser.add_argument("--version", action="version", version=f"synthpacs {__version__}")
    add_common_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    words = list(sys.argv[1:] if argv is None else argv)
    chosen = command_of(words)
    if chosen is not None:
        names: Sequence[str] = (chosen,)
    elif "--version" in words and not {"-h", "--help"} & set(words):
        names = ()
    else:
        names = COMMANDS
    for name in names:
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if getattr(args, "json", False):
        # Commands that never load a configuration (``client models``) log too: keep stdout for the data.
        configure(getattr(args, "log_level", None) or "info", stream=StderrStream())
    try:
        return int(args.func(args) or 0)
    except (CommandError, ConfigError, WriterLockError, IndexDatabaseError, SchemaTooNew) as exc:
        print(f"synthpacs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
