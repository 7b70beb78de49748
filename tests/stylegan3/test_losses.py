"""Loss terms, lazy-regularization optimizer settings, config R's input blur, G_ema schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.stylegan3.losses import StyleGAN3Loss, blur, blur_kernel, blur_sigma, lazy_adam_params
from models.stylegan3.recipe import StyleGAN3TRecipe
from tests.stylegan3.conftest import Z, tiny_discriminator, tiny_generator


def test_r1_is_half_gamma_times_the_squared_gradient_norm_on_reals():
    D = tiny_discriminator(32)
    loss = StyleGAN3Loss(G=None, D=D, r1_gamma=3.0)
    reals = torch.rand(4, 1, 32, 32) * 2 - 1
    value, penalty = loss.r1_loss(reals, cur_nimg=0)
    x = reals.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(D(x).sum(), x)
    expected = g.square().sum(dim=[1, 2, 3])
    torch.testing.assert_close(penalty, expected)
    torch.testing.assert_close(value, 1.5 * expected.mean())
    value.backward()  # second derivative through D
    assert all(p.grad is not None for p in D.parameters())


def test_non_saturating_losses():
    G, D = tiny_generator(32), tiny_discriminator(32)
    loss = StyleGAN3Loss(G, D)
    z = torch.randn(4, Z)
    torch.manual_seed(1)
    lg = loss.generator_loss(z, 0)
    with torch.no_grad():
        expected = F.softplus(-D(G(z, clamp=False))).mean()
    torch.testing.assert_close(lg, expected)
    reals = torch.zeros(4, 1, 32, 32)
    ld, logits = loss.discriminator_loss(reals, z, 0)
    with torch.no_grad():
        exp_d = F.softplus(D(G(z, clamp=False))).mean() + F.softplus(-D(reals)).mean()
    torch.testing.assert_close(ld, exp_d, rtol=1e-5, atol=1e-6)
    assert logits.shape == (4, 1) and not logits.requires_grad


def test_lazy_regularization_scales_lr_and_betas():
    lr, betas = lazy_adam_params(0.002, (0.0, 0.99), 16)
    assert lr == pytest.approx(0.002 * 16 / 17) and betas == (0.0, pytest.approx(0.99 ** (16 / 17)))
    assert lazy_adam_params(0.002, (0.0, 0.99), None) == (0.002, (0.0, 0.99))


def test_config_r_blur_fades_linearly_and_keeps_the_mean():
    assert blur_sigma(0, 10.0, 200.0) == 10.0
    assert blur_sigma(100_000, 10.0, 200.0) == pytest.approx(5.0)
    assert blur_sigma(250_000, 10.0, 200.0) == 0.0
    assert blur_sigma(0, 0.0, 200.0) == 0.0
    x = torch.rand(2, 1, 64, 64)
    y = blur(x, 2.0)
    assert y.shape == x.shape and y[..., 16:-16, 16:-16].std() < x[..., 16:-16, 16:-16].std() / 2
    torch.testing.assert_close(y[..., 16:-16, 16:-16].mean(), x[..., 16:-16, 16:-16].mean(), atol=0.02, rtol=0)
    assert blur(x, 0.0) is x


def test_config_r_blur_kernel_is_nvlabs_exp2_kernel():
    """exp2(-(x / sigma)^2) over |x| <= floor(3 sigma). sigma = 1: taps 1/512, 1/16, 1/2, 1, 1/2,
    1/16, 1/512, which sum to 2.12890625."""
    f = blur_kernel(1.0).double()
    expected = torch.tensor([1 / 512, 1 / 16, 1 / 2, 1, 1 / 2, 1 / 16, 1 / 512], dtype=torch.float64) / 2.12890625
    torch.testing.assert_close(f, expected, rtol=1e-6, atol=0)
    # sigma = 10: 61 taps, a Gaussian of standard deviation 10 / sqrt(2 ln 2) = 8.4932 px (the tails
    # beyond 30 px, 3.5 standard deviations, are cut: the spread is 0.2 % smaller, 8.474).
    f = blur_kernel(10.0).double()
    x = torch.arange(-30, 31, dtype=torch.float64)
    assert f.numel() == 61 and (f * x.square()).sum().sqrt().item() == pytest.approx(8.4932, rel=5e-3)
    assert blur_kernel(0.3) is None  # floor(0.9) = 0: no blur, as in NVlabs


def test_g_ema_half_life_ramps_up_then_holds():
    r = StyleGAN3TRecipe(64)
    assert r.ema_beta(32, 0) == 0.0  # at the start G_ema follows G
    assert r.ema_beta(32, 100_000) == pytest.approx(0.5 ** (32 / 5_000))  # 0.05 * 100k images
    assert r.ema_beta(32, 10_000_000) == pytest.approx(0.5 ** (32 / 10_000))  # 10 kimg at batch 32
    assert r.ema_beta(64, 10_000_000) == pytest.approx(0.5 ** (64 / 20_000))  # scaled with the batch
