"""Low-pass FIR design, up/down-sampling and the filtered leaky ReLU, in plain PyTorch operations.

Implements Karras et al. 2021, "Alias-Free Generative Adversarial Networks" (arXiv 2106.12423):
§3.1-3.2 (every feature map is a band-limited continuous signal; up-sampling is zero insertion followed
by an ideal low-pass, down-sampling is a low-pass followed by decimation), §3.2 "Non-linear filtering"
(the pointwise non-linearity is applied at a temporarily higher sampling rate, between an up-sampling
and a down-sampling filter) and Appendix C (Kaiser-windowed sinc filters; radially symmetric jinc-based
filters for config R). Everything is built from ``conv2d``/``conv_transpose2d`` with ``groups=C`` so
it runs on any device with nothing to compile.

Signal conventions (used throughout :mod:`models.stylegan3`): a map of ``size`` samples at sampling rate
``s`` holds the continuous signal at the centred positions ``(j + 0.5 - size / 2) / s``; one unit is
the width of the output image. Zero insertion by ``up`` puts input sample ``i`` at index ``up * i``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.signal
import scipy.special
import torch
import torch.nn.functional as F


# ---------------------------------------------------------------------------------------------- design


def kaiser_beta_for(numtaps: int, width: float, fs: float) -> float:
    """Kaiser window shape for ``numtaps`` taps and a transition band ``width`` (Kaiser's formulas,
    as in Oppenheim & Schafer §7.6; ``scipy.signal.kaiser_atten``/``kaiser_beta``)."""
    atten = scipy.signal.kaiser_atten(numtaps, width / (fs / 2))
    return float(scipy.signal.kaiser_beta(atten))


def stopband_ripple(numtaps: int, width: float, fs: float) -> float:
    """The stop-band ripple Kaiser's formula predicts for this design (linear amplitude)."""
    atten = scipy.signal.kaiser_atten(numtaps, width / (fs / 2))
    return float(10 ** (-atten / 20))


def lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False) -> torch.Tensor | None:
    """A low-pass FIR with its -6 dB point at ``cutoff`` and a transition band ``width`` wide.

    Separable (1-D, Kaiser-windowed sinc, paper Appendix C) or, with ``radial``, 2-D radially symmetric:
    the jinc (the circular ideal low-pass ``cutoff * J1(2 pi cutoff r) / r``) under a radial Kaiser
    window, used by config R so that rotations are not favoured along the axes (paper §3.3). Normalized
    to unit DC gain. ``numtaps == 1`` means no filter (returns None).
    """
    if numtaps < 1:
        raise ValueError(f"numtaps must be at least 1, got {numtaps}")
    if numtaps == 1:
        return None
    if not 0 < cutoff < fs / 2:
        raise ValueError(f"cutoff {cutoff} must lie in (0, fs/2 = {fs / 2})")
    if not radial:
        taps = scipy.signal.firwin(numtaps=numtaps, cutoff=cutoff, width=width, fs=fs)
        return torch.as_tensor(taps, dtype=torch.float32)
    pos = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(pos[None, :], pos[:, None])
    safe = np.where(r > 0, r, 1.0)
    jinc = np.where(r > 0, cutoff * scipy.special.j1(2 * np.pi * cutoff * safe) / safe, np.pi * cutoff**2)
    # The window is a function of the radius too; samples beyond the half-length are outside it.
    rho = r / ((numtaps - 1) / 2 / fs)
    beta = kaiser_beta_for(numtaps, width, fs)
    window = np.where(rho <= 1, np.i0(beta * np.sqrt(np.clip(1 - rho**2, 0, None))) / np.i0(beta), 0.0)
    taps = jinc * window
    return torch.as_tensor(taps / taps.sum(), dtype=torch.float32)


def frequency_response(taps: torch.Tensor, fs: float, n: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Amplitude response of a (1-D or radial 2-D) filter along the x axis: (frequencies, |H|).

    For a 2-D filter this is the response along f_y = 0, which for a radially symmetric filter is
    the radial profile."""
    t = taps.detach().double().cpu().numpy()
    if t.ndim == 2:
        t = t.sum(axis=0)  # the f_y = 0 slice of the 2-D transform
    h = np.abs(np.fft.rfft(t, n))
    return np.fft.rfftfreq(n, d=1 / fs), h


# ------------------------------------------------------------------------------------------- resampling


def _depthwise(f: torch.Tensor, channels: int, axis: str, dtype: torch.dtype) -> torch.Tensor:
    k = f.to(dtype)
    if k.ndim == 1:
        k = k.view(1, 1, 1, -1) if axis == "x" else k.view(1, 1, -1, 1)
    else:
        k = k.view(1, 1, *k.shape)
    return k.expand(channels, 1, *k.shape[2:])


def upsample2d(x: torch.Tensor, f: torch.Tensor | None, up: int, pad: tuple[int, int]) -> torch.Tensor:
    """Zero insertion by ``up``, ``pad`` zeros before/after (negative crops), then correlation with ``f``.

    ``f`` is a 1-D (separable) or 2-D filter with unit DC gain; the ``up``-fold gain per axis that zero
    insertion loses is restored here. Implemented as a transposed depthwise convolution, which skips the
    inserted zeros; the output length is ``L * up + pad0 + pad1 - len(f) + 1`` per axis.
    """
    n, c, h, w = x.shape
    p0, p1 = pad
    if f is None:
        if up != 1:
            raise ValueError("up-sampling needs a filter")
        return F.pad(x, (p0, p1, p0, p1))
    k = f.shape[-1]
    out_len = lambda length: length * up + p0 + p1 - k + 1  # noqa: E731
    # conv_transpose2d computes t[m] = sum_i x[i] g[m - up*i] over the full length (L-1)*up + k; with
    # g the flipped filter, the wanted output is t[m + k - 1 - p0] (the zero-insertion convention above).
    start = k - 1 - p0
    if f.ndim == 1:
        g = (f * up).flip(0)
        y = F.conv_transpose2d(x, _depthwise(g, c, "x", x.dtype), stride=(1, up), groups=c)
        y = _crop_or_pad(y, start, out_len(w), dim=3)
        y = F.conv_transpose2d(y, _depthwise(g, c, "y", x.dtype), stride=(up, 1), groups=c)
        return _crop_or_pad(y, start, out_len(h), dim=2)
    g = (f * up * up).flip(0, 1)
    y = F.conv_transpose2d(x, _depthwise(g, c, "2d", x.dtype), stride=up, groups=c)
    y = _crop_or_pad(y, start, out_len(w), dim=3)
    return _crop_or_pad(y, start, out_len(h), dim=2)


def _crop_or_pad(y: torch.Tensor, start: int, length: int, dim: int) -> torch.Tensor:
    """y[start : start + length] along ``dim``, with zeros where that range leaves the tensor."""
    before = -start
    after = length - (y.shape[dim] - start)
    pads = [0, 0, 0, 0]
    if dim == 3:
        pads[0:2] = [before, after]
    else:
        pads[2:4] = [before, after]
    return F.pad(y, pads) if any(pads) else y


def downsample2d(x: torch.Tensor, f: torch.Tensor | None, down: int, pad: tuple[int, int] = (0, 0), gain: float = 1.0) -> torch.Tensor:
    """Correlation with the low-pass ``f`` (1-D separable or 2-D) times ``gain``, and decimation by
    ``down``, computing only the kept samples (a strided depthwise convolution). Output length per
    axis is ``(L + pad0 + pad1 - len(f)) // down + 1``."""
    c = x.shape[1]
    if any(pad):
        x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    if f is None:
        x = x[:, :, ::down, ::down] if down > 1 else x
        return x * gain if gain != 1 else x
    if f.ndim == 1:
        x = F.conv2d(x, _depthwise(f * gain, c, "x", x.dtype), stride=(1, down), groups=c)
        return F.conv2d(x, _depthwise(f, c, "y", x.dtype), stride=(down, 1), groups=c)
    return F.conv2d(x, _depthwise(f * gain, c, "2d", x.dtype), stride=down, groups=c)


def filter2d(x: torch.Tensor, f: torch.Tensor | None) -> torch.Tensor:
    """Same-size low-pass filtering (zero padding) with a 1-D separable or 2-D filter of odd length."""
    if f is None:
        return x
    k = f.shape[-1]
    return downsample2d(x, f, 1, pad=((k - 1) // 2, k // 2))


# ------------------------------------------------------------------------------ filtered leaky ReLU


@dataclass(frozen=True)
class ResamplingPlan:
    """Geometry of one filtered non-linearity (paper §3.2, Figure 4): the input of ``in_size`` samples
    is up-sampled by ``up`` with ``pad`` padding, passed through the leaky ReLU, then low-passed and
    decimated by ``down`` to ``out_size`` samples. ``pad`` is chosen so that the continuous positions
    of input and output samples line up (see the module docstring)."""

    in_size: int
    out_size: int
    up: int
    down: int
    up_taps: int
    down_taps: int
    pad: tuple[int, int]

    @property
    def tmp_size(self) -> int:
        """Samples per axis at the temporary (high) rate, before decimation."""
        return self.in_size * self.up + self.pad[0] + self.pad[1] - self.up_taps + 1

    @classmethod
    def between(cls, in_size: int, out_size: int, up: int, down: int, up_taps: int, down_taps: int) -> "ResamplingPlan":
        # Output sample n reads the high-rate signal at index n*down + (down_taps-1)/2, which must be the
        # position of output sample n; input sample i sits at index up*i + pad0 - (up_taps-1)/2. Equating
        # the continuous positions gives 2*pad0 = (up_taps+down_taps-2) + up*(1-in) + down*(out-1), and
        # the output length gives pad0 + pad1. An odd total means a half-sample offset that no integer
        # padding can remove; it is rounded up (never happens in the schedules of synthesis.py).
        total = (out_size - 1) * down + down_taps + up_taps - 1 - in_size * up
        pad0 = (total + up) // 2
        return cls(in_size, out_size, up, down, up_taps, down_taps, (pad0, total - pad0))


def filtered_lrelu_reference(
    x: torch.Tensor,
    bias: torch.Tensor | None,
    up_filter: torch.Tensor | None,
    down_filter: torch.Tensor | None,
    plan: ResamplingPlan,
    gain: float = math.sqrt(2),
    slope: float = 0.2,
    clamp: float | None = None,
) -> torch.Tensor:
    """Bias, up-sample, leaky ReLU (``slope``, times ``gain``, clamped to +-``clamp``), low-pass and
    decimate. Plain autograd all the way: every intermediate is kept for the backward pass."""
    if bias is not None:
        x = x + bias.to(x.dtype).view(1, -1, 1, 1)
    x = upsample2d(x, up_filter, plan.up, plan.pad)
    if slope != 1:
        x = F.leaky_relu(x, slope)
    # clamp(gain * y, c) = gain * clamp(y, c / gain), and the gain rides on the (linear) down filter:
    # two passes over the largest tensor of the layer saved.
    if clamp is not None:
        x = x.clamp(-clamp / gain, clamp / gain)
    return downsample2d(x, down_filter, plan.down, gain=gain)
