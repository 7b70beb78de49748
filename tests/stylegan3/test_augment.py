"""ADA for grayscale radiographs (models/stylegan3/ada.py): each transform does what it says, p = 0 is the
identity, gradients (and R1's second derivative) flow, and the controller moves p as the paper says."""

from __future__ import annotations

import math

import pytest
import torch

from models.stylegan3.ada import AdaController, AugmentPipe, AugmentSpec, _rot, _shift, warp

ALL_OFF = {f: False for f in ("xflip", "rotate90", "xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast")}


def only(**on) -> AugmentSpec:
    return AugmentSpec(**{**ALL_OFF, **on})


def smooth(n: int = 4, size: int = 32) -> torch.Tensor:
    """Band-limited test images (well below Nyquist), so resampling errors are the filters' only."""
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5 - size / 2, torch.arange(size) + 0.5 - size / 2, indexing="ij")
    img = torch.cos(2 * math.pi * xx / 16) * torch.sin(2 * math.pi * yy / 32) + 0.3 * torch.cos(2 * math.pi * (xx + yy) / 11)
    return img.view(1, 1, size, size).repeat(n, 1, 1, 1) + torch.arange(n).view(-1, 1, 1, 1) * 0.01


def test_probability_zero_is_exactly_the_identity():
    x = smooth()
    assert AugmentPipe(AugmentSpec(), p=0.0)(x) is x


def test_defaults_respect_laterality_and_orientation():
    spec = AugmentSpec()
    assert spec.xflip is False and spec.rotate90 is False
    assert all(getattr(spec, f) for f in ("xint", "scale", "rotate", "aniso", "xfrac", "brightness", "contrast"))


def test_xflip_flips_or_keeps_each_image():
    x = torch.randn(64, 1, 8, 8)
    y = AugmentPipe(only(xflip=True), p=1.0)(x, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(a, b.flip(2))) for a, b in zip(y, x)]
    kept = [bool(torch.equal(a, b)) for a, b in zip(y, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and 16 < sum(flipped) < 48  # each with chance 1/2


def test_rotate90_gives_quarter_turns_only():
    x = torch.randn(32, 1, 8, 8)
    y = AugmentPipe(only(rotate90=True), p=1.0)(x, torch.Generator().manual_seed(0))
    for a, b in zip(y, x):
        assert any(torch.equal(a, torch.rot90(b, k, dims=(1, 2))) for k in range(4))


def test_integer_translation_is_exact_with_reflected_borders():
    x = torch.randn(16, 1, 16, 16)
    y = AugmentPipe(only(xint=True), p=1.0)(x, torch.Generator().manual_seed(0))
    moved = 0
    for a, b in zip(y, x):
        # Every output row is an input row (the shift is a permutation with mirrored borders), and the
        # interior equals a plain roll by some (dy, dx) within 1/8 of the size.
        found = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(a[:, 2:-2, 2:-2], torch.roll(b, (dy, dx), (1, 2))[:, 2:-2, 2:-2])]
        assert found, "not an integer translation"
        moved += found[0] != (0, 0)
    assert moved > 8


def test_warp_is_accurate_for_known_motions():
    """Identity, a quarter turn and a 3 px shift through the anti-aliased resampler match the exact
    result to within the filters' pass-band ripple (1.5%) away from the borders."""
    x = smooth(1)
    f = AugmentPipe().resample_filter
    inner = (..., slice(6, -6), slice(6, -6))
    assert (warp(x, torch.eye(3)[None], f) - x)[inner].abs().max() < 0.02
    assert (warp(x, _rot(torch.tensor([math.pi / 2])), f) - torch.rot90(x, 1, (2, 3)))[inner].abs().max() < 0.02
    # The matrix maps output positions to input positions: reading 3 px to the right moves content left.
    assert (warp(x, _shift(torch.tensor([3.0]), torch.tensor([0.0])), f) - torch.roll(x, -3, 3))[inner].abs().max() < 0.02


def test_geometric_transforms_keep_the_intensity_range_and_change_the_images():
    x = smooth(8)
    for name in ("scale", "rotate", "aniso", "xfrac"):
        y = AugmentPipe(only(**{name: True}), p=1.0)(x, torch.Generator().manual_seed(1))
        assert y.shape == x.shape and torch.isfinite(y).all(), name
        assert (y - x).abs().amax(dim=(1, 2, 3)).min() > 1e-3, name  # every image moved (p = 1)
        assert y.abs().max() <= x.abs().max() * 1.1, name


def test_brightness_and_contrast_are_affine_per_image():
    x = torch.rand(8, 1, 8, 8) * 2 - 1
    y = AugmentPipe(only(brightness=True, contrast=True), p=1.0)(x, torch.Generator().manual_seed(0))
    for a, b in zip(y, x):
        # a = (b + beta) * k: fit k and beta from two pixels, check all of them.
        flat_a, flat_b = a.flatten(), b.flatten()
        k = (flat_a[0] - flat_a[1]) / (flat_b[0] - flat_b[1])
        beta = flat_a[0] / k - flat_b[0]
        torch.testing.assert_close(flat_a, (flat_b + beta) * k, rtol=1e-4, atol=1e-5)


def test_gradients_and_second_derivatives_flow_through_every_transform():
    x = smooth(6).requires_grad_(True)
    y = AugmentPipe(AugmentSpec(rotate90=True, xflip=True), p=0.8)(x, torch.Generator().manual_seed(2))
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    g.square().sum().backward()  # what R1 does through the augmentation
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_controller_raises_p_when_d_overfits_and_lowers_it_otherwise():
    pipe = AugmentPipe(p=0.0)
    ada = AdaController(pipe, target=0.6, interval=4, speed_kimg=500)
    step = 32 * 4 / 500_000  # batch * interval / (speed_kimg * 1000)
    for i in range(8):
        ada.observe(torch.ones(32, 1))  # D confident on every real: r_t = 1 > 0.6
        ada.step(32)
    assert pipe.p == pytest.approx(2 * step) and ada.last_rt == 1.0
    for _ in range(12):
        ada.observe(-torch.ones(32, 1))
        ada.step(32)
    assert pipe.p == 0.0  # never below 0
    pipe.set_probability(1.0)
    for _ in range(4):
        ada.observe(torch.ones(32, 1))
        ada.step(32)
    assert pipe.p == 1.0  # never above 1


def test_controller_state_round_trips_mid_interval():
    pipe = AugmentPipe(p=0.25)
    ada = AdaController(pipe)
    for _ in range(6):
        ada.observe(torch.tensor([[1.0], [-1.0], [1.0]]))
        ada.step(8)
    state = ada.state_dict()
    other_pipe = AugmentPipe(p=0.0)
    other = AdaController(other_pipe)
    other.load_state_dict(state)
    assert other_pipe.p == pipe.p and other.state_dict() == state
    for a in (ada, other):
        a.observe(torch.ones(3, 1))
        a.step(8)
        a.observe(torch.ones(3, 1))
        a.step(8)
    assert other_pipe.p == pipe.p


def test_bad_settings_are_refused_with_the_setting_named():
    with pytest.raises(ValueError, match="unknown augmentation setting.*hue"):
        AugmentSpec.from_dict({"hue": True})
    with pytest.raises(ValueError, match="scale_std"):
        AugmentSpec(scale_std=-1.0)
    with pytest.raises(ValueError, match=r"probability must be in \[0, 1\]"):
        AugmentPipe(p=1.5)
    with pytest.raises(ValueError, match="target"):
        AdaController(AugmentPipe(), target=1.2)
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        AugmentPipe(p=0.5)(torch.zeros(8, 8))
    with pytest.raises(ValueError, match="too small"):
        warp(torch.zeros(1, 1, 4, 4), torch.eye(3)[None], AugmentPipe().resample_filter)
