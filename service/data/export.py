"""``dataset export``: a dataset version as ordinary image files, the seed notebook's output.

PNG (the default) is lossless: 8-bit datasets give 8-bit PNGs, 16-bit datasets 16-bit PNGs, and reading
a file back gives the array's values exactly. JPG is what the seed notebook wrote: 8-bit and lossy
(16-bit datasets are rounded to 8 bits first). Files are named by image index (``000042.png``), and a
copy of the manifest with a ``file`` column and of dataset.json go beside them, so every file traces
back to its instance. Each file is written under a temporary name and renamed, so an interrupted
export leaves only whole files.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from models.datasets import INFO_FILE, DatasetVersion, load_images
from service.data.progress import Progress

FORMATS = ("png", "jpg")


class ExportError(Exception):
    """The export cannot be done as asked; the message says what to change."""


@dataclass
class ExportResult:
    out: Path
    files: int
    fmt: str
    lossless: bool


def _encode(img: np.ndarray, path: Path, fmt: str, quality: int) -> None:
    tmp = path.with_name(path.name + ".part")
    if fmt == "png":
        im = Image.fromarray(np.ascontiguousarray(img))  # uint8 -> "L", uint16 -> "I;16": both lossless in PNG
        im.save(tmp, format="PNG", compress_level=6)
    else:
        if img.dtype == np.uint16:
            img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
        Image.fromarray(np.ascontiguousarray(img)).save(tmp, format="JPEG", quality=quality)
    os.replace(tmp, path)


def export_dataset(dv: DatasetVersion, out: Path, fmt: str = "png", quality: int = 95, limit: int | None = None,
                   overwrite: bool = False, workers: int = 0, progress: bool = True) -> ExportResult:
    fmt = fmt.lower().lstrip(".")
    if fmt == "jpeg":
        fmt = "jpg"
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if not 1 <= quality <= 100:
        raise ExportError("JPG quality must be 1-100")
    if limit is not None and limit < 1:
        raise ExportError("--limit must be at least 1")
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} is not empty; choose an empty folder or pass --overwrite")
    out.mkdir(parents=True, exist_ok=True)
    images = load_images(dv)
    n = min(len(images), limit) if limit else len(images)
    width = max(6, len(str(n - 1)))
    names = [f"{i:0{width}d}.{fmt}" for i in range(n)]
    bar = Progress(n, f"export {dv.ref}", enabled=progress)
    # Pillow's encoders release the GIL: threads are enough to use every core.
    threads = workers or min(8, os.cpu_count() or 1)
    with cf.ThreadPoolExecutor(max_workers=threads) as pool:
        window = threads * 4
        futures: list[cf.Future] = []
        for i in range(n):
            futures.append(pool.submit(_encode, np.asarray(images[i]), out / names[i], fmt, quality))
            if len(futures) >= window:
                futures.pop(0).result()
                bar.update(1)
        for f in futures:
            f.result()
            bar.update(1)
    bar.close()
    with open(out / "manifest.jsonl", "w", encoding="utf-8") as f:
        for i, row in enumerate(dv.manifest()):
            if i >= n:
                break
            f.write(json.dumps({"file": names[i], **row}, sort_keys=True) + "\n")
    (out / INFO_FILE).write_text(json.dumps(dv.info, indent=2) + "\n", encoding="utf-8")
    return ExportResult(out=out, files=n, fmt=fmt, lossless=fmt == "png")
