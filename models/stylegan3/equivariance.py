"""Translation equivariance as the paper measures it: EQ-T (Karras et al. 2021, §2 "Equivariance
metrics" and Appendix E).

EQ-T = 10 log10(I_max^2 / E[ (g(t[z0]; w) - t[g(z0; w)])^2 ]), with I_max = 2 for images in [-1, 1]:
the image generated from translated input coordinates is compared with the correspondingly translated
original, over the region valid in both (the pixels the translation brings in from outside are not
compared). This module uses integer-pixel translations, for which translating the original image is
exact (no resampling filter enters the measurement).
"""

from __future__ import annotations

import math

import torch

from models.stylegan3.synthesis import content_transform

I_MAX = 2.0  # the dynamic range of images in [-1, 1]


@torch.no_grad()
def eq_t_psnr(G: torch.nn.Module, z: torch.Tensor, shifts: list[tuple[int, int]], psi: float = 1.0) -> float:
    """EQ-T in dB over the latents ``z`` and integer pixel ``shifts`` (dx, dy), each applied to every
    latent. Higher is more equivariant; the paper reports about 60-65 dB for trained config T."""
    res = G.resolution
    ws = G.mapping(z, psi=psi)
    ref = G.synthesis(ws)
    total, count = 0.0, 0
    for dx, dy in shifts:
        if abs(dx) >= res or abs(dy) >= res:
            raise ValueError(f"shift ({dx}, {dy}) leaves no overlap in a {res}x{res} image")
        moved = G.synthesis(ws, transform=content_transform(translate=(dx / res, dy / res)))
        # Content moved by (dx, dy): moved[y, x] should equal ref[y - dy, x - dx] where both exist.
        a = moved[:, :, max(dy, 0) : res + min(dy, 0), max(dx, 0) : res + min(dx, 0)]
        b = ref[:, :, max(-dy, 0) : res + min(-dy, 0), max(-dx, 0) : res + min(-dx, 0)]
        total += (a.double() - b.double()).square().sum().item()
        count += a.numel()
    mse = total / max(count, 1)
    return float("inf") if mse == 0 else 10 * math.log10(I_MAX**2 / mse)


def random_shifts(resolution: int, count: int, generator: torch.Generator | None = None, max_fraction: float = 0.125) -> list[tuple[int, int]]:
    """``count`` integer shifts, each coordinate uniform in +-``max_fraction`` of the image (the paper's
    translations are of this scale), never (0, 0)."""
    limit = max(1, int(resolution * max_fraction))
    out = []
    while len(out) < count:
        dx, dy = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=generator))
        if (dx, dy) != (0, 0):
            out.append((dx, dy))
    return out
