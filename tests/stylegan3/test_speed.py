"""Run-time speed options of the synthesis layers (models/stylegan3/speed.py), on the CPU with tiny
shapes: each runs, the sign-mask leaky ReLU gives the gradients of the plain path, bf16 convolutions
and channels_last stay close to float32, and torch.compile of the filter chain gives the same images."""

from __future__ import annotations

import copy

import pytest
import torch

from models.stylegan3.speed import SpeedOptions, compiled_filtered_lrelu
from models.stylegan3.filtered_lrelu import filtered_lrelu_sign_mask
from models.stylegan3.filters import filtered_lrelu_reference
from tests.stylegan3.conftest import Z, tiny_generator


def _pair(**speed):
    plain = tiny_generator(64, memory_budget=None)
    fast = copy.deepcopy(plain)
    fast.set_speed(SpeedOptions(**speed))
    return plain, fast


def test_sign_mask_generator_gradients_equal_plain_autograd():
    plain, fast = _pair(sign_mask_lrelu=True)
    fast.synthesis.memory_budget = 40_000  # also with the budget that would otherwise recompute
    z = torch.randn(3, Z)
    target = torch.randn(3, 1, 64, 64)
    outs = []
    for G in (plain, fast):
        out = G(z, clamp=False)
        ((out - target).square().mean()).backward()
        outs.append(out.detach())
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-6)
    for (name, a), (_n, b) in zip(plain.named_parameters(), fast.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("speed", [dict(conv_dtype=torch.bfloat16), dict(channels_last=True), dict(conv_dtype=torch.bfloat16, channels_last=True, sign_mask_lrelu=True)])
def test_bf16_and_channels_last_stay_close_to_float32(speed):
    plain, fast = _pair(**speed)
    plain.eval(), fast.eval()
    z = torch.randn(3, Z)
    with torch.no_grad():
        ref, got = plain(z), fast(z)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    levels = (got - ref).abs().max().item() * 127.5
    # bf16 keeps 8 bits of mantissa: measured up to about 2 levels of 255 on these tiny networks.
    assert levels <= (6.0 if "conv_dtype" in speed else 1e-3)
    fast.train()
    (fast(z, clamp=False).square().mean()).backward()
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


def test_options_are_validated():
    with pytest.raises(ValueError, match="alternatives"):
        SpeedOptions(sign_mask_lrelu=True, compile_filters=True)
    with pytest.raises(ValueError, match="conv_dtype"):
        SpeedOptions(conv_dtype=torch.int8)
    with pytest.raises(ValueError, match="unknown speed option"):
        SpeedOptions.from_dict({"fast": True})
    assert SpeedOptions.from_dict({"conv_dtype": "bfloat16"}).conv_dtype is torch.bfloat16
    assert SpeedOptions.for_device("cpu") == SpeedOptions()
    # Each option picks its implementation of the filter chain (compile_filters: the slow test below).
    assert SpeedOptions().filtered_lrelu() is filtered_lrelu_reference
    assert SpeedOptions(sign_mask_lrelu=True).filtered_lrelu() is filtered_lrelu_sign_mask


@pytest.mark.slow
def test_compiled_filter_chain_gives_the_eager_images():
    """torch.compile works on this CPU build (it needs gcc): about 40 s to compile on 2 cores."""
    G = tiny_generator(32, channel_max=4).eval()
    layer = G.synthesis.layers[2]
    x = torch.randn(2, layer.out_channels, layer.plan.in_size, layer.plan.in_size)
    args = (x, layer.bias, layer.up_filter, layer.down_filter, layer.plan)
    eager = filtered_lrelu_reference(*args, clamp=256.0)
    chain = SpeedOptions(compile_filters=True).filtered_lrelu()
    assert chain is compiled_filtered_lrelu()  # made once per process
    compiled = chain(*args, clamp=256.0)
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-6)


def test_sign_mask_under_bf16_autocast_trains():
    """What a CUDA run does (the runner's autocast around the sign-mask layers), here on the CPU."""
    plain, fast = _pair(sign_mask_lrelu=True, channels_last=True)
    z = torch.randn(2, Z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast(z, clamp=False)
        ref = plain(z, clamp=False)
    (out.float().square().mean()).backward()
    assert all(torch.isfinite(p.grad).all() and p.grad.dtype == p.dtype for p in fast.parameters() if p.grad is not None)
    assert sum(p.grad is not None for p in fast.parameters()) > len(list(fast.parameters())) // 2
    assert (out.float() - ref.float()).abs().max() * 127.5 <= 8
