"""Latent vectors from seeds: the one definition every part of synthpacs uses.

A seed alone fixes its latent: ``z = RandomState(seed).randn(z_dim)`` (the StyleGAN convention), drawn
per seed and never per batch, so an image depends on (model, version, seed, psi) and not on which
batch it was generated in.
"""

from __future__ import annotations

import threading
from typing import Sequence

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
