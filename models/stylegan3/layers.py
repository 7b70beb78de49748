"""Small building blocks shared by the StyleGAN3 networks.

Equalized learning rate (Karras et al. 2018, "Progressive Growing of GANs", §4.1): weights are stored
as N(0, 1) and scaled by He's constant at run time, so Adam's per-parameter step sizes are comparable
across layers. A learning-rate multiplier (StyleGAN, Karras et al. 2019, Appendix C: 0.01 for the
mapping network) divides the stored values and multiplies the run-time gain by the same factor.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

LRELU_SLOPE = 0.2
LRELU_GAIN = math.sqrt(2)  # keeps the second moment of N(0,1) inputs through a leaky ReLU near 1


def normalize_2nd_moment(x: torch.Tensor, dim: int = 1, eps: float = 1e-8) -> torch.Tensor:
    """x / sqrt(mean(x^2)) along ``dim`` (StyleGAN's latent normalization, Karras et al. 2019 §2)."""
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


def rowwise_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` computed so that each row's result does not depend on the other rows.

    A BLAS matrix product may pick a different blocking, hence a different summation order, for a
    different number of rows, so the same latent would give slightly different pixels in a batch of 1
    and a batch of 8. A broadcast product with a sum over the last axis reduces every row the same way.
    """
    y = (x.unsqueeze(-2) * weight).sum(dim=-1)
    return y if bias is None else y + bias


def lrelu(x: torch.Tensor, gain: float = LRELU_GAIN) -> torch.Tensor:
    return F.leaky_relu(x, LRELU_SLOPE) * gain


class FullyConnected(nn.Module):
    """A dense layer with equalized learning rate, optional leaky ReLU, and a bias initial value (a
    scalar, or one value per output)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        activation: str = "linear",
        bias: bool = True,
        bias_init: float | Sequence[float] = 0.0,
        lr_multiplier: float = 1.0,
        weight_init: float = 1.0,
    ):
        super().__init__()
        if activation not in ("linear", "lrelu"):
            raise ValueError(f"activation must be 'linear' or 'lrelu', got {activation!r}")
        self.in_features, self.out_features, self.activation = in_features, out_features, activation
        self.weight = nn.Parameter(torch.randn(out_features, in_features) * (weight_init / lr_multiplier))
        if bias:
            init = torch.as_tensor(bias_init, dtype=torch.float32).expand(out_features)
            self.bias = nn.Parameter(init.clone() / lr_multiplier)
        else:
            self.register_parameter("bias", None)
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype) * self.bias_gain
        x = rowwise_linear(x, w, b)
        return lrelu(x) if self.activation == "lrelu" else x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activation={self.activation}"


class Conv2d(nn.Module):
    """A 2-D convolution with equalized learning rate, used by the discriminator. Outputs are clamped
    to +-``clamp`` (StyleGAN2-ADA's conv_clamp: keeps float16 activations finite; inactive in a healthy
    float32 network)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, bias: bool = True, activation: str = "lrelu", clamp: float | None = 256.0):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.activation = activation
        self.clamp = clamp

    def forward(self, x: torch.Tensor, stride: int = 1, padding: int = 0, gain: float = 1.0) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        b = None if self.bias is None else self.bias.to(x.dtype)
        x = F.conv2d(x, w, b, stride=stride, padding=padding)
        if self.activation == "lrelu":
            x = lrelu(x, LRELU_GAIN * gain)
        elif gain != 1:
            x = x * gain
        return x.clamp(-self.clamp, self.clamp) if self.clamp is not None else x
