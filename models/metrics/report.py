"""The comparison report: the seed's table (one row per model), a PNG bar chart, sample grids side by side.

The table's first columns are the quality figures that rank the calibration controls correctly
(:mod:`models.metrics.calibration`: HOG Frechet distance and KID, TSTR/TRTR); FID/KID/precision/recall
follow when the Inception weights were there; the radiomic texture distance and the similarity-to-
nearest-reference SSIM/PSNR come after, for comparison with the seed's table.

Everything is drawn with Pillow and NumPy (matplotlib is not a dependency). Inputs are an
``evaluation.json`` (from ``synthpacs evaluate``) and the model card, per model; values a model does
not have (FID without the weights file, training time of a model trained elsewhere) show as "-".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    fmt: str
    better: str  # "lower", "higher" or "" (no direction)


COLUMNS: tuple[Column, ...] = (
    # Quality figures first (they rank the calibration controls, models.metrics.calibration), then the rest.
    Column("hog_fd", "HOG FD", "{:.2f}", "lower"),
    Column("hog_kid", "HOG KID x1000", "{:.2f}", "lower"),
    Column("tstr_trtr_ratio", "TSTR/TRTR", "{:.3f}", "higher"),
    Column("fid", "FID", "{:.2f}", "lower"),
    Column("kid", "KID x1000", "{:.2f}", "lower"),
    Column("precision", "Precision", "{:.3f}", "higher"),
    Column("recall", "Recall", "{:.3f}", "higher"),
    Column("radiomics_frd", "FRD (texture)", "{:.2f}", "lower"),
    Column("ssim", "SSIM", "{:.3f}", "higher"),
    Column("psnr", "PSNR dB", "{:.2f}", "higher"),
    Column("diversity", "MS-SSIM div.", "{:.3f}", "lower"),
    Column("memorization", "Near-copies %", "{:.2f}", "lower"),
    Column("training_time_h", "Train time h", "{:.2f}", "lower"),
    Column("peak_memory_gb", "Peak mem GB", "{:.2f}", "lower"),
    Column("train_images_per_s", "Train img/s", "{:.1f}", "higher"),
    Column("generation_images_per_s", "Gen img/s", "{:.1f}", "higher"),
)


def _first(mapping: Mapping[str, Any], *paths: str) -> Any:
    for path in paths:
        node: Any = mapping
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node):
            return float(node)
    return None


def summary_row(label: str, evaluation: Mapping[str, Any], card: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One table row from an evaluation.json and a model card (training facts come from the card)."""
    m = evaluation.get("metrics", {}) if isinstance(evaluation, Mapping) else {}
    card = card or {}
    row: dict[str, Any] = {"model": label}
    row["fid"] = _first(m, "fid")
    kid = _first(m, "kid")
    row["kid"] = kid * 1000 if kid is not None else None
    for key in ("precision", "recall", "ssim", "psnr", "diversity", "generation_images_per_s", "hog_fd", "tstr_trtr_ratio", "radiomics_frd"):
        row[key] = _first(m, key)
    hog_kid = _first(m, "hog_kid")
    row["hog_kid"] = hog_kid * 1000 if hog_kid is not None else None
    mem = _first(m, "memorization")
    row["memorization"] = mem * 100 if mem is not None else None
    wall = _first(card, "training.wall_time_s", "wall_time_s", "training.wall_s", "train.wall_time_s")
    row["training_time_h"] = wall / 3600 if wall is not None else None
    peak_bytes = _first(card, "training.peak_memory_bytes", "peak_memory_bytes")
    peak_mb = _first(card, "training.peak_memory_mb", "peak_memory_mb")
    row["peak_memory_gb"] = peak_bytes / 2**30 if peak_bytes is not None else peak_mb / 1024 if peak_mb is not None else None
    row["train_images_per_s"] = _first(card, "training.images_per_s", "images_per_s", "training.images_per_second")
    return row


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column] = COLUMNS) -> str:
    """A Markdown table: a header, one line per model; "-" where a value is unknown."""
    headers = ["Model"] + [c.header for c in columns]
    body = [[str(r["model"])] + [c.fmt.format(r[c.key]) if r.get(c.key) is not None else "-" for c in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "| " + " | ".join("-" * w for w in widths) + " |"
    return "\n".join([line(headers), sep] + [line(b) for b in body])


_PALETTE = [(52, 101, 164), (204, 102, 0), (78, 154, 6), (117, 80, 123)]


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def draw_chart(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column] = COLUMNS, panel: tuple[int, int] = (220, 170)) -> Image.Image:
    """One small bar panel per metric that at least one model has, models side by side, values written
    on the bars and the better direction in the title."""
    cols = [c for c in columns if any(r.get(c.key) is not None for r in rows)]
    per_row = 4
    pw, ph = panel
    legend_h = 28
    n_rows = max(1, math.ceil(len(cols) / per_row))
    img = Image.new("RGB", (pw * per_row, legend_h + ph * n_rows), "white")
    d = ImageDraw.Draw(img)
    small, title = _font(11), _font(13)
    x = 8
    for i, r in enumerate(rows):
        color = _PALETTE[i % len(_PALETTE)]
        d.rectangle([x, 8, x + 12, 20], fill=color)
        d.text((x + 16, 7), str(r["model"]), fill="black", font=title)
        x += 24 + int(d.textlength(str(r["model"]), font=title)) + 16
    for k, c in enumerate(cols):
        ox, oy = (k % per_row) * pw, legend_h + (k // per_row) * ph
        arrow = {"lower": " (lower better)", "higher": " (higher better)"}.get(c.better, "")
        d.text((ox + 8, oy + 4), c.header + arrow, fill="black", font=small)
        values = [r.get(c.key) for r in rows]
        top = max((abs(v) for v in values if v is not None), default=0.0) or 1.0
        base_y, height = oy + ph - 22, ph - 64
        bar_w = max(8, (pw - 40) // max(1, len(rows)) - 10)
        d.line([ox + 12, base_y, ox + pw - 12, base_y], fill=(150, 150, 150))
        for i, v in enumerate(values):
            bx = ox + 20 + i * (bar_w + 10)
            if v is None:
                d.text((bx, base_y - 14), "n/a", fill=(120, 120, 120), font=small)
                continue
            h = int(round(height * abs(v) / top))
            d.rectangle([bx, base_y - h, bx + bar_w, base_y], fill=_PALETTE[i % len(_PALETTE)])
            d.text((bx, base_y - h - 13), c.fmt.format(v), fill="black", font=small)
    return img


def image_grid(images: np.ndarray, columns: int = 4, pad: int = 2) -> Image.Image:
    """(N, H, W) uint8/uint16 images as one grayscale grid, row-major, ``pad`` black pixels apart."""
    imgs = np.asarray(images)
    if imgs.ndim != 3 or imgs.shape[0] == 0:
        raise ValueError(f"expected a non-empty (N, H, W) array, got shape {imgs.shape}")
    if imgs.dtype == np.uint16:
        imgs = (imgs >> 8).astype(np.uint8)
    elif imgs.dtype != np.uint8:
        imgs = np.clip(np.rint(imgs.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    n, h, w = imgs.shape
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad), np.uint8)
    for i in range(n):
        r, c = divmod(i, columns)
        grid[pad + r * (h + pad) : pad + r * (h + pad) + h, pad + c * (w + pad) : pad + c * (w + pad) + w] = imgs[i]
    return Image.fromarray(grid, mode="L")


def side_by_side(grids: Sequence[Image.Image], labels: Sequence[str], height: int = 512) -> Image.Image:
    """Grids scaled to the same height, next to each other, each with its label above."""
    scaled = [g.resize((max(1, round(g.width * height / g.height)), height), Image.Resampling.NEAREST if g.height <= height else Image.Resampling.LANCZOS) for g in grids]
    label_h, gap = 24, 16
    out = Image.new("RGB", (sum(s.width for s in scaled) + gap * (len(scaled) + 1), height + label_h + gap), "white")
    d = ImageDraw.Draw(out)
    x = gap
    for s, label in zip(scaled, labels):
        d.text((x, 5), label, fill="black", font=_font(14))
        out.paste(s.convert("RGB"), (x, label_h))
        x += s.width + gap
    return out


def card_evaluation(evaluation: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A model card's evaluation section from an evaluation.json: a list, so the order survives cards
    written with sorted keys. First the quality figures (they rank the calibration controls,
    :mod:`models.metrics.calibration`) with the reference set named, then what else was measured with
    what each measures, then memorization."""
    from models.metrics.calibration import NOT_QUALITY, QUALITY_METRICS

    m = evaluation.get("metrics", {}) if isinstance(evaluation, Mapping) else {}
    ref = evaluation.get("reference") or {}
    gen = evaluation.get("generated") or {}
    reference = f"{ref.get('ref', '?')} ({ref.get('count', '?')} images, {ref.get('role', '')})"
    quality = {k: m[k] for k in QUALITY_METRICS if isinstance(m.get(k), (int, float))}
    for k in ("tstr_balanced_accuracy", "trtr_balanced_accuracy", "tstr_accuracy", "trtr_accuracy", "fid", "kid", "precision", "recall"):
        if isinstance(m.get(k), (int, float)):
            quality[k] = m[k]
    other = {k: {"value": m[k], "measures": why} for k, why in NOT_QUALITY.items() if isinstance(m.get(k), (int, float))}
    section: list[dict[str, Any]] = [
        {"section": "quality figures (rank the calibration controls correctly)", "reference": reference,
         "generated": f"{gen.get('count', '?')} images, seeds {gen.get('seeds', '?')}", "metrics": quality},
        {"section": "also measured (not quality rankings)", "reference": reference, "metrics": other},
    ]
    if "memorization" in m:
        training = (evaluation.get("training_dataset") or {}).get("ref", "?")
        section.append({"section": "memorization", "training_set": training,
                        "near_copies": f"{m.get('near_copies', 0)} of {gen.get('count', '?')} (below the training set's 1st percentile nearest-neighbour distance, mirrors included)"})
    return section
