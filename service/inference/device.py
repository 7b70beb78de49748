"""What inference holds on its device (the device itself is chosen by :func:`models.device.pick_device`)."""

from __future__ import annotations

import torch


def memory_stats(device: torch.device, loaded_weight_bytes: int) -> dict[str, int]:
    """Bytes in use on ``device``: PyTorch's allocator on CUDA, the loaded weights on the CPU."""
    if device.type == "cuda":
        return {
            "allocated": int(torch.cuda.memory_allocated(device)),
            "reserved": int(torch.cuda.memory_reserved(device)),
            "weights": loaded_weight_bytes,
        }
    return {"weights": loaded_weight_bytes}
