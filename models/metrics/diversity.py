"""Diversity: mean MS-SSIM over random pairs of images from one set.

Odena et al. 2017, "Conditional Image Synthesis with Auxiliary Classifier GANs", §4.2: the mean
MS-SSIM of randomly chosen pairs within a set measures how alike its images are; lower is more
diverse. A generator whose value is far above the real data's has collapsed onto few modes, so the
same statistic is reported for the real reference set beside it. MS-SSIM is
:func:`models.metrics.ssim.ms_ssim` (Wang et al. 2003) on images in [0, 1].

Pairs are drawn from ``RandomState(seed)``: two different indices per pair, so the same images always
give the same value.
"""

from __future__ import annotations

import numpy as np
import torch

from models.metrics.images import batches, check_images, to_unit
from models.metrics.progress import Progress, Reporter
from models.metrics.ssim import ms_ssim


def random_pairs(n: int, pairs: int, seed: int = 0) -> np.ndarray:
    """(P, 2) index pairs i != j, at most n(n-1)/2 of them (every pair once when that is fewer)."""
    if n < 2:
        raise ValueError("diversity needs at least 2 images")
    total = n * (n - 1) // 2
    if pairs >= total:
        i, j = np.triu_indices(n, k=1)
        return np.stack([i, j], 1)
    rs = np.random.RandomState(seed)
    i = rs.randint(0, n, size=pairs)
    j = (i + rs.randint(1, n, size=pairs)) % n  # never equal to i
    return np.stack([i, j], 1)


def pairwise_ms_ssim(images, pairs: int = 1000, seed: int = 0, batch: int = 64, device: str | torch.device = "cpu", progress: Reporter | None = None, label: str = "MS-SSIM diversity") -> dict[str, float]:
    """Mean and std of MS-SSIM over random pairs of ``images`` ((N, H, W) uint8/uint16/float)."""
    images = check_images(images)
    idx = random_pairs(images.shape[0], int(pairs), seed)
    values = []
    p = Progress(label, idx.shape[0], progress, unit="pairs")
    for start, stop in batches(idx.shape[0], batch):
        a = to_unit(_rows(images, idx[start:stop, 0]), device)
        b = to_unit(_rows(images, idx[start:stop, 1]), device)
        values.append(ms_ssim(a, b, 1.0).cpu())
        p.update(stop - start)
    v = torch.cat(values).numpy()
    return {"mean": float(v.mean()), "std": float(v.std()), "pairs": int(v.size)}


def _rows(images, index: np.ndarray):
    if isinstance(images, torch.Tensor):
        return images[torch.as_tensor(index)]
    return np.asarray(images[index])
