"""Latent vectors from seeds: the one definition every part of synthpacs uses.

A seed alone fixes its latent: ``z = RandomState(seed).randn(z_dim)`` (the StyleGAN convention), drawn
per seed and never per batch, so an image depends on (model, version, seed, psi) and not on which
batch it was generated in.
"""

from __future__ import annotations

import threading
from typing import Callable, Sequence

import numpy as np
import torch

from models.seeds import MAX_SEED


_local = threading.local()


def latent(seed: int, z_dim: int) -> np.ndarray:
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"seed {seed} is outside 0..{MAX_SEED}")
    # Re-seeding one RandomState per thread gives exactly RandomState(seed)'s numbers; making a new
    # one costs some 250 us in numpy 2 (9 us this way), paid for every image a server makes.
    rs = getattr(_local, "rs", None)
    if rs is None:
        rs = _local.rs = np.random.RandomState()
    rs.seed(int(seed))
    return rs.randn(z_dim).astype(np.float32)


def latents(seeds: Sequence[int], z_dim: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """A (len(seeds), z_dim) float32 tensor; row i depends only on seeds[i]."""
    z = np.stack([latent(s, z_dim) for s in seeds]) if len(seeds) else np.zeros((0, z_dim), np.float32)
    return torch.from_numpy(z).to(device)


def to_uint(images: torch.Tensor, bits: int = 8) -> np.ndarray:
    """Generator output in [-1, 1], shape (N, C, H, W), to unsigned integers of ``bits`` (8 or 16).

    The mapping is x -> round((x + 1) / 2 * (2**bits - 1)), clipped; computed in float32 on the CPU
    so the same tensor always gives the same integers.
    """
    if bits not in (8, 16):
        raise ValueError("bits must be 8 or 16")
    top = (1 << bits) - 1
    x = images.detach().to("cpu", torch.float32)
    x = ((x + 1) * (top / 2)).round_().clamp_(0, top)
    return x.numpy().astype(np.uint8 if bits == 8 else np.uint16)


def seeds_to_pixels(G: torch.nn.Module, seeds: Sequence[int], psi: float = 1.0, bits: int = 8, batch_size: int = 32,
                    device: torch.device | str = "cpu", c: torch.Tensor | None = None, gray: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> np.ndarray:
    """Images of generator ``G`` for ``seeds``, batch by batch: the one loop every part of synthpacs uses.

    One latent per seed (:func:`latents`), so the pixels of a seed do not depend on ``batch_size``.
    ``c``: a conditional generator's condition, one vector (c_dim,) for every seed or one row per seed
    (N, c_dim). ``gray``: (N, H, W), a many-channel image averaged to gray before quantization (datasets
    are grayscale); else (N, C, H, W). ``progress(done, total)`` after each batch.
    """
    seeds = list(seeds)
    out: list[np.ndarray] = []
    cond_all = c.to(device) if c is not None else None
    with torch.no_grad():
        for start in range(0, len(seeds), batch_size):
            chunk = seeds[start : start + batch_size]
            cond = {}
            if cond_all is not None:
                cond = {"c": cond_all.expand(len(chunk), -1) if cond_all.dim() == 1 else cond_all[start : start + len(chunk)]}
            img = G(latents(chunk, G.z_dim, device=device), psi=psi, **cond)
            if gray and img.shape[1] > 1:
                img = img.mean(1, keepdim=True)
            pixels = to_uint(img, bits=bits)
            out.append(pixels[:, 0] if gray else pixels)
            if progress is not None:
                progress(min(start + batch_size, len(seeds)), len(seeds))
    if out:
        return np.concatenate(out)
    size = int(getattr(G, "resolution", 0))
    shape = (0, size, size) if gray else (0, int(getattr(G, "channels", 1)), size, size)
    return np.zeros(shape, np.uint8 if bits == 8 else np.uint16)
