"""Weight-free image descriptors for the memorization check: nothing to download, same numbers everywhere.

* :func:`pixel_descriptor`: the image downsampled (antialiased) to ``size`` x ``size``, then
  standardized per image (zero mean, unit variance, divided by sqrt(D)), so the Euclidean distance
  between two descriptors is a correlation distance in [0, 2]: a copy with changed brightness or
  contrast is still at distance ~0, and light noise is averaged away by the downsampling.
* :func:`hog_descriptor`: histograms of oriented gradients (Dalal and Triggs 2005, "Histograms of
  Oriented Gradients for Human Detection", §4-6): the image at 64 x 64, centred [-1, 0, 1] gradients,
  9 unsigned orientation bins with linear vote interpolation, 8 x 8-pixel cells, overlapping 2 x 2-cell
  blocks normalized with L2-Hys (clip 0.2). It describes the shape of edges (cortices, joint lines)
  independently of exposure, which is what a near-copy of a radiograph keeps.

Both take float32 ``(N, 1, H, W)`` in [0, 1] of any size and return float32 ``(N, D)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

HOG_SIZE = 64
HOG_CELL = 8
HOG_BINS = 9
HOG_CLIP = 0.2
_EPS = 1e-6


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def pixel_descriptor(x: torch.Tensor, size: int = 32) -> torch.Tensor:
    v = _resize(x.to(torch.float32), size).flatten(1)
    v = v - v.mean(1, keepdim=True)
    std = v.std(1, unbiased=False, keepdim=True)
    # A flat image has no structure to compare: it maps to the zero vector rather than dividing by 0.
    v = torch.where(std > _EPS, v / std.clamp_min(_EPS), torch.zeros_like(v))
    return v / math.sqrt(v.shape[1])


def hog_descriptor(x: torch.Tensor) -> torch.Tensor:
    img = _resize(x.to(torch.float32), HOG_SIZE)
    padded = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]
    gy = padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]
    mag = torch.sqrt(gx * gx + gy * gy)
    # Unsigned orientation in [0, pi), as a continuous bin position; votes split between the two nearest bins.
    pos = torch.remainder(torch.atan2(gy, gx), math.pi) / (math.pi / HOG_BINS) - 0.5
    lo = torch.floor(pos)
    frac = pos - lo
    lo_bin = torch.remainder(lo, HOG_BINS).long()
    hi_bin = torch.remainder(lo + 1, HOG_BINS).long()
    votes = torch.zeros(img.shape[0], HOG_BINS, HOG_SIZE, HOG_SIZE, dtype=img.dtype, device=img.device)
    votes.scatter_add_(1, lo_bin, mag * (1 - frac))
    votes.scatter_add_(1, hi_bin, mag * frac)
    cells = F.avg_pool2d(votes, HOG_CELL) * (HOG_CELL * HOG_CELL)  # (N, bins, 8, 8) vote sums
    # Overlapping 2 x 2-cell blocks: unfold gathers each block's 4 cells x 9 bins.
    blocks = F.unfold(cells, kernel_size=2).transpose(1, 2)  # (N, 49, 36)
    blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + _EPS**2)
    blocks = blocks.clamp(max=HOG_CLIP)
    blocks = blocks / torch.sqrt((blocks * blocks).sum(-1, keepdim=True) + _EPS**2)
    return blocks.flatten(1)
