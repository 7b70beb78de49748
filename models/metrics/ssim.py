"""SSIM, MS-SSIM and PSNR of image pairs, computed per pair on the CPU or GPU in float64.

SSIM follows Wang et al. 2004, "Image Quality Assessment: From Error Visibility to Structural
Similarity", §III-B and §III-C: local statistics under an 11 x 11 circular-symmetric Gaussian window
(sigma 1.5, normalized), population (1/N) variances, ``C1 = (0.01 L)^2``, ``C2 = (0.03 L)^2`` with L
the data range, and the mean of the SSIM map over the positions where the window fits inside the
image (no padding). This equals scikit-image's ``structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, data_range=L)`` (tested).

MS-SSIM follows Wang, Simoncelli and Bovik 2003, "Multi-scale Structural Similarity for Image Quality
Assessment", §2 eq. (7): contrast-structure terms at scales 1..M-1, the full SSIM at scale M, each
raised to the paper's weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), images halved by 2 x 2 averaging
between scales. Small images cannot hold five scales (the 11-pixel window must fit at the coarsest
one), so the number of scales is the largest that fits, at most five, and the weights used are
renormalized to sum to one; negative terms are clipped to zero before the fractional powers (as
pytorch-msssim and torchmetrics' ``normalize="relu"``), so the value stays real.

PSNR is ``10 log10(L^2 / MSE)``; identical images (MSE 0) get :data:`PSNR_CAP_DB` so that means
stay finite and JSON-safe.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
PSNR_CAP_DB = 100.0
_CPU_CHUNK_PIXELS = 1 << 18


def _as_batch(x) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).to(torch.float64)
    if t.ndim == 2:
        t = t[None, None]
    elif t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4 or t.shape[1] != 1:
        raise ValueError(f"expected grayscale images (H, W), (N, H, W) or (N, 1, H, W), got shape {tuple(t.shape)}")
    return t


def _pair(a, b) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_batch(a), _as_batch(b)
    if x.shape != y.shape:
        raise ValueError(f"image pairs must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    return x, y.to(x.device)


def _gaussian(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    r = torch.arange(WINDOW, dtype=torch.float64, device=device) - (WINDOW - 1) / 2
    g = torch.exp(-(r**2) / (2 * SIGMA**2))
    g = g / g.sum()
    return g.view(1, 1, 1, WINDOW), g.view(1, 1, WINDOW, 1)


def _filter(x, g: tuple[torch.Tensor, torch.Tensor]):
    """Gaussian-weighted local means, same size as ``x``; only positions at least ``WINDOW // 2`` from
    the border (where the window lies inside the image) are meaningful, and :func:`_ssim_terms` keeps
    only those.

    The 2-D Gaussian is separable: two 1-D passes. On the CPU (NumPy arrays) SciPy's C correlation,
    as scikit-image does; on a GPU (tensors), zero-padded convolutions. Both give the same values at
    the kept positions (tested).
    """
    if isinstance(x, np.ndarray):
        w = g[0].flatten().cpu().numpy()
        return ndimage.correlate1d(ndimage.correlate1d(x, w, axis=-1), w, axis=-2)
    return _filter_conv(x, g)


def _filter_conv(x: torch.Tensor, g: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    r = (WINDOW - 1) // 2
    return F.conv2d(F.conv2d(x, g[0], padding=(0, r)), g[1], padding=(r, 0))


def _valid(m):
    r = (WINDOW - 1) // 2
    return m[..., r:-r, r:-r]


def _ssim_terms(x: torch.Tensor, y: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term over the valid positions.

    On the CPU the arithmetic runs in NumPy, single-threaded like scikit-image: this work is
    memory-bound, and PyTorch's threads gained nothing on the 2-core machines here while losing
    badly when other processes kept the cores busy (bench/RESULTS.md).
    """
    if min(x.shape[-2:]) < WINDOW:
        raise ValueError(f"SSIM needs images of at least {WINDOW} x {WINDOW} pixels, got {tuple(x.shape[-2:])}")
    g = _gaussian(x.device)
    a, b = (x.numpy(), y.numpy()) if x.device.type == "cpu" else (x, y)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mx, my = _filter(a, g), _filter(b, g)
    vx = _filter(a * a, g) - mx * mx
    vy = _filter(b * b, g) - my * my
    cxy = _filter(a * b, g) - mx * my
    cs = (2 * cxy + c2) / (vx + vy + c2)
    lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
    s, c = _valid(lum * cs).mean(axis=(1, 2, 3)), _valid(cs).mean(axis=(1, 2, 3))
    return torch.as_tensor(s, device=x.device), torch.as_tensor(c, device=x.device)


def _per_chunk(fn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # The work is memory-bound: on the CPU a few images at a time stay in cache; a GPU takes the batch.
    if x.device.type != "cpu":
        return fn(x, y)
    step = max(1, _CPU_CHUNK_PIXELS // (x.shape[-1] * x.shape[-2]))
    return torch.cat([fn(x[i : i + step], y[i : i + step]) for i in range(0, x.shape[0], step)])


def ssim(a, b, data_range: float) -> torch.Tensor:
    """SSIM of each pair (a[i], b[i]); images (N, H, W) or (N, 1, H, W) in units where L = data_range."""
    x, y = _pair(a, b)
    return _per_chunk(lambda u, v: _ssim_terms(u, v, float(data_range))[0], x, y)


def ms_ssim_scales(size: int) -> int:
    """How many MS-SSIM scales an image of this (smaller) side holds: at most 5, at least 1."""
    scales = 1
    while scales < len(MS_SSIM_WEIGHTS) and size // (2**scales) >= WINDOW:
        scales += 1
    return scales


def ms_ssim(a, b, data_range: float, scales: int | None = None) -> torch.Tensor:
    """MS-SSIM of each pair; ``scales`` defaults to :func:`ms_ssim_scales` of the image size."""
    x, y = _pair(a, b)
    m = scales or ms_ssim_scales(min(x.shape[-2:]))
    if not 1 <= m <= len(MS_SSIM_WEIGHTS):
        raise ValueError(f"MS-SSIM scales must be 1..{len(MS_SSIM_WEIGHTS)}")
    if min(x.shape[-2:]) // (2 ** (m - 1)) < WINDOW:
        raise ValueError(f"images of {tuple(x.shape[-2:])} pixels are too small for {m} MS-SSIM scales")
    w = torch.tensor(MS_SSIM_WEIGHTS[:m], dtype=torch.float64, device=x.device)
    w = w / w.sum()

    def one(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        value = torch.ones(x.shape[0], dtype=torch.float64, device=x.device)
        for j in range(m):
            s, cs = _ssim_terms(x, y, float(data_range))
            term = s if j == m - 1 else cs
            value = value * term.clamp_min(0.0) ** w[j]
            if j < m - 1:
                x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        return value

    return _per_chunk(one, x, y)


def mse(a, b) -> torch.Tensor:
    x, y = _pair(a, b)
    return ((x - y) ** 2).mean(dim=(1, 2, 3))


def psnr_from_mse(err: torch.Tensor, data_range: float) -> torch.Tensor:
    err = torch.as_tensor(err, dtype=torch.float64)
    # err == 0 gives +inf here, which the cap turns into PSNR_CAP_DB.
    return (10.0 * torch.log10(float(data_range) ** 2 / err)).clamp(max=PSNR_CAP_DB)


def psnr(a, b, data_range: float) -> torch.Tensor:
    """PSNR in dB of each pair, ``10 log10(L^2 / MSE)``, capped at :data:`PSNR_CAP_DB`."""
    return psnr_from_mse(mse(a, b), data_range)

