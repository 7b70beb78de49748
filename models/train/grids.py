"""Sample grids at fixed seeds and the progression strip, as PNG (numpy and Pillow only).

A grid shows the same seeds at every snapshot, so snapshots can be compared image by image; the strip
puts the first row of every snapshot's grid one under the other with its label, the way the seed
figures show a DCGAN at 50, 100, 150 and 200 epochs.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from models.sampling import seeds_to_pixels

PAD = 2  # pixels between cells
BACKGROUND = 32  # dark gray between cells, so a black image border stays visible


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, columns) for ``count`` images, as square as possible."""
    cols = max(1, math.ceil(math.sqrt(count)))
    return math.ceil(count / cols), cols


def tile(images: np.ndarray, cols: int | None = None) -> np.ndarray:
    """(N, H, W) integers -> one (rows*(H+PAD)+PAD, cols*(W+PAD)+PAD) image, row by row."""
    n, h, w = images.shape
    rows, c = grid_shape(n) if cols is None else (math.ceil(n / cols), cols)
    top = np.iinfo(images.dtype).max
    out = np.full((rows * (h + PAD) + PAD, c * (w + PAD) + PAD), BACKGROUND * top // 255, dtype=images.dtype)
    for i, img in enumerate(images):
        r, k = divmod(i, c)
        y, x = PAD + r * (h + PAD), PAD + k * (w + PAD)
        out[y : y + h, x : x + w] = img
    return out


def _save_png(array: np.ndarray, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


@torch.no_grad()
def sample_images(G: torch.nn.Module, seeds: Sequence[int], device: torch.device | str = "cpu", batch: int = 32, psi: float = 1.0, c: torch.Tensor | None = None) -> np.ndarray:
    """uint8 (N, H, W) gray images for ``seeds`` (:func:`models.sampling.seeds_to_pixels`).

    ``c``: the (N, c_dim) condition vectors of a conditional generator, row i for ``seeds[i]``.
    """
    return seeds_to_pixels(G, seeds, psi, bits=8, batch_size=batch, device=device, c=c)


def save_grid(images: np.ndarray, path: Path, cols: int | None = None) -> Path:
    return _save_png(tile(images, cols), path)


def save_progression(grids: Sequence[tuple[str, Path]], path: Path, cols: int, cell: int) -> Path | None:
    """The first row of each grid PNG, labelled, stacked top to bottom; None when there are no grids.

    ``cols``: images per grid row; ``cell``: the image size in pixels (grids written by :func:`save_grid`).
    """
    rows = []
    for label, grid_path in grids:
        try:
            with Image.open(grid_path) as im:
                grid = np.asarray(im.convert("L"))
        except (OSError, ValueError):
            continue  # a grid deleted or damaged by hand leaves a gap, not a failed run
        rows.append((label, grid[: cell + 2 * PAD, : cols * (cell + PAD) + PAD]))
    if not rows:
        return None
    font = ImageFont.load_default()
    label_w = 8 + max(int(ImageDraw.Draw(Image.new("L", (1, 1))).textlength(label, font=font)) for label, _ in rows)
    width = label_w + max(r.shape[1] for _, r in rows)
    height = sum(r.shape[0] for _, r in rows)
    canvas = Image.new("L", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    y = 0
    for label, row in rows:
        canvas.paste(Image.fromarray(row), (label_w, y))
        draw.text((4, y + row.shape[0] // 2 - 6), label, fill=235, font=font)
        y += row.shape[0]
    return _save_png(np.asarray(canvas), path)
