"""SSIM and PSNR against scikit-image on the same images; MS-SSIM properties; the nearest-real-image
definition of SSIM/PSNR for generated images; pairwise MS-SSIM diversity."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from models.metrics.diversity import pairwise_ms_ssim, random_pairs
from models.metrics.fidelity import matched_fidelity, nearest_by_mse
from models.metrics.ssim import PSNR_CAP_DB, ms_ssim, ms_ssim_scales, psnr, ssim
from service.data.phantom import phantom_image


def _pairs(n=3, size=48, seed=0):
    rs = np.random.RandomState(seed)
    a = np.stack([phantom_image(size, size, bits_stored=8, seed=s, noise=0.02)[0] for s in range(n)])
    b = np.clip(a.astype(np.float64) + rs.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
    return a, b


def _skimage_ssim(x, y, data_range):
    return structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=data_range)


def test_ssim_equals_scikit_image_uint8():
    a, b = _pairs()
    ours = ssim(a.astype(np.float64), b.astype(np.float64), data_range=255).numpy()
    ref = [_skimage_ssim(x, y, 255) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_ssim_equals_scikit_image_float_non_square():
    rs = np.random.RandomState(1)
    a = rs.uniform(0, 1, (2, 40, 57))
    b = np.clip(a + rs.normal(0, 0.1, a.shape), 0, 1)
    np.testing.assert_allclose(ssim(a, b, 1.0).numpy(), [_skimage_ssim(x, y, 1.0) for x, y in zip(a, b)], rtol=1e-10)
    assert ssim(a[0], a[0], 1.0).item() == pytest.approx(1.0)


def test_psnr_equals_scikit_image():
    a, b = _pairs(seed=2)
    ours = psnr(a.astype(np.float64), b.astype(np.float64), data_range=255).numpy()
    ref = [peak_signal_noise_ratio(x, y, data_range=255) for x, y in zip(a, b)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12)
    assert psnr(a[:1], a[:1], 255).item() == PSNR_CAP_DB  # identical: capped, not infinite


def test_ms_ssim_scales_and_properties():
    assert [ms_ssim_scales(s) for s in (16, 32, 64, 176, 256)] == [1, 2, 3, 5, 5]
    a, b = _pairs(n=2, size=64)
    same = ms_ssim(a / 255.0, a / 255.0, 1.0).numpy()
    np.testing.assert_allclose(same, 1.0, rtol=1e-12)
    noisy = ms_ssim(a / 255.0, b / 255.0, 1.0).numpy()
    assert ((noisy > 0) & (noisy < 1)).all()
    # One scale is plain SSIM.
    np.testing.assert_allclose(ms_ssim(a / 255.0, b / 255.0, 1.0, scales=1).numpy(), ssim(a / 255.0, b / 255.0, 1.0).numpy())
    with pytest.raises(ValueError, match="too small for 4 MS-SSIM scales"):
        ms_ssim(a / 255.0, b / 255.0, 1.0, scales=4)


def test_similarity_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        ssim(np.zeros((1, 20, 20)), np.zeros((1, 20, 21)), 1.0)
    with pytest.raises(ValueError, match="at least 11 x 11"):
        ssim(np.zeros((1, 8, 8)), np.zeros((1, 8, 8)), 1.0)
    with pytest.raises(ValueError, match="grayscale"):
        psnr(np.zeros((1, 3, 8, 8)), np.zeros((1, 3, 8, 8)), 1.0)


def test_matched_fidelity_uses_the_nearest_real_image():
    real, _ = _pairs(n=6, size=32, seed=3)
    rs = np.random.RandomState(4)
    # Generated images: noisy versions of real images 4, 1, 1 (in that order).
    fake = np.clip(real[[4, 1, 1]].astype(np.float64) + rs.normal(0, 6, (3, 32, 32)), 0, 255).astype(np.uint8)
    assert nearest_by_mse(fake, real, chunk=2).tolist() == [4, 1, 1]
    m = matched_fidelity(fake, real, chunk=2)
    assert m.nearest.tolist() == [4, 1, 1]
    f, r = fake / 255.0, real[[4, 1, 1]] / 255.0
    np.testing.assert_allclose(m.psnr, [peak_signal_noise_ratio(x, y, data_range=1.0) for x, y in zip(r, f)], rtol=1e-6)
    np.testing.assert_allclose(m.ssim, [_skimage_ssim(x, y, 1.0) for x, y in zip(f, r)], rtol=1e-6)
    s = m.summary()
    assert s["ssim"] == pytest.approx(m.ssim.mean()) and s["psnr"] == pytest.approx(m.psnr.mean())
    with pytest.raises(ValueError, match="resize one set first"):
        matched_fidelity(fake, np.zeros((2, 16, 16), np.uint8))


def test_diversity_separates_a_collapsed_set_from_a_varied_one():
    varied = np.stack([phantom_image(64, 64, bits_stored=8, seed=s, noise=0.05)[0] for s in range(12)])
    rs = np.random.RandomState(0)
    one = phantom_image(64, 64, bits_stored=8, seed=3, noise=0.0)[0].astype(np.float64)
    collapsed = np.clip(one + rs.normal(0, 2, (12, 64, 64)), 0, 255).astype(np.uint8)
    d_varied = pairwise_ms_ssim(varied, pairs=40)
    d_collapsed = pairwise_ms_ssim(collapsed, pairs=40)
    assert d_collapsed["mean"] > 0.9 > d_varied["mean"]
    assert d_varied["pairs"] == 40
    assert pairwise_ms_ssim(varied, pairs=40) == d_varied  # deterministic


def test_random_pairs():
    p = random_pairs(10, 30, seed=1)
    assert p.shape == (30, 2) and (p[:, 0] != p[:, 1]).all() and p.max() < 10
    assert random_pairs(4, 100).shape == (6, 2)  # all pairs once when fewer exist
    with pytest.raises(ValueError, match="at least 2"):
        random_pairs(1, 5)


def test_cpu_filter_equals_the_convolution_used_on_gpus():
    import torch

    from models.metrics import ssim as S

    x = torch.rand(2, 1, 30, 47, dtype=torch.float64)
    g = S._gaussian(torch.device("cpu"))
    cpu, conv = S._filter(x.numpy(), g), S._filter_conv(x, g)
    assert cpu.shape == tuple(conv.shape) == tuple(x.shape)
    torch.testing.assert_close(torch.from_numpy(S._valid(cpu)), S._valid(conv), rtol=0, atol=1e-14)
