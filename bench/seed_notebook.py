"""The seed project's preprocessing, as its notebook did it: the baseline of bench_dataset.

One process; for each DICOM file: pydicom read, min-max normalization to 0-255, Pillow resize to
256x256 (the notebook's default filter, aspect ratio not kept), JPG write. No window, no MONOCHROME1
handling, no padding mask, lossy output: it is here to be measured against, not used.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Iterable

import numpy as np
import pydicom
from PIL import Image


def preprocess(paths: Iterable[Path], out_dir: Path, size: int = 256) -> int:
    out_dir.mkdir(parents=True, exist_ok=True)
    n = 0
    for i, path in enumerate(paths):
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float32)
        arr = (arr - arr.min()) / max(float(arr.max() - arr.min()), 1e-8) * 255.0
        img = Image.fromarray(arr.astype(np.uint8)).resize((size, size))
        img.save(out_dir / f"{i:06d}.jpg")
        n += 1
    return n


if __name__ == "__main__":
    files = sorted(Path(sys.argv[1]).rglob("*.dcm"))
    started = time.perf_counter()
    count = preprocess(files, Path(sys.argv[2]))
    seconds = time.perf_counter() - started
    print(f"{count} images in {seconds:.1f} s, {count / seconds:.1f} img/s")
