"""Tiny generators that meet the registry's generator contract (models/registry.py), for tests that
must not depend on a trained model: registered as test architectures by tests/inference/conftest.py."""

from __future__ import annotations

import math
import threading
import time

import torch
from torch import nn


class TinyGenerator(nn.Module):
    """z -> Linear -> 4x4 maps -> transposed convolutions up to ``resolution`` -> Tanh.

    A Linear layer and transposed convolutions are the layers whose CPU kernels change algorithm with the
    batch size (service/inference/calibrate.py), so this net shows the problem the calibration fixes.
    """

    def __init__(self, z_dim: int = 64, resolution: int = 16, channels: int = 1, width: int = 64, seed: int = 0):
        super().__init__()
        self.init_kwargs = dict(z_dim=z_dim, resolution=resolution, channels=channels, width=width, seed=seed)
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        torch.manual_seed(seed)
        self.width = width
        self.fc = nn.Linear(z_dim, width * 16)
        layers: list[nn.Module] = []
        cin = width
        for _ in range(int(math.log2(resolution // 4)) - 1):
            layers += [nn.ConvTranspose2d(cin, max(cin // 2, 8), 4, 2, 1), nn.BatchNorm2d(max(cin // 2, 8)), nn.ReLU()]
            cin = max(cin // 2, 8)
        layers += [nn.ConvTranspose2d(cin, channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)
        with torch.no_grad():  # non-trivial running statistics, as a trained net has
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        x = self.fc(z * psi).view(-1, self.width, 4, 4)
        return self.body(torch.relu(x))


class SlowGenerator(TinyGenerator):
    """A TinyGenerator whose every forward pass takes at least ``delay`` seconds (a stand-in for a big
    model on a slow device), so tests can cancel, time out or crowd requests that are still running."""

    def __init__(self, delay: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        self.init_kwargs = dict(self.init_kwargs, delay=delay)
        self.delay = delay

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        time.sleep(self.delay)
        return super().forward(z, psi)


class Gate:
    """Holds every GatedGenerator forward pass until opened, so tests can act while work is running
    without relying on timing. Waits are bounded so a failing test cannot hang."""

    entered = threading.Event()
    opened = threading.Event()

    @classmethod
    def reset(cls, open_: bool = True) -> None:
        cls.entered.clear()
        if open_:
            cls.opened.set()
        else:
            cls.opened.clear()


class GatedGenerator(TinyGenerator):
    """A TinyGenerator whose forward pass waits for :class:`Gate` to open (at most 30 s)."""

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        Gate.entered.set()
        Gate.opened.wait(timeout=30)
        return super().forward(z, psi)


class BrokenGenerator(TinyGenerator):
    """Loads fine, then fails in every forward pass whose psi is 0.25 (a model bug at serving time)."""

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        if psi == 0.25:
            raise RuntimeError("kernel exploded")
        return super().forward(z, psi)


class CrashingGenerator(TinyGenerator):
    """Loads fine and fails on every forward pass (a generator that cannot run at all)."""

    def forward(self, z: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
