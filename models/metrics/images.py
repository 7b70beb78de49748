"""The one conversion every metric uses: stored pixels to float images in [0, 1].

Datasets and generated images are (N, H, W) uint8 or uint16 arrays (DESIGN.md, ``images.npy`` and
``models.sampling.to_uint``); both map to [0, 1] by dividing by the type's maximum (255 or 65535), as
pytorch-fid's ``ToTensor`` does for 8-bit files. Float arrays are taken to be in [0, 1] already.
Arrays may be memory-mapped: callers convert batch by batch, so a dataset never has to fit in memory
as floats.
"""

from __future__ import annotations

import numpy as np
import torch

_MAX = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def check_images(images, what: str = "images") -> np.ndarray | torch.Tensor:
    """``images`` as an (N, H, W) array or tensor, with a clear error for anything else."""
    shape = tuple(images.shape)
    if len(shape) == 4 and shape[1] == 1:
        images = images[:, 0]
    elif len(shape) != 3:
        raise ValueError(f"{what} must be grayscale (N, H, W) or (N, 1, H, W), got shape {shape}")
    dtype = images.dtype
    if isinstance(images, np.ndarray):
        if dtype not in _MAX and dtype.kind != "f":
            raise ValueError(f"{what} must be uint8, uint16 or float in [0, 1], got {dtype}")
    elif not (dtype in (torch.uint8, torch.uint16) or dtype.is_floating_point):
        raise ValueError(f"{what} must be uint8, uint16 or float in [0, 1], got {dtype}")
    if images.shape[0] == 0:
        raise ValueError(f"{what} are empty")
    return images


def to_unit(images, device: torch.device | str = "cpu") -> torch.Tensor:
    """(N, H, W) uint8/uint16/float images -> float32 tensor (N, 1, H, W) in [0, 1]."""
    images = check_images(images)
    if isinstance(images, torch.Tensor):
        t = images.to(device)
        if t.dtype.is_floating_point:
            return t.to(torch.float32)[:, None]
        return t.to(torch.float32).div(255.0 if t.dtype == torch.uint8 else 65535.0)[:, None]
    arr = np.asarray(images)
    scale = _MAX.get(arr.dtype)
    # A read-only memory map is copied batch by batch (torch refuses to wrap read-only memory).
    arr = np.ascontiguousarray(arr) if arr.flags.writeable else np.array(arr, copy=True)
    t = torch.from_numpy(arr).to(device)
    if scale is None:
        return t.to(torch.float32)[:, None]
    # Same operation as torchvision's ToTensor (float, then divide), so 8-bit inputs match it exactly.
    return t.to(torch.float32).div(scale)[:, None]


def batches(n: int, size: int):
    """(start, stop) ranges covering 0..n in steps of ``size``."""
    size = max(1, int(size))
    for start in range(0, n, size):
        yield start, min(n, start + size)
