"""The filtered leaky ReLU with a hand-written backward pass that keeps one byte per temporary value.

The layer (Karras et al. 2021, §3.2 and Figure 4) is linear - up-sampling - pointwise - linear -
down-sampling; only the pointwise leaky ReLU and clamp depend on the data, and their derivative at each
temporary value is one of three numbers: 1 (positive), ``slope`` (negative) or 0 (clamped). So the
backward pass needs only which of the three each value was: this function saves that as a uint8 code
(NVIDIA's fused CUDA kernel keeps the same information in 2 bits) instead of the float temporary that
plain autograd keeps, or the recomputation of :mod:`models.stylegan3.memory`. The backward pass applies
the adjoints (transposes) of the down-sampling and up-sampling convolutions explicitly:

    grad_tmp = D^T grad_out;   grad_tmp *= derivative(code);   grad_x = U^T grad_tmp;   grad_bias = sum grad_x.

A 256 px layer's temporary holds about 90 M values per image (4 bytes each in float32): 1 byte each
here, and no second up-sampling in the backward pass. First derivatives only (R1 differentiates D, not G).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input

from models.stylegan3.filters import ResamplingPlan, _crop_or_pad, _depthwise, downsample2d, upsample2d

POSITIVE, NEGATIVE, CLAMPED = 0, 1, 2


def _upsample_adjoint(g: torch.Tensor, f: torch.Tensor | None, up: int, pad: tuple[int, int], in_hw: tuple[int, int]) -> torch.Tensor:
    """U^T g for U = :func:`models.stylegan3.filters.upsample2d` (x of spatial size ``in_hw``)."""
    c = g.shape[1]
    p0, p1 = pad
    if f is None:
        return F.pad(g, (-p0, -p1, -p0, -p1))
    h, w = in_hw
    k = f.shape[-1]
    start = k - 1 - p0
    full = lambda length: (length - 1) * up + k  # noqa: E731  conv_transpose2d's output length
    # Forward: transposed conv (stride up) then crop, per axis, x first. Backward reverses the order;
    # a crop's adjoint is the opposite crop/pad, a transposed convolution's is the convolution.
    if f.ndim == 1:
        g_f = (f * up).flip(0).to(g.dtype)
        g = _crop_or_pad(g, -start, full(h), dim=2)
        g = F.conv2d(g, _depthwise(g_f, c, "y", g.dtype), stride=(up, 1), groups=c)
        g = _crop_or_pad(g, -start, full(w), dim=3)
        return F.conv2d(g, _depthwise(g_f, c, "x", g.dtype), stride=(1, up), groups=c)
    g_f = (f * up * up).flip(0, 1).to(g.dtype)
    g = _crop_or_pad(g, -start, full(h), dim=2)
    g = _crop_or_pad(g, -start, full(w), dim=3)
    return F.conv2d(g, _depthwise(g_f, c, "2d", g.dtype), stride=up, groups=c)


def _downsample_adjoint(g: torch.Tensor, f: torch.Tensor | None, down: int, gain: float, tmp_hw: tuple[int, int]) -> torch.Tensor:
    """D^T g for D = :func:`models.stylegan3.filters.downsample2d` without padding (input ``tmp_hw``)."""
    n, c = g.shape[:2]
    h, w = tmp_hw
    if f is None:
        out = g.new_zeros(n, c, h, w)
        out[:, :, ::down, ::down] = g * gain if gain != 1 else g
        return out
    f = f.to(g.dtype)
    if f.ndim == 1:
        mid = (n, c, h, (w - f.shape[0]) // down + 1)  # after the x pass
        g = conv2d_input(mid, _depthwise(f, c, "y", g.dtype), g, stride=(down, 1), groups=c)
        return conv2d_input((n, c, h, w), _depthwise(f * gain, c, "x", g.dtype), g, stride=(1, down), groups=c)
    return conv2d_input((n, c, h, w), _depthwise(f * gain, c, "2d", g.dtype), g, stride=down, groups=c)


class _SignMaskFilteredLReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, up_filter, down_filter, plan: ResamplingPlan, gain: float, slope: float, clamp: float | None):
        if bias is not None:
            x = x + bias.to(x.dtype).view(1, -1, 1, 1)
        tmp = upsample2d(x, up_filter, plan.up, plan.pad)
        code = (tmp <= 0).to(torch.uint8)  # NEGATIVE where the slope applies (at 0 too, as autograd)
        y = F.leaky_relu(tmp, slope) if slope != 1 else tmp
        if clamp is not None:
            limit = clamp / gain
            code = torch.where(y.abs() > limit, torch.full_like(code, CLAMPED), code)
            y = y.clamp(-limit, limit)
        del tmp
        out = downsample2d(y, down_filter, plan.down, gain=gain)
        ctx.save_for_backward(code, up_filter, down_filter)
        ctx.plan, ctx.gain, ctx.slope = plan, gain, slope
        ctx.in_hw, ctx.has_bias, ctx.dtype = tuple(x.shape[-2:]), bias is not None, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad_out):
        code, up_filter, down_filter = ctx.saved_tensors
        plan = ctx.plan
        g = _downsample_adjoint(grad_out.to(ctx.dtype), down_filter, plan.down, ctx.gain, tuple(code.shape[-2:]))
        derivative = torch.tensor([1.0, ctx.slope, 0.0], dtype=g.dtype, device=g.device)
        g = g * derivative[code.long()]
        grad_x = _upsample_adjoint(g, up_filter, plan.up, plan.pad, ctx.in_hw)
        grad_bias = grad_x.sum(dim=[0, 2, 3]).to(ctx.bias_dtype) if ctx.has_bias and ctx.needs_input_grad[1] else None
        return grad_x, grad_bias, None, None, None, None, None, None


def filtered_lrelu_sign_mask(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    up_filter: torch.Tensor | None,
    down_filter: torch.Tensor | None,
    plan: ResamplingPlan,
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
) -> torch.Tensor:
    """Same values as :func:`models.stylegan3.filters.filtered_lrelu_reference`; for the backward pass
    it keeps a uint8 code per temporary value instead of the float temporaries."""
    if not (torch.is_grad_enabled() and (x.requires_grad or (bias is not None and bias.requires_grad))):
        from models.stylegan3.filters import filtered_lrelu_reference

        return filtered_lrelu_reference(x, bias, up_filter, down_filter, plan, gain=gain, slope=slope, clamp=clamp)
    return _SignMaskFilteredLReLU.apply(x, bias, up_filter, down_filter, plan, gain, slope, clamp)
