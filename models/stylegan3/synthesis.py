"""The alias-free synthesis network (Karras et al. 2021, arXiv 2106.12423, §3-4 and Appendix F).

The network is a chain of band-limited signals. Entry 0 is a grid of Fourier features; entries
1..N are the outputs of N modulated-convolution layers, each followed by a filtered leaky ReLU; the
last layer is ToRGB. The cutoff f_c of entry i grows geometrically from ``first_cutoff`` to s/2 of the
output (reached ``num_critical`` layers before the end, which are then critically sampled), the
minimum stop band f_t from ``first_stopband`` to f_c * ``last_stopband_rel``; the sampling rate is the
smallest power of two at least 2 f_t (at most the output resolution) and the transition half-width
f_h = max(f_t, s/2) - f_c (paper §4, "Flexible layer specifications", and Figure 4c). Every map carries
``margin`` extra samples on each side, cropped away by the last layers. Config T uses 3x3 convolutions;
config R uses 1x1 convolutions, radially symmetric down-sampling filters and twice the channels (§3.3).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.stylegan3.filters import ResamplingPlan, lowpass_filter
from models.stylegan3.layers import FullyConnected, rowwise_linear
from models.stylegan3.memory import recompute_in_chunks
from models.stylegan3.speed import SpeedOptions

CONFIGS = ("t", "r")


@dataclass(frozen=True)
class Entry:
    """One signal in the chain: cutoff, stop band, sampling rate and half-width in cycles per image
    width; ``size`` is samples per axis including margins."""

    cutoff: float
    stopband: float
    rate: int
    half_width: float
    size: int
    channels: int


def schedule(
    resolution: int,
    channels: int,
    channel_base: int,
    channel_max: int,
    num_layers: int = 14,
    num_critical: int = 2,
    first_cutoff: float = 2.0,
    first_stopband: float = 2**2.1,
    last_stopband_rel: float = 2**0.3,
    margin: int = 10,
) -> list[Entry]:
    """The ``num_layers + 1`` entries of the synthesis chain (the table in /work/shared/STYLEGAN3.md for
    256 px). Channel counts fall inversely with the cutoff: min(channel_base / (2 f_c), channel_max);
    the last entry has the image's channels."""
    last_cutoff = resolution / 2
    last_stopband = last_cutoff * last_stopband_rel
    steps = max(num_layers - num_critical, 1)
    out = []
    for i in range(num_layers + 1):
        e = min(i / steps, 1.0)
        cutoff = first_cutoff * (last_cutoff / first_cutoff) ** e
        stopband = first_stopband * (last_stopband / first_stopband) ** e
        rate = int(2 ** math.ceil(math.log2(min(stopband * 2, resolution))))
        half_width = max(stopband, rate / 2) - cutoff
        size = rate + 2 * margin if i < num_layers - 1 else resolution
        ch = channels if i == num_layers else int(np.rint(min(channel_base / 2 / cutoff, channel_max)))
        out.append(Entry(cutoff, stopband, rate, half_width, size, max(ch, 1)))
    return out


def content_transform(translate: tuple[float, float] = (0.0, 0.0), rotate_deg: float = 0.0) -> torch.Tensor:
    """The 3x3 input-coordinate transform that moves the generated content by ``translate`` (in image
    widths, x right, y down) and rotates it by ``rotate_deg`` about the centre (paper §3.1: an
    equivariant generator's output then moves the same way). It is the inverse of the content motion,
    because it maps output positions to where the input signal is read."""
    a = math.radians(rotate_deg)
    c, s = math.cos(a), math.sin(a)
    inv_rot = torch.tensor([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
    inv_shift = torch.tensor([[1.0, 0.0, -translate[0]], [0.0, 1.0, -translate[1]], [0.0, 0.0, 1.0]])
    return inv_rot @ inv_shift


def learned_input_transform(t: torch.Tensor) -> torch.Tensor:
    """The (N, 3, 3) inverse transform of the input grid from the affine output t = (r_c, r_s, t_x, t_y).

    The whole vector is divided by the norm of (r_c, r_s), so the rotation part is a pure rotation and
    the translation is measured in the same units; the grid is translated by -t' first and rotated by
    (r'_c, r'_s) after, i.e. M = R @ T and the translation column is R (-t'_x, -t'_y) (paper Appendix F;
    NVlabs' SynthesisInput composes it the same way). At initialization t = (1, 0, 0, 0): the identity.
    """
    t = t / t[:, :2].norm(dim=1, keepdim=True).clamp_min(1e-8)
    c, s, tx, ty = t.unbind(1)
    zero, one = torch.zeros_like(c), torch.ones_like(c)
    rotate = torch.stack([c, -s, zero, s, c, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    translate = torch.stack([one, zero, -tx, zero, one, -ty, zero, zero, one], dim=1).view(-1, 3, 3)
    return rotate @ translate


class SynthesisInput(nn.Module):
    """Fourier features (paper §3.1 and Appendix F): ``channels`` sinusoids whose frequencies are drawn
    uniformly in the disc of radius ``bandwidth`` with uniform random phases, sampled on the centred
    grid of ``size`` samples at ``rate``; a learned affine of w (initialized to the identity) rotates
    and translates the sampling grid (:func:`learned_input_transform`); a learned linear mix of the
    channels follows.

    ``weight`` is stored as (in, out): feature ``o`` of the output is sum_i x_i weight[i, o] / sqrt(C).
    NVlabs' SynthesisInput stores the same matrix as (out, in), so weights from there need
    ``weight.t()`` (see the README's "Loading NVlabs weights" for the other key names)."""

    def __init__(self, w_dim: int, channels: int, size: int, rate: float, bandwidth: float):
        super().__init__()
        self.channels, self.size, self.rate, self.bandwidth = channels, size, float(rate), float(bandwidth)
        radius = bandwidth * torch.rand(channels).sqrt()
        angle = 2 * math.pi * torch.rand(channels)
        self.register_buffer("freqs", torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1))
        self.register_buffer("phases", torch.rand(channels) - 0.5)
        self.weight = nn.Parameter(torch.randn(channels, channels))
        # (cos, sin) of the rotation and (x, y) of the translation; zero weights make it w-independent
        # at initialization, so the start is the identity transform.
        self.affine = FullyConnected(w_dim, 4, weight_init=0.0, bias_init=[1.0, 0.0, 0.0, 0.0])

    def forward(self, w: torch.Tensor, transform: torch.Tensor | None = None) -> torch.Tensor:
        n = w.shape[0]
        m = learned_input_transform(self.affine(w.float()))
        if transform is not None:
            m = m @ transform.to(w.device, torch.float32)
        # A sinusoid of frequency f read at A p + b is a sinusoid of frequency A^T f with phase f.b.
        # The features are computed in float32 whatever the weights' precision: phases need the bits.
        base_freqs = self.freqs.float().unsqueeze(0)
        freqs = base_freqs @ m[:, :2, :2]  # (N, C, 2)
        phases = self.phases.float().unsqueeze(0) + (base_freqs @ m[:, :2, 2:]).squeeze(2)
        # Frequencies pushed beyond the band by a scaling transform fade out before they would alias.
        amp = (1 - (freqs.norm(dim=2) - self.bandwidth) / (self.rate / 2 - self.bandwidth)).clamp(0, 1)
        pos = (torch.arange(self.size, device=w.device, dtype=torch.float32) + 0.5 - self.size / 2) / self.rate
        gy, gx = torch.meshgrid(pos, pos, indexing="ij")
        grid = torch.stack([gx, gy], dim=-1).view(1, -1, 2)  # (1, size*size, 2)
        x = torch.sin(2 * math.pi * (grid @ freqs.transpose(1, 2) + phases.unsqueeze(1))) * amp.unsqueeze(1)
        x = x.transpose(1, 2).reshape(n, self.channels, self.size, self.size)
        # The channel mix as a 1x1 convolution: unlike a matrix product over (N*H*W) rows, its result
        # for one image does not depend on the batch size.
        mix = (self.weight.float().t() / math.sqrt(self.channels)).to(x.dtype)
        # On the CPU the memory layout a convolution returns can depend on the batch size, and the
        # next convolution's summation order on the layout: fix it, so inference is batch-invariant.
        x = F.conv2d(x, mix.unsqueeze(2).unsqueeze(3))
        return x.contiguous() if x.device.type == "cpu" else x


def _layer_core(
    x: torch.Tensor,
    styles: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    input_gain: torch.Tensor,
    up_filter: torch.Tensor | None,
    down_filter: torch.Tensor | None,
    *,
    demodulate: bool,
    style_gain: float,
    padding: int,
    plan: ResamplingPlan,
    gain: float,
    slope: float,
    clamp: float | None,
    speed: SpeedOptions = SpeedOptions(),
) -> torch.Tensor:
    """Modulated convolution (StyleGAN2, Karras et al. 2020 §2.2, Eq. 1-3) and the filtered leaky ReLU.

    The styles scale the input channels and the demodulation scales the output channels, so the
    convolution itself is an ordinary one shared by the batch. Normalizing the weight per output
    channel and the styles per sample first does not change the result (demodulation cancels it) but
    keeps half-precision values in range; it is per sample, so no image depends on its batch-mates.
    ``speed`` (:class:`SpeedOptions`) picks the convolution's dtype and memory layout and the filter
    chain's implementation.
    """
    if speed.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    elif x.device.type == "cpu":
        x = x.contiguous()  # one memory layout whatever the batch size (see SynthesisInput.forward)
    w = weight.to(x.dtype)
    s = styles.to(x.dtype)
    if demodulate:
        w = w * w.square().mean(dim=[1, 2, 3], keepdim=True).rsqrt()
        s = s * s.square().mean(dim=1, keepdim=True).rsqrt()
        dcoefs = (rowwise_linear(s.square(), w.square().sum(dim=[2, 3])) + 1e-8).rsqrt()  # (N, out)
    else:
        s = s * style_gain
    x = x * (s * input_gain.to(x.dtype)).unsqueeze(2).unsqueeze(3)
    if speed.conv_dtype is not None and speed.conv_dtype != x.dtype:
        x = F.conv2d(x.to(speed.conv_dtype), w.to(speed.conv_dtype), padding=padding).to(x.dtype)
    else:
        x = F.conv2d(x, w, padding=padding)
    if demodulate:
        x = x * dcoefs.unsqueeze(2).unsqueeze(3)
    return speed.filtered_lrelu()(x, bias, up_filter, down_filter, plan, gain=gain, slope=slope, clamp=clamp)


class SynthesisLayer(nn.Module):
    """One layer: style affine, modulated convolution with input normalization by a magnitude EMA
    (paper Appendix F, "magnitude EMA"), filtered leaky ReLU; or, for ToRGB, a 1x1 modulated
    convolution without demodulation, bias and clamp only."""

    def __init__(
        self,
        w_dim: int,
        index: int,
        inp: Entry,
        out: Entry,
        is_torgb: bool,
        is_critical: bool,
        config: str,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,
    ):
        super().__init__()
        self.index, self.is_torgb, self.is_critical = index, is_torgb, is_critical
        self.in_channels, self.out_channels = inp.channels, out.channels
        self.in_size, self.out_size, self.in_rate, self.out_rate = inp.size, out.size, inp.rate, out.rate
        self.magnitude_ema_beta = magnitude_ema_beta
        self.conv_clamp = conv_clamp
        self.kernel = 1 if (is_torgb or config == "r") else 3
        tmp_rate = max(inp.rate, out.rate) * (1 if is_torgb else lrelu_upsampling)
        self.tmp_rate = tmp_rate
        up = int(round(tmp_rate / inp.rate))
        down = int(round(tmp_rate / out.rate))
        up_taps = filter_size * up if up > 1 and not is_torgb else 1
        down_taps = filter_size * down if down > 1 and not is_torgb else 1
        radial = config == "r" and not is_critical
        self.radial = radial
        self.plan = ResamplingPlan.between(inp.size + self.kernel - 1, out.size, up, down, up_taps, down_taps)
        # Filters follow from the constructor arguments, so they are not part of the saved weights.
        fu = lowpass_filter(up_taps, inp.cutoff, inp.half_width * 2, tmp_rate)
        fd = lowpass_filter(down_taps, out.cutoff, out.half_width * 2, tmp_rate, radial=radial)
        self.register_buffer("up_filter", fu, persistent=False)
        self.register_buffer("down_filter", fd, persistent=False)
        self.cutoffs = (inp.cutoff, out.cutoff)
        self.half_widths = (inp.half_width, out.half_width)

        self.affine = FullyConnected(w_dim, self.in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(self.out_channels, self.in_channels, self.kernel, self.kernel))
        self.bias = nn.Parameter(torch.zeros(self.out_channels))
        self.register_buffer("magnitude_ema", torch.ones(()))
        self.speed = SpeedOptions()
        self._core = partial(
            _layer_core,
            demodulate=not is_torgb,
            style_gain=1 / math.sqrt(self.in_channels * self.kernel**2),
            padding=self.kernel - 1,
            plan=self.plan,
            gain=1.0 if is_torgb else math.sqrt(2),
            slope=1.0 if is_torgb else 0.2,
            clamp=conv_clamp,
        )

    def temp_values_per_sample(self) -> int:
        """Values of the largest temporary signal per image (sizes the recomputation slices)."""
        return self.out_channels * self.plan.tmp_size**2

    def forward(self, x: torch.Tensor, w: torch.Tensor, update_emas: bool = False, chunk: int | None = None) -> torch.Tensor:
        if update_emas:
            current = x.detach().float().square().mean()
            self.magnitude_ema.copy_(current.lerp(self.magnitude_ema, self.magnitude_ema_beta))
        input_gain = self.magnitude_ema.rsqrt()
        styles = self.affine(w.float())
        batched = (x, styles)
        shared = (self.weight, self.bias, input_gain, self.up_filter, self.down_filter)
        # The sign-mask backward pass needs no recomputation: slices only bound inference memory.
        if chunk is None or (self.speed.sign_mask_lrelu and torch.is_grad_enabled()):
            return self._core(*batched, *shared, speed=self.speed)
        return recompute_in_chunks(self._core_positional, chunk, batched, shared)

    def _core_positional(self, x, styles, weight, bias, input_gain, fu, fd):
        return self._core(x, styles, weight, bias, input_gain, fu, fd, speed=self.speed)

    def extra_repr(self) -> str:
        return (
            f"in={self.in_channels}x{self.in_size}@{self.in_rate}, out={self.out_channels}x{self.out_size}@{self.out_rate}, "
            f"kernel={self.kernel}, up={self.plan.up}, down={self.plan.down}, radial={self.radial}, torgb={self.is_torgb}"
        )


class SynthesisNetwork(nn.Module):
    """w (one per layer) -> image. ``num_ws = num_layers + 2``: the input, ``num_layers`` layers and ToRGB.

    ``memory_budget`` (values per temporary signal) bounds what one layer holds at once: layers run over
    slices of the batch that fit it, and during training only each layer's input is kept for the
    backward pass (see :mod:`models.stylegan3.memory`); None runs plain autograd on the whole batch.
    """

    def __init__(
        self,
        w_dim: int,
        resolution: int,
        channels: int,
        config: str = "t",
        channel_base: int = 32768,
        channel_max: int = 512,
        num_layers: int = 14,
        num_critical: int = 2,
        first_cutoff: float = 2.0,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin: int = 10,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.999,
        output_scale: float = 0.25,
        memory_budget: int | None = 1 << 27,
    ):
        super().__init__()
        if config not in CONFIGS:
            raise ValueError(f"config must be one of {CONFIGS}, got {config!r}")
        self.entries = schedule(resolution, channels, channel_base, channel_max, num_layers, num_critical, first_cutoff, first_stopband, last_stopband_rel, margin)
        self.num_layers, self.num_ws = num_layers, num_layers + 2
        self.output_scale = output_scale
        self.memory_budget = memory_budget
        first = self.entries[0]
        self.input = SynthesisInput(w_dim, first.channels, first.size, first.rate, first.cutoff)
        self.layers = nn.ModuleList()
        for i in range(num_layers + 1):
            self.layers.append(
                SynthesisLayer(
                    w_dim,
                    i,
                    self.entries[max(i - 1, 0)],
                    self.entries[i],
                    is_torgb=i == num_layers,
                    is_critical=i >= num_layers - num_critical,
                    config=config,
                    filter_size=filter_size,
                    lrelu_upsampling=lrelu_upsampling,
                    conv_clamp=conv_clamp,
                    magnitude_ema_beta=magnitude_ema_beta,
                )
            )

    def set_speed(self, options: SpeedOptions) -> None:
        """Run-time speed options for every layer (:mod:`models.stylegan3.speed`); weights unchanged."""
        for layer in self.layers:
            layer.speed = options

    def forward(self, ws: torch.Tensor, update_emas: bool = False, transform: torch.Tensor | None = None) -> torch.Tensor:
        """(N, num_ws, w_dim) -> (N, channels, resolution, resolution), unclamped (about [-1, 1]).

        ``transform`` (3x3, see :func:`content_transform`) changes where the input Fourier features are
        read, which is how the equivariance metrics move the content (paper §3.1 and Appendix E)."""
        if ws.ndim != 3 or ws.shape[1] != self.num_ws:
            raise ValueError(f"ws must have shape (N, {self.num_ws}, w_dim), got {tuple(ws.shape)}")
        # The layers compute in their weights' precision (float16 or bfloat16 after .half()/.to(dtype)
        # for inference; autocast decides under mixed-precision training).
        x = self.input(ws[:, 0], transform).to(self.layers[0].weight.dtype)
        for layer, w in zip(self.layers, ws[:, 1:].unbind(1)):
            chunk = None
            if self.memory_budget is not None:
                chunk = max(1, self.memory_budget // max(layer.temp_values_per_sample(), 1))
            x = layer(x, w, update_emas=update_emas, chunk=chunk)
        return x * self.output_scale if self.output_scale != 1 else x
