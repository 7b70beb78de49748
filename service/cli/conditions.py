"""The condition options of the generating commands (``generate``, ``synthesize``, ``client generate``):
``--body-part``, ``--view``, ``--finding`` for a conditional model (models/conditions.py)."""

from __future__ import annotations

import argparse
from typing import Any

from service.cli.common import CommandError

FIELDS = ("body_part", "view", "finding")


def add_condition_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("condition (conditional models only; `synthpacs models show MODEL` lists the values)")
    g.add_argument("--body-part", dest="body_part", metavar="PART", help="Body Part Examined to generate, e.g. HAND, LEG, HIP, SHOULDER")
    g.add_argument("--view", metavar="VIEW", help="View Position to generate, e.g. AP, LATERAL, OBLIQUE")
    g.add_argument("--finding", metavar="FINDING", help="finding to generate, e.g. FRACTURE or NONE")


def given(args: argparse.Namespace) -> dict[str, str]:
    """The condition options given on the command line (field -> value)."""
    return {f: str(getattr(args, f)).strip() for f in FIELDS if getattr(args, f, None) not in (None, "")}


def checked(net: Any, args: argparse.Namespace, model_ref: str) -> dict[str, str]:
    """The command line's condition checked against generator ``net``: a clear error naming the known
    values for an unknown or missing one, or for any condition given to an unconditional model."""
    from models.conditions import ConditionError, space_of

    asked = given(args)
    space = space_of(net)
    if space is None:
        if asked:
            raise CommandError(f"{model_ref} is unconditional: it takes no {', '.join('--' + k.replace('_', '-') for k in asked)}")
        return {}
    try:
        return space.normalize(asked)
    except ConditionError as exc:
        raise CommandError(f"{model_ref}: {str(exc).replace('body_part', '--body-part').replace('needs a view', 'needs a --view').replace('needs a finding', 'needs a --finding')}") from None
