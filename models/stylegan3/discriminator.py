"""StyleGAN2's residual discriminator, which StyleGAN3 keeps unchanged (Karras et al. 2021 §4).

Karras et al. 2020, "Analyzing and Improving the Image Quality of StyleGAN", §4 and Figure 7c: from
the image (1x1 "fromRGB" convolution) down to 4x4 through residual blocks of two 3x3 convolutions, the
second one down-sampling after a [1,3,3,1] binomial blur, with a 1x1 down-sampling skip, the sum scaled
by 1/sqrt(2); then the minibatch standard deviation (Karras et al. 2018 §3, group of 4), a 3x3
convolution, a fully connected layer and the logit. Channels: min(channel_base / resolution,
channel_max) at each resolution. Equalized learning rate throughout (:mod:`.layers`).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models.stylegan3.filters import downsample2d
from models.stylegan3.layers import Conv2d, FullyConnected

BLUR = torch.tensor([1.0, 3.0, 3.0, 1.0]) / 8  # binomial low-pass, unit DC gain


class DiscriminatorBlock(nn.Module):
    """One resolution: two 3x3 convolutions (the second halves the size) plus a 1x1 skip."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv0 = Conv2d(in_channels, in_channels, 3)
        self.conv1 = Conv2d(in_channels, out_channels, 3)
        self.skip = Conv2d(in_channels, out_channels, 1, bias=False, activation="linear")
        self.register_buffer("blur", BLUR.clone(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = math.sqrt(0.5)
        # Skip: blur with stride 2 (H -> H/2), then 1x1.
        y = self.skip(downsample2d(x, self.blur.to(x.dtype), 2, pad=(1, 1)), gain=half)
        x = self.conv0(x, padding=1)
        # Blur (H -> H+1), then a valid 3x3 convolution with stride 2 (H+1 -> H/2).
        x = self.conv1(downsample2d(x, self.blur.to(x.dtype), 1, pad=(2, 2)), stride=2, gain=half)
        return y + x


def minibatch_stddev(x: torch.Tensor, group_size: int = 4) -> torch.Tensor:
    """Append one feature map: the standard deviation of each feature over groups of ``group_size``
    samples, averaged over features and positions (Karras et al. 2018 §3). A batch not divisible by the
    group size uses the largest group size that divides it."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    while n % g:
        g -= 1
    y = x.float().reshape(g, n // g, c, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0)
    y = (y + 1e-8).sqrt().mean(dim=[1, 2, 3])  # (n // g,)
    y = y.reshape(1, -1, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
    return torch.cat([x, y.to(x.dtype)], dim=1)


class Discriminator(nn.Module):
    """Images (N, channels, resolution, resolution) in about [-1, 1] -> logits (N, 1)."""

    def __init__(self, resolution: int = 256, channels: int = 1, channel_base: int = 32768, channel_max: int = 512, mbstd_group: int = 4):
        super().__init__()
        if resolution < 8 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two of at least 8, got {resolution}")
        if channels < 1:
            raise ValueError("channels must be positive")
        self.init_kwargs: dict[str, Any] = dict(resolution=resolution, channels=channels, channel_base=channel_base, channel_max=channel_max, mbstd_group=mbstd_group)
        self.resolution, self.channels, self.mbstd_group = resolution, channels, mbstd_group

        def width(res: int) -> int:
            return max(1, min(channel_base // res, channel_max))

        self.from_image = Conv2d(channels, width(resolution), 1)
        self.blocks = nn.ModuleList()
        res = resolution
        while res > 4:
            self.blocks.append(DiscriminatorBlock(width(res), width(res // 2)))
            res //= 2
        c4 = width(4)
        self.conv = Conv2d(c4 + 1, c4, 3)
        self.fc = FullyConnected(c4 * 16, c4, activation="lrelu")
        self.out = FullyConnected(c4, 1)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.ndim != 4 or img.shape[1:] != (self.channels, self.resolution, self.resolution):
            raise ValueError(f"images must have shape (N, {self.channels}, {self.resolution}, {self.resolution}), got {tuple(img.shape)}")
        x = self.from_image(img)
        for block in self.blocks:
            x = block(x)
        x = minibatch_stddev(x, self.mbstd_group)
        x = self.conv(x, padding=1)
        x = self.fc(x.flatten(1))
        return self.out(x)
