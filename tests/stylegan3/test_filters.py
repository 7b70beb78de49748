"""The FIR filters have the designed frequency response, and the resampling geometry keeps the
continuous positions of samples aligned (paper §3.2 and Appendix C)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.stylegan3.filters import (
    ResamplingPlan,
    downsample2d,
    filtered_lrelu_reference,
    frequency_response,
    lowpass_filter,
    stopband_ripple,
    upsample2d,
)
from tests.stylegan3.conftest import tiny_generator


def _layers(config: str, resolution: int = 256):
    return tiny_generator(resolution, config).synthesis.layers[:-1]  # ToRGB has no filters


def _filters(config: str):
    for layer in _layers(config):
        yield layer, "up", layer.up_filter, layer.cutoffs[0], layer.half_widths[0]
        yield layer, "down", layer.down_filter, layer.cutoffs[1], layer.half_widths[1]


@pytest.mark.parametrize("config", ["t", "r"])
def test_every_filter_of_the_256px_schedule_has_its_designed_response(config):
    """Unit gain at DC; the -6 dB point at the cutoff f_c when the transition band lies above zero
    (f_h <= f_c; wider bands push it up, as designed); a flat pass band below f_c - f_h; and beyond the
    stop band edge max(f_t, s/2) = f_c + f_h, attenuation within 2x of Kaiser's formula (+1e-3): that
    is what keeps aliases out (for the critically sampled layers it is about -27 dB, as in the paper)."""
    checked = 0
    for layer, which, f, fc, fh in _filters(config):
        fs = layer.tmp_rate
        freqs, h = frequency_response(f, fs, n=8192)
        where = f"{config} layer {layer.index} {which}"
        assert abs(h[0] - 1) < 1e-5, where
        at_cutoff = float(np.interp(fc, freqs, h))
        if fh <= fc:
            assert 0.4 <= at_cutoff <= 0.6, f"{where}: |H(f_c)| = {at_cutoff:.3f}"
        else:
            assert 0.4 <= at_cutoff <= 0.8, f"{where}: |H(f_c)| = {at_cutoff:.3f}"
        ripple = stopband_ripple(f.shape[-1], 2 * fh, fs)
        stop = h[freqs >= fc + fh - 1e-9]
        assert stop.max() <= 2 * ripple + 1e-3, f"{where}: stop band {stop.max():.4f} > 2 x {ripple:.4f}"
        if fc - fh > 0:
            assert h[freqs <= fc - fh].min() >= 1 - 2 * ripple, where
        checked += 1
    assert checked == 28


def test_the_schedule_is_the_papers_for_256px():
    """Sampling rates, sizes and channels as in the table of STYLEGAN3.md (paper Figure 4c)."""
    from models.stylegan3.synthesis import schedule

    entries = schedule(256, 1, 32768, 512)
    assert [e.rate for e in entries] == [16, 16, 16, 32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256]
    assert [e.size for e in entries] == [36, 36, 36, 52, 52, 84, 84, 148, 148, 148, 276, 276, 276, 256, 256]
    assert [e.channels for e in entries] == [512] * 9 + [362, 256, 181, 128, 128, 1]
    assert [round(e.cutoff, 1) for e in entries] == [2.0, 2.8, 4.0, 5.7, 8.0, 11.3, 16.0, 22.6, 32.0, 45.3, 64.0, 90.5, 128.0, 128.0, 128.0]
    assert [round(e.stopband, 1) for e in entries][:3] == [4.3, 5.8, 7.8] and round(entries[-1].stopband, 1) == 157.6
    assert [round(e.half_width, 1) for e in entries][:5] == [6.0, 5.2, 4.0, 10.3, 8.0]


def test_config_r_down_filters_are_radially_symmetric():
    """The jinc-based filters respond the same along an axis and along the diagonal; a separable
    filter of the same design does not (paper §3.3: that is what lets R rotate features freely)."""
    fs, fc, width, taps = 128.0, 16.0, 32.0, 12
    radial = lowpass_filter(taps, fc, width, fs, radial=True)
    sep_1d = lowpass_filter(taps, fc, width, fs)
    separable = sep_1d[:, None] * sep_1d[None, :]
    n = 512

    def axis_vs_diagonal(f2d):
        spec = np.abs(np.fft.fft2(f2d.double().numpy(), s=(n, n)))
        worst = 0.0
        for r in np.linspace(2, 40, 20):  # cycles per unit, through pass and transition band
            k_axis = int(round(r / fs * n))
            k_diag = int(round(r / math.sqrt(2) / fs * n))
            worst = max(worst, abs(spec[0, k_axis] - spec[k_diag, k_diag]))
        return worst

    assert radial.shape == (taps, taps) and abs(float(radial.sum()) - 1) < 1e-6
    assert axis_vs_diagonal(radial) < 0.06
    assert axis_vs_diagonal(separable) > 2 * axis_vs_diagonal(radial)


def _zero_insert_reference(x, f, up, pad):
    """Up-sampling the slow, obvious way: insert zeros, pad, correlate with the separable filter."""
    n, c, h, w = x.shape
    z = torch.zeros(n, c, h * up, w * up, dtype=x.dtype)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, (pad[0], pad[1], pad[0], pad[1]))
    k = (f * up).view(1, 1, 1, -1).expand(c, 1, 1, -1)
    z = F.conv2d(z, k, groups=c)
    return F.conv2d(z, k.transpose(2, 3), groups=c)


@pytest.mark.parametrize("up,pad", [(2, (6, 5)), (4, (13, 10)), (2, (-3, 8)), (4, (0, 0))])
def test_transposed_upsampling_equals_zero_insertion(up, pad):
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    f = lowpass_filter(6 * up, 1.0, 1.0, 2.0 * up).double()
    ours = upsample2d(x, f, up, pad)
    ref = _zero_insert_reference(x, f, up, pad)
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)


def test_downsampling_is_filter_then_decimate():
    x = torch.randn(2, 3, 30, 30, dtype=torch.float64)
    f = lowpass_filter(12, 4.0, 4.0, 32.0).double()
    full = downsample2d(x, f, 1)
    torch.testing.assert_close(downsample2d(x, f, 2), full[:, :, ::2, ::2], rtol=0, atol=1e-12)
    torch.testing.assert_close(downsample2d(x, f, 2, gain=math.sqrt(2)), full[:, :, ::2, ::2] * math.sqrt(2), rtol=0, atol=1e-12)


@pytest.mark.parametrize("config", ["t", "r"])
def test_resampling_keeps_continuous_positions_aligned(config):
    """A band-limited sinusoid through each layer's up- and down-sampling (identity non-linearity)
    comes out as the same sinusoid at the output sample positions, scaled only by the filters' gain at
    its frequency (measured: below 3e-4, the rest is aliasing the critically sampled layers allow;
    moving the padding by one sample gives errors of 0.16 to 0.3)."""
    for layer in _layers(config, 64):
        plan = layer.plan
        f = 0.5 * layer.cutoffs[0]  # well inside both pass bands
        phase = 0.3
        pos_in = (torch.arange(plan.in_size, dtype=torch.float64) + 0.5 - plan.in_size / 2) / layer.in_rate
        pos_out = (torch.arange(plan.out_size, dtype=torch.float64) + 0.5 - plan.out_size / 2) / layer.out_rate
        x = torch.cos(2 * math.pi * f * pos_in + phase).view(1, 1, 1, -1).expand(1, 1, plan.in_size, plan.in_size)
        fu, fd = layer.up_filter.double(), layer.down_filter.double()
        y = filtered_lrelu_reference(x.contiguous(), None, fu, fd, plan, gain=1.0, slope=1.0, clamp=None)
        assert y.shape[-1] == plan.out_size
        # Gain of the chain at f: product of the filters' responses (the 2-D radial one along x).
        freqs_u, hu = frequency_response(fu, layer.tmp_rate, 1 << 14)
        freqs_d, hd = frequency_response(fd, layer.tmp_rate, 1 << 14)
        gain = np.interp(f, freqs_u, hu) * np.interp(f, freqs_d, hd)
        expected = gain * torch.cos(2 * math.pi * f * pos_out + phase)
        interior = slice(plan.out_size // 4, plan.out_size - plan.out_size // 4)
        row = y[0, 0, plan.out_size // 2, interior]
        err = (row - expected[interior]).abs().max().item()
        assert err < 1e-3, f"{config} layer {layer.index}: {err:.2e}"


def test_plan_rejects_nothing_it_can_align_and_rounds_half_samples_up():
    p = ResamplingPlan.between(38, 36, 2, 2, 12, 12)
    assert p.pad == (9, 8) and p.tmp_size == 2 * 36 + 10  # 36 outputs at stride 2 over 12 taps
    assert ResamplingPlan.between(256, 256, 1, 1, 1, 1).pad == (0, 0)


def test_filter_design_rejects_impossible_cutoffs():
    with pytest.raises(ValueError, match="cutoff"):
        lowpass_filter(12, 20.0, 4.0, 32.0)
    with pytest.raises(ValueError, match="numtaps"):
        lowpass_filter(0, 2.0, 4.0, 32.0)
    assert lowpass_filter(1, 2.0, 4.0, 32.0) is None
