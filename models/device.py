"""Which device a network runs on: the one reading of ``auto``, ``cpu``, ``cuda`` and ``cuda:N`` that
training, inference, evaluation and the command line share."""

from __future__ import annotations

import torch


class DeviceError(ValueError):
    """The device setting names a device this machine does not have; the message says what to use."""


def pick_device(setting: str = "auto", *, setting_name: str = "device", local_rank: int = 0, deterministic: bool = False) -> torch.device:
    """``auto``: a CUDA GPU when there is one, else the CPU; or ``cpu``, ``cuda``, ``cuda:N``.

    ``setting_name`` names the setting in error messages (``inference.device``); ``local_rank`` is the GPU
    that ``auto`` and a bare ``cuda`` mean in a distributed process; ``deterministic`` fixes cuDNN's
    algorithms, so two runs of the same shape sum in the same order and give the same pixels.
    """
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise DeviceError(f"{setting_name} {setting!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"{setting_name} is {setting!r} but PyTorch sees no CUDA GPU here; use auto or cpu")
        index = device.index if device.index is not None else local_rank
        if index >= torch.cuda.device_count():
            raise DeviceError(f"{setting_name} {setting!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        device = torch.device("cuda", index)
        if deterministic:
            # cuDNN autotuning picks algorithms by timing them, so two runs of the same shape could sum in a
            # different order; fixed heuristics keep an image's pixels the same from one request to the next.
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
    elif device.type != "cpu":
        raise DeviceError(f"{setting_name} {setting!r}: only cpu and cuda devices are supported")
    return device
