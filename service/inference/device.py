"""Which device inference runs on, set up so that the same input gives the same output every time."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """``inference.device`` names a device this machine does not have."""


def pick_device(setting: str = "auto") -> torch.device:
    """``auto``: the first CUDA GPU when there is one, else the CPU; or ``cpu``, ``cuda``, ``cuda:N``."""
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise DeviceError(f"inference.device {setting!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"inference.device is {setting!r} but PyTorch sees no CUDA GPU here; use auto or cpu")
        index = device.index if device.index is not None else 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"inference.device {setting!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        device = torch.device("cuda", index)
        # cuDNN autotuning picks algorithms by timing them, so two runs of the same shape could sum in a
        # different order; fixed heuristics keep an image's pixels the same from one request to the next.
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    elif device.type != "cpu":
        raise DeviceError(f"inference.device {setting!r}: only cpu and cuda devices are supported")
    return device


def memory_stats(device: torch.device, loaded_weight_bytes: int) -> dict[str, int]:
    """Bytes in use on ``device``: PyTorch's allocator on CUDA, the loaded weights on the CPU."""
    if device.type == "cuda":
        return {
            "allocated": int(torch.cuda.memory_allocated(device)),
            "reserved": int(torch.cuda.memory_reserved(device)),
            "weights": loaded_weight_bytes,
        }
    return {"weights": loaded_weight_bytes}
