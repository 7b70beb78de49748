"""Contact sheets: a grid of a dataset's images in one PNG that a person can look at."""

from __future__ import annotations

import io
from typing import Mapping

import numpy as np
from PIL import Image, ImageDraw

SHEET_TILES = 64


def sheet_indices(count: int, tiles: int) -> list[int]:
    """``tiles`` indices spread evenly over the dataset, first and last included."""
    if count <= 0 or tiles <= 0:
        return []
    if count <= tiles:
        return list(range(count))
    return [int(round(i * (count - 1) / (tiles - 1))) for i in range(tiles)] if tiles > 1 else [0]


def sheet_tile(image: np.ndarray, tile: int = 128) -> Image.Image:
    """One image as an 8-bit ``tile`` x ``tile`` thumbnail (uint16 keeps its top 8 bits)."""
    img = np.asarray(image)
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8))
    return im if im.size == (tile, tile) else im.resize((tile, tile), Image.Resampling.LANCZOS)


def contact_sheet(images: np.ndarray, indices: list[int] | None = None, columns: int = 8, tile: int = 128, labels: bool = True,
                  title: str | None = None, tiles: Mapping[int, Image.Image] | None = None) -> Image.Image:
    """An 8-bit grayscale grid of ``images[indices]`` (N, H, W), each tile labelled with its index.

    ``tiles`` holds thumbnails already made (by :func:`sheet_tile`, keyed by index), such as those a
    build renders while its workers are busy; the others are made here.
    """
    if indices is None:
        indices = sheet_indices(len(images), SHEET_TILES)
    columns = max(1, min(columns, len(indices) or 1))
    rows = max(1, -(-len(indices) // columns))
    gap = 2
    top = 16 if title else 0
    sheet = Image.new("L", (columns * (tile + gap) + gap, top + rows * (tile + gap) + gap), 32)
    draw = ImageDraw.Draw(sheet)
    if title:
        draw.text((gap + 2, 2), title, fill=255)
    for k, i in enumerate(indices):
        im = tiles.get(i) if tiles else None
        if im is None or im.size != (tile, tile):
            im = sheet_tile(images[i], tile)
        x, y = gap + (k % columns) * (tile + gap), top + gap + (k // columns) * (tile + gap)
        sheet.paste(im, (x, y))
        if labels:
            text = str(i)
            w = draw.textlength(text)
            draw.rectangle((x, y, x + w + 3, y + 11), fill=0)
            draw.text((x + 2, y), text, fill=255)
    return sheet


def contact_sheet_png(images: np.ndarray, tiles: int = SHEET_TILES, columns: int = 8, tile: int = 128, title: str | None = None,
                      made: Mapping[int, Image.Image] | None = None) -> bytes:
    buf = io.BytesIO()
    # Fast zlib: the sheet is for eyes, and a build should not spend its time compressing it.
    contact_sheet(images, sheet_indices(len(images), tiles), columns, tile, title=title, tiles=made).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
