"""The sign-mask filtered leaky ReLU: the same values as the reference chain and, checked by
torch.autograd.gradcheck in float64 and against autograd through the reference, the same gradients,
for every kind of layer in the T and R schedules (separable and radial filters, up-sampling by 1, 2
or 4, ToRGB without filters, the clamp engaged)."""

from __future__ import annotations

import math

import pytest
import torch

from models.stylegan3.filtered_lrelu import filtered_lrelu_sign_mask
from models.stylegan3.filters import ResamplingPlan, filtered_lrelu_reference, lowpass_filter
from tests.stylegan3.conftest import tiny_generator


def _layers(config: str):
    G = tiny_generator(64, config, channel_base=64, channel_max=2, margin=2)
    return G.synthesis.layers


def _case(layer, batch=2):
    x = torch.randn(batch, layer.out_channels, layer.plan.in_size, layer.plan.in_size, dtype=torch.float64) * 3
    bias = torch.randn(layer.out_channels, dtype=torch.float64)
    fu = None if layer.up_filter is None else layer.up_filter.double()
    fd = None if layer.down_filter is None else layer.down_filter.double()
    gain, slope = (1.0, 1.0) if layer.is_torgb else (math.sqrt(2), 0.2)
    return x, bias, fu, fd, layer.plan, gain, slope


@pytest.mark.parametrize("config", ["t", "r"])
def test_values_and_gradients_equal_the_reference(config):
    seen = set()
    for layer in _layers(config):
        x, bias, fu, fd, plan, gain, slope = _case(layer)
        kinds = (plan.up, plan.down, None if fd is None else fd.ndim)
        for clamp in (None, 2.0):  # 2.0 is reached by a few percent of the values
            xa, ba = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
            xb, bb = x.clone().requires_grad_(True), bias.clone().requires_grad_(True)
            ref = filtered_lrelu_reference(xa, ba, fu, fd, plan, gain=gain, slope=slope, clamp=clamp)
            got = filtered_lrelu_sign_mask(xb, bb, fu, fd, plan, gain=gain, slope=slope, clamp=clamp)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)
            g = torch.randn_like(ref)
            ref.backward(g)
            got.backward(g)
            torch.testing.assert_close(xb.grad, xa.grad, rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(bb.grad, ba.grad, rtol=1e-10, atol=1e-12)
        seen.add(kinds)
    # The schedule really exercised several geometries (and radial filters for R).
    assert len(seen) >= 3
    assert any(k[2] == 2 for k in seen) == (config == "r")


@pytest.mark.parametrize(
    "up, down, radial",
    [(2, 2, False), (4, 2, False), (2, 4, True), (1, 1, False)],
)
def test_gradcheck_in_float64(up, down, radial):
    in_size, out_size = 6, 6 * up // down
    up_taps = 4 * up if up > 1 else 1
    down_taps = 4 * down if down > 1 else 1
    fs = 8.0 * up
    fu = lowpass_filter(up_taps, 1.5, 2.0, fs)
    fd = lowpass_filter(down_taps, 1.5 * up / down, 2.0, fs, radial=radial)
    plan = ResamplingPlan.between(in_size, out_size, up, down, up_taps, down_taps)
    x = torch.randn(1, 2, in_size, in_size, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    fu = None if fu is None else fu.double()
    fd = None if fd is None else fd.double()
    fn = lambda x, b: filtered_lrelu_sign_mask(x, b, fu, fd, plan, gain=math.sqrt(2), slope=0.2, clamp=1.5)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, bias), eps=1e-6, atol=1e-7)


def test_saves_one_byte_per_temporary_value():
    layer = _layers("t")[4]
    x, bias, fu, fd, plan, gain, slope = _case(layer)
    x = x.float().requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        filtered_lrelu_sign_mask(x, bias.float(), fu.float(), fd.float(), plan, gain=gain, slope=slope, clamp=256.0)
    big = [t for t in saved if t.numel() >= x.shape[0] * x.shape[1] * plan.tmp_size**2]
    assert len(big) == 1 and big[0].dtype == torch.uint8
