"""Named, versioned folders (``<root>/<name>/v<N>/``), as datasets and the model registry keep them.

One name rule and one reference syntax for both. A name is 1-64 letters, digits, '.', '_' or '-',
starting with a letter or digit. A reference is ``NAME`` (the latest version) or ``NAME@vN``; the
registry's first form ``NAME:vN`` (which model references are still printed in, and which the gRPC API
and stored model cards carry) is accepted everywhere as the same thing, and so is a bare ``N``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
VERSION_DIR_RE = re.compile(r"^v([1-9][0-9]*)$")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


def is_name(name: object) -> bool:
    return isinstance(name, str) and NAME_RE.match(name) is not None


def split_ref(ref: str) -> tuple[str, str | None]:
    """``NAME`` -> (NAME, None); ``NAME@vN``, ``NAME:vN``, ``NAME@N``, ``NAME:N`` -> (NAME, "vN" or "N")."""
    ref = ref.strip()
    at, colon = ref.rfind("@"), ref.rfind(":")
    cut = max(at, colon)
    if cut < 0:
        return ref, None
    return ref[:cut], ref[cut + 1 :]


def parse_version(text: str) -> int | None:
    """``"v3"`` or ``"3"`` -> 3; None where it is not a version number of at least 1."""
    digits = text[1:] if text.startswith("v") else text
    if not digits.isdigit() or int(digits) < 1:
        return None
    return int(digits)


def version_folders(folder: Path) -> list[tuple[int, Path]]:
    """The ``v<N>`` folders in ``folder``, oldest first (none when it does not exist)."""
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := VERSION_DIR_RE.match(p.name)) and p.is_dir()]
    return sorted(found, key=lambda vp: vp[0])


def next_version(folder: Path) -> int:
    """The number the next version written into ``folder`` gets."""
    return 1 + max((v for v, _p in version_folders(folder)), default=0)


def pick_version(found: Sequence[T], version: int | None, number: Callable[[T], int]) -> T | None:
    """The version asked for among ``found`` (oldest first): the latest for None, else the one whose
    ``number`` is ``version``; None when there is no such version (the caller names what exists)."""
    if version is None:
        return found[-1] if found else None
    return next((item for item in found if number(item) == version), None)
