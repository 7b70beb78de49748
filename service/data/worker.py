"""The work of one build process: a stored file to a normalized image, or the reason it gives none.

Kept apart from :mod:`service.data.build` so that worker processes import only pydicom, numpy and
Pillow (not torch, not the index), and start in a fraction of a second.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

from service.archive.pixel_header import read_header
from service.data.pixels import REASONS, PixelOptions, SkipImage, prepare


def process_file(path: Path, sha256: str, opts: PixelOptions) -> tuple[np.ndarray | None, dict[str, Any]]:
    """One stored file to (image, info), or (None, {"reason", "message"}). Never raises for bad data."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None, {"reason": "missing_file", "message": REASONS["missing_file"]}
    except OSError as exc:
        return None, {"reason": "missing_file", "message": f"the file cannot be read ({exc.strerror})"}
    if sha256 and hashlib.sha256(data).hexdigest() != sha256:
        return None, {"reason": "corrupt", "message": REASONS["corrupt"]}
    ds: Any = read_header(data)  # the plain common case in one pass; anything else through pydicom
    if ds is None:
        try:
            ds = pydicom.dcmread(io.BytesIO(data))
        except Exception as exc:
            return None, {"reason": "unreadable", "message": f"{REASONS['unreadable']} ({type(exc).__name__})"}
    try:
        image, info = prepare(ds, opts)
    except SkipImage as exc:
        return None, {"reason": exc.reason, "message": str(exc)}
    except Exception as exc:  # a bug or an exotic header must cost one image, not the build
        return None, {"reason": "decode_failed", "message": f"unexpected {type(exc).__name__} while preparing the image"}
    return image, info


def run_task(store_root: str, options: dict[str, Any], records: list[tuple[int, str, str]]) -> list[tuple[int, np.ndarray | None, dict[str, Any]]]:
    opts = PixelOptions(**options)
    root = Path(store_root)
    return [(pos, *process_file(root / rel, sha, opts)) for pos, rel, sha in records]


def worker_init() -> None:
    # One process per core already: libraries must not start thread pools of their own on top.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = "1"
