"""The ``synthpacs`` command line.

Each module in this package that defines ``register(subparsers)`` adds its commands, so a capability
brings its commands in its own file. Option names follow dcmtk and pynetdicom where they exist
(``--ae-title``, ``--port``, ``--max-pdu``, ``--acse-timeout``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from service import __version__
from service.cli.common import CommandError, add_common_options
from service.config import ConfigError
from service.logs import StderrStream, configure


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="synthpacs",
        description="Synthetic bone radiographs inside the hospital network: DICOM in, GANs, gRPC and DICOM out.",
    )
    parser.add_argument("--version", action="version", version=f"synthpacs {__version__}")
    add_common_options(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name == "common":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "json", False):
        # Commands that never load a configuration (``client models``) log too: keep stdout for the data.
        configure(getattr(args, "log_level", None) or "info", stream=StderrStream())
    try:
        return int(args.func(args) or 0)
    except (CommandError, ConfigError) as exc:
        print(f"synthpacs: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
