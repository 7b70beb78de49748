"""SSIM and PSNR of generated images, defined against their nearest real images.

A generated image has no ground truth, so "the SSIM of a GAN" needs a definition. synthpacs uses:

    for each generated image g_i (i = 1..N), r*(i) = argmin over the reference set R of MSE(g_i, r);
    PSNR_i = 10 log10(1 / MSE(g_i, r*(i)))   and   SSIM_i = SSIM(g_i, r*(i)),
    with both images in [0, 1] (data range 1); reported: the mean (and std) over the N generated images.

R is a held-out real set when one is given (``synthpacs evaluate --real``), otherwise the training set
(the report says which). The same nearest image serves both numbers, so PSNR is the best PSNR any
reference image reaches, and SSIM is measured on that very pair. SSIM and PSNR are per-pair functions
from :mod:`models.metrics.ssim` (Wang et al. 2004; tested against scikit-image). Images of the two sets
must have the same size; the caller resizes the reference set first if it differs.

Nearest images are found in float32 over all of R (exact squared distances ``|g|^2 + |r|^2 - 2 g.r``,
chunked to bound memory), and the chosen pair's MSE is then recomputed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.metrics.images import batches, check_images, to_unit
from models.metrics.progress import Progress, Reporter
from models.metrics.ssim import mse, psnr_from_mse, ssim

_CACHE_BYTES = 1 << 30


@dataclass
class MatchedFidelity:
    """Per-image results of the nearest-real-image definition above."""

    nearest: np.ndarray  # (N,) index into the reference set
    mse: np.ndarray  # (N,) float64
    psnr: np.ndarray  # (N,) dB, capped at ssim.PSNR_CAP_DB
    ssim: np.ndarray  # (N,)

    def summary(self) -> dict[str, float]:
        return {
            "ssim": float(self.ssim.mean()),
            "ssim_std": float(self.ssim.std()),
            "psnr": float(self.psnr.mean()),
            "psnr_std": float(self.psnr.std()),
        }


def nearest_by_mse(fake, real, chunk: int = 256, device: str | torch.device = "cpu") -> np.ndarray:
    """Index of the reference image with the smallest MSE, for each generated image."""
    fake, real = check_images(fake, "generated images"), check_images(real, "reference images")
    if tuple(fake.shape[1:]) != tuple(real.shape[1:]):
        raise ValueError(f"generated images are {tuple(fake.shape[1:])} but reference images {tuple(real.shape[1:])}; resize one set first")
    best_d = torch.full((fake.shape[0],), float("inf"))
    best_i = torch.zeros(fake.shape[0], dtype=torch.long)
    # Keep the reference set as floats when it is small enough, else convert it again per pass.
    cache = real.shape[0] * int(np.prod(real.shape[1:])) * 4 <= _CACHE_BYTES
    cached: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def real_chunks():
        if cached:
            yield from cached
            return
        for rs, re in batches(real.shape[0], chunk):
            r = to_unit(real[rs:re], device).flatten(1)
            item = (rs, r, (r * r).sum(1))
            if cache:
                cached.append(item)
            yield item

    for fs, fe in batches(fake.shape[0], chunk):
        f = to_unit(fake[fs:fe], device).flatten(1)
        fn = (f * f).sum(1, keepdim=True)
        for rs, r, rn in real_chunks():
            d = (fn + rn[None, :] - 2.0 * f @ r.T).cpu()
            val, idx = d.min(1)
            better = val < best_d[fs:fe]
            best_d[fs:fe] = torch.where(better, val, best_d[fs:fe])
            best_i[fs:fe] = torch.where(better, idx + rs, best_i[fs:fe])
    return best_i.numpy()


def matched_fidelity(fake, real, chunk: int = 256, device: str | torch.device = "cpu", progress: Reporter | None = None) -> MatchedFidelity:
    """SSIM and PSNR of each generated image against its nearest reference image (module docstring)."""
    nearest = nearest_by_mse(fake, real, chunk=chunk, device=device)
    fake = check_images(fake, "generated images")
    real = check_images(real, "reference images")
    errs, ssims = [], []
    p = Progress("SSIM/PSNR against the nearest reference images", fake.shape[0], progress)
    for fs, fe in batches(fake.shape[0], chunk):
        f = to_unit(fake[fs:fe], device).to(torch.float64)
        idx = nearest[fs:fe]
        uniq = np.unique(idx)
        # Fancy indexing a memory map reads only the chosen rows.
        rows = real[uniq] if isinstance(real, np.ndarray) else real[torch.as_tensor(uniq)]
        r = to_unit(rows, device).to(torch.float64)[torch.as_tensor(np.searchsorted(uniq, idx))]
        errs.append(mse(f, r).cpu())
        ssims.append(ssim(f, r, 1.0).cpu())
        p.update(fe - fs)
    err = torch.cat(errs)
    return MatchedFidelity(nearest=nearest, mse=err.numpy(), psnr=psnr_from_mse(err, 1.0).numpy(), ssim=torch.cat(ssims).numpy())
