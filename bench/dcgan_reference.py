"""The classic DCGAN training step with pytorch/examples' layer shapes: the baseline of bench_train.

Built here from the published shapes (pytorch/examples ``dcgan/main.py``: nz 100, ngf 64, ndf 64,
64x64 images; Radford et al. 2016 Fig. 1), one input channel for radiographs, and trained the way that
example trains: ``nn.BCELoss`` on a Sigmoid output, Adam(lr 0.0002, betas 0.5/0.999), for each batch
one D update on reals then detached fakes, one G update on the same fakes. Plain modules, a plain
loop, no checkpoints or logging: it is here to be measured against, not used.
"""

from __future__ import annotations

import time

import torch
from torch import nn

NZ, NGF, NDF, NC = 100, 64, 64, 1


def _init(m: nn.Module) -> None:
    name = type(m).__name__
    if "Conv" in name:
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif "BatchNorm" in name:
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


def generator() -> nn.Module:
    layers: list[nn.Module] = []
    chans = [NZ, NGF * 8, NGF * 4, NGF * 2, NGF]
    for i, (cin, cout) in enumerate(zip(chans, chans[1:])):
        layers += [nn.ConvTranspose2d(cin, cout, 4, 1 if i == 0 else 2, 0 if i == 0 else 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
    layers += [nn.ConvTranspose2d(NGF, NC, 4, 2, 1, bias=False), nn.Tanh()]
    net = nn.Sequential(*layers)
    net.apply(_init)
    return net


def discriminator() -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(NC, NDF, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
    chans = [NDF, NDF * 2, NDF * 4, NDF * 8]
    for cin, cout in zip(chans, chans[1:]):
        layers += [nn.Conv2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.LeakyReLU(0.2, inplace=True)]
    layers += [nn.Conv2d(NDF * 8, 1, 4, 1, 0, bias=False), nn.Sigmoid()]
    net = nn.Sequential(*layers)
    net.apply(_init)
    return net


class ClassicDCGAN:
    """One training step at a time, as pytorch/examples' loop body."""

    def __init__(self) -> None:
        self.G, self.D = generator(), discriminator()
        self.optG = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.optD = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.criterion = nn.BCELoss()

    def step(self, real: torch.Tensor) -> None:
        b = real.shape[0]
        self.D.zero_grad()
        label = torch.full((b,), 1.0)
        err_real = self.criterion(self.D(real).view(-1), label)
        err_real.backward()
        noise = torch.randn(b, NZ, 1, 1)
        fake = self.G(noise)
        label.fill_(0.0)
        err_fake = self.criterion(self.D(fake.detach()).view(-1), label)
        err_fake.backward()
        self.optD.step()
        self.G.zero_grad()
        label.fill_(1.0)
        err_g = self.criterion(self.D(fake).view(-1), label)
        err_g.backward()
        self.optG.step()


def step_times(model: ClassicDCGAN, batches: list[torch.Tensor]) -> list[float]:
    """Seconds per step for each batch."""
    out = []
    for real in batches:
        t = time.perf_counter()
        model.step(real)
        out.append(time.perf_counter() - t)
    return out
