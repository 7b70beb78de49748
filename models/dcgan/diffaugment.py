"""Differentiable Augmentation (Zhao, Liu, Lin, Zhu and Han 2020, "Differentiable Augmentation for
Data-Efficient GAN Training", NeurIPS, arXiv 2006.10738).

§3.2: the same random, differentiable transformation T is applied to every image the discriminator sees,
real and generated, in both the discriminator's and the generator's update (D(T(x)) and D(T(G(z)))), so
D cannot memorize a small training set while G still receives gradients through T. The policies of
the paper's §3.2 / Fig. 4, each drawn per image:

- ``color``: brightness (add a uniform number in [-0.5, 0.5]) and contrast (scale the deviation from the
  image's mean by a uniform factor in [0.5, 1.5]). The paper's saturation term means nothing on one gray
  channel and is left out.
- ``translation``: shift by up to 1/8 of the image size in each direction (whole pixels), the uncovered
  border filled with the background (-1, black, which is what the padding of radiographs looks like;
  the paper's code fills 0 on its [-1, 1] range).
- ``cutout``: set a square of half the image size at a random position to 0 (mid gray), as the paper.

No flips: a mirrored radiograph is a different laterality, which a conditional model should not learn
to confuse. Images are in [-1, 1], shape (N, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")
DEFAULT_POLICY = "color,translation,cutout"
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5
BACKGROUND = -1.0


def parse_policy(policy: str | None) -> tuple[str, ...]:
    """``"color,translation"`` -> ("color", "translation"); None or "" -> ()."""
    if not policy:
        return ()
    names = tuple(p.strip().lower() for p in str(policy).split(",") if p.strip())
    unknown = [p for p in names if p not in POLICIES]
    if unknown:
        raise ValueError(f"unknown DiffAugment polic{'ies' if len(unknown) > 1 else 'y'} {', '.join(unknown)}; known: {', '.join(POLICIES)}")
    return names


def diff_augment(x: torch.Tensor, policy: tuple[str, ...], generator: torch.Generator | None = None) -> torch.Tensor:
    """``x`` transformed by each policy in turn, new random parameters per image."""
    for name in policy:
        x = _FUNCTIONS[name](x, generator)
    return x


def _rand(shape: tuple[int, ...], x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(shape, generator=generator, dtype=torch.float32).to(device=x.device, dtype=x.dtype)


def color(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    n = x.shape[0]
    x = x + (_rand((n, 1, 1, 1), x, generator) - 0.5)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * (_rand((n, 1, 1, 1), x, generator) + 0.5) + mean


def translation(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    n, _, h, w = x.shape
    sy, sx = int(h * TRANSLATION_RATIO + 0.5), int(w * TRANSLATION_RATIO + 0.5)
    ty = torch.randint(-sy, sy + 1, (n, 1, 1), generator=generator).to(x.device)
    tx = torch.randint(-sx, sx + 1, (n, 1, 1), generator=generator).to(x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    # Output pixel (y, x) takes input pixel (y - ty, x - tx) of an image padded by one background pixel.
    src_y = torch.clamp(gy[None] - ty + 1, 0, h + 1)
    src_x = torch.clamp(gx[None] - tx + 1, 0, w + 1)
    padded = F.pad(x, (1, 1, 1, 1), value=BACKGROUND)
    flat = padded.flatten(2)  # (N, C, (h+2)*(w+2))
    index = (src_y * (w + 2) + src_x).flatten(1)[:, None, :].expand(-1, x.shape[1], -1)
    return flat.gather(2, index).view_as(x)


def cutout(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = int(h * CUTOUT_RATIO + 0.5), int(w * CUTOUT_RATIO + 0.5)
    oy = torch.randint(0, h + (1 - ch % 2), (n, 1, 1), generator=generator).to(x.device)
    ox = torch.randint(0, w + (1 - cw % 2), (n, 1, 1), generator=generator).to(x.device)
    gy, gx = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
    # The square is centred on (oy, ox) and may be clipped by the border, as in the paper's code.
    inside = (gy[None] >= oy - ch // 2) & (gy[None] < oy - ch // 2 + ch) & (gx[None] >= ox - cw // 2) & (gx[None] < ox - cw // 2 + cw)
    return x * (~inside)[:, None].to(x.dtype)


_FUNCTIONS = {"color": color, "translation": translation, "cutout": cutout}
