"""Small file helpers shared by the store, datasets, checkpoints and the registry (no torch needed)."""

from __future__ import annotations

import hashlib
import os


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read 1 MiB at a time so memory stays flat for multi-GB files."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_path(path: str | os.PathLike[str]) -> None:
    """fsync a file or a folder. A folder's fsync makes a rename or a new entry in it durable
    (POSIX leaves that to the directory, not to the file)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
