"""Adaptive discriminator augmentation (ADA) for grayscale radiographs.

Karras et al. 2020, "Training Generative Adversarial Networks with Limited Data" (NeurIPS 2020):
every image the discriminator sees, real or generated, is augmented with probability ``p`` per
transform (§2: augmentations applied this way with p < ~0.8 do not leak into the generator), and ``p``
is adjusted from the overfitting heuristic r_t = E[sign(D(real))] (§3): every ``interval`` steps,
p += sign(r_t - target) * (batch * interval) / (speed_kimg * 1000), target 0.6, so p can move from 0
to 1 in ``speed_kimg`` thousand images.

The transforms are the paper's "bgc" pipeline (Appendix B) restricted to what means something for a
grayscale radiograph:

- pixel blitting, exact (no resampling): x-flip (off by default: anatomy has laterality and a burned-in
  side marker reads mirrored; ADA keeps flips from leaking only while p stays below about 0.8, which
  small datasets exceed), rotations by 90 degrees (off by default: radiographs are hung in a standard
  orientation), integer translation (reflected borders);
- general geometry, one resampling pass at 2x with a Kaiser low-pass (anti-aliased): isotropic scaling,
  arbitrary rotation (probability 1 - sqrt(1 - p) before and after the anisotropic step, so the
  chance of any rotation is p), anisotropic scaling, fractional translation;
- intensity: brightness and contrast. Hue and saturation are colour operations with no meaning for
  one channel and are not offered. Luma flip is not offered either, but it is not a no-op on one
  channel: NVlabs' pipeline reflects colours through the luma axis (a Householder reflection), which on
  a single channel maps x to -x, i.e. inverts intensity about mid-grey of [-1, 1] -- for a radiograph
  the MONOCHROME1/MONOCHROME2 confusion, a change a discriminator should not be taught to ignore.

Everything is differentiable with respect to the images, including the second derivative that R1
needs. The module depends only on torch and :mod:`models.stylegan3.filters`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.stylegan3.filters import downsample2d, lowpass_filter, upsample2d


@dataclass(frozen=True)
class AugmentSpec:
    """Which transforms run, and their strengths (ADA Appendix B's values)."""

    xflip: bool = False  # anatomy has laterality: opt in with xflip=True
    rotate90: bool = False
    xint: bool = True
    scale: bool = True
    rotate: bool = True
    aniso: bool = True
    xfrac: bool = True
    brightness: bool = True
    contrast: bool = True
    xint_max: float = 0.125  # fraction of the image
    scale_std: float = 0.2  # log2 units
    rotate_max: float = 1.0  # fraction of a half turn either way
    aniso_std: float = 0.2  # log2 units
    xfrac_std: float = 0.125  # fraction of the image
    brightness_std: float = 0.2  # in [-1, 1] image units
    contrast_std: float = 0.5  # log2 units

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in (float, "float") and (not math.isfinite(value) or value < 0):
                raise ValueError(f"augmentation setting {f.name} must be a finite number >= 0, got {value}")

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "AugmentSpec":
        values = dict(values or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown augmentation setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rot(angle: torch.Tensor) -> torch.Tensor:
    c, s = angle.cos(), angle.sin()
    z, o = torch.zeros_like(c), torch.ones_like(c)
    return torch.stack([c, -s, z, s, c, z, z, z, o], dim=1).view(-1, 3, 3)


def _scale(sx: torch.Tensor, sy: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(sx), torch.ones_like(sx)
    return torch.stack([sx, z, z, z, sy, z, z, z, o], dim=1).view(-1, 3, 3)


def _shift(tx: torch.Tensor, ty: torch.Tensor) -> torch.Tensor:
    z, o = torch.zeros_like(tx), torch.ones_like(tx)
    return torch.stack([o, z, tx, z, o, ty, z, z, o], dim=1).view(-1, 3, 3)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror indices into [0, size) (reflection without repeating the edge sample)."""
    period = 2 * (size - 1)
    if period == 0:
        return torch.zeros_like(index)
    index = index.remainder(period)
    return torch.where(index >= size, period - index, index)


def warp(x: torch.Tensor, m: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Resample images through per-image 3x3 matrices ``m`` mapping output positions to input positions
    (pixel units about the image centre, x right, y down). Anti-aliased: reflect-pad for the filter,
    up-sample 2x with the low-pass ``f`` (designed at 2 samples per pixel), sample bilinearly on the 2x
    grid with reflection beyond the borders, low-pass and decimate back."""
    n, c, h, w = x.shape
    f = f.to(x.dtype)
    k = f.shape[0]
    pad = k // 2
    if pad >= min(h, w):
        raise ValueError(f"images of {h}x{w} are too small to resample (at least {pad + 1} pixels per side)")
    sub = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    # Padding (k/2, k/2 - 1) keeps the 2x grid centred on the original one (ResamplingPlan's rule).
    sub = upsample2d(sub, f, 2, (k // 2, k // 2 - 1))
    ph, pw = sub.shape[2], sub.shape[3]
    # affine_grid's normalized coordinates span each image's extent: an output coordinate g is
    # g * w / 2 pixels from the centre; an input position of u pixels is u * 4 / pw in the padded 2x image.
    m = m.to(torch.float32)
    theta = torch.stack(
        [
            torch.stack([m[:, 0, 0] * 2 * w / pw, m[:, 0, 1] * 2 * h / pw, m[:, 0, 2] * 4 / pw], dim=1),
            torch.stack([m[:, 1, 0] * 2 * w / ph, m[:, 1, 1] * 2 * h / ph, m[:, 1, 2] * 4 / ph], dim=1),
        ],
        dim=1,
    )
    grid = F.affine_grid(theta, [n, c, 2 * h, 2 * w], align_corners=False)
    sub = F.grid_sample(sub, grid.to(sub.dtype), mode="bilinear", padding_mode="reflection", align_corners=False)
    return downsample2d(sub, f, 2, pad=(k // 2 - 1, k // 2 - 1))


class AugmentPipe(nn.Module):
    """Applies :class:`AugmentSpec`'s transforms, each with probability ``p``.

    ``p`` is a Python number, not a tensor, so reading it never waits for the GPU; the training recipe
    checkpoints it (through :class:`AdaController`), and every process computes the same value."""

    def __init__(self, spec: AugmentSpec | None = None, p: float = 0.0):
        super().__init__()
        self.spec = spec or AugmentSpec()
        self.p = 0.0
        self.set_probability(p)
        # At twice the pixel rate (fs = 2 samples per pixel): pass up to the original Nyquist frequency.
        self.register_buffer("resample_filter", lowpass_filter(12, 0.5, 0.4, 2.0), persistent=False)

    @property
    def probability(self) -> float:
        return self.p

    def set_probability(self, p: float) -> None:
        p = float(p)
        if not math.isfinite(p) or not 0 <= p <= 1:
            raise ValueError(f"augmentation probability must be in [0, 1], got {p}")
        self.p = p

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if images.ndim != 4:
            raise ValueError(f"images must have shape (N, C, H, W), got {tuple(images.shape)}")
        p = self.p
        if p <= 0 or images.shape[0] == 0:
            return images
        x = self._blit(images, p, generator)
        x = self._geometric(x, p, generator)
        return self._intensity(x, p, generator)

    # The random draws are made on the CPU generator when one is given (reproducible tests), else on
    # the images' device.
    def _rand(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=generator).to(device) if generator is not None else torch.rand(n, device=device)

    def _randn(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return torch.randn(n, generator=generator).to(device) if generator is not None else torch.randn(n, device=device)

    def _fires(self, n: int, p: float, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        return self._rand(n, generator, device) < p

    def _blit(self, x: torch.Tensor, p: float, g: torch.Generator | None) -> torch.Tensor:
        s, (n, _c, h, w), dev = self.spec, x.shape, x.device
        if s.xflip:
            flip = self._fires(n, p, g, dev) & (self._rand(n, g, dev) < 0.5)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if s.rotate90 and h == w:
            k = torch.where(self._fires(n, p, g, dev), (self._rand(n, g, dev) * 4).floor().clamp(max=3), torch.zeros(n, device=dev))
            turned = [x if q == 0 else torch.rot90(x, q, dims=(2, 3)) for q in range(4)]
            x = sum(torch.where((k == q).view(-1, 1, 1, 1), turned[q], torch.zeros_like(x)) for q in range(4))
        if s.xint and s.xint_max > 0:
            fire = self._fires(n, p, g, dev)
            tx = torch.where(fire, ((self._rand(n, g, dev) * 2 - 1) * s.xint_max * w).round(), torch.zeros(n, device=dev)).long()
            ty = torch.where(fire, ((self._rand(n, g, dev) * 2 - 1) * s.xint_max * h).round(), torch.zeros(n, device=dev)).long()
            if bool((tx != 0).any() or (ty != 0).any()):
                rows = _reflect(torch.arange(h, device=dev).view(1, -1) - ty.view(-1, 1), h)  # (n, h)
                cols = _reflect(torch.arange(w, device=dev).view(1, -1) - tx.view(-1, 1), w)  # (n, w)
                batch = torch.arange(n, device=dev).view(-1, 1, 1)
                x = x.permute(0, 2, 3, 1)[batch, rows.unsqueeze(2), cols.unsqueeze(1)].permute(0, 3, 1, 2)
        return x

    def _geometric(self, x: torch.Tensor, p: float, g: torch.Generator | None) -> torch.Tensor:
        s, (n, c, h, w), dev = self.spec, x.shape, x.device
        # The matrix maps output positions to input positions (pixel units about the image centre).
        # Each family's distribution is symmetric under inversion, so sampling the inverse directly
        # gives the same distribution of images as sampling the forward transform.
        m = torch.eye(3, device=dev).repeat(n, 1, 1)
        one = torch.ones(n, device=dev)
        if s.scale and s.scale_std > 0:
            k = torch.where(self._fires(n, p, g, dev), torch.exp2(self._randn(n, g, dev) * s.scale_std), one)
            m = m @ _scale(k, k)
        p_rot = 1 - math.sqrt(max(1 - p, 0.0))
        if s.rotate and s.rotate_max > 0:
            a = torch.where(self._fires(n, p_rot, g, dev), (self._rand(n, g, dev) * 2 - 1) * math.pi * s.rotate_max, 0 * one)
            m = m @ _rot(a)
        if s.aniso and s.aniso_std > 0:
            k = torch.where(self._fires(n, p, g, dev), torch.exp2(self._randn(n, g, dev) * s.aniso_std), one)
            m = m @ _scale(k, 1 / k)
        if s.rotate and s.rotate_max > 0:
            a = torch.where(self._fires(n, p_rot, g, dev), (self._rand(n, g, dev) * 2 - 1) * math.pi * s.rotate_max, 0 * one)
            m = m @ _rot(a)
        if s.xfrac and s.xfrac_std > 0:
            fire = self._fires(n, p, g, dev)
            tx = torch.where(fire, self._randn(n, g, dev) * s.xfrac_std * w, 0 * one)
            ty = torch.where(fire, self._randn(n, g, dev) * s.xfrac_std * h, 0 * one)
            m = m @ _shift(tx, ty)
        moved = (m - torch.eye(3, device=dev)).abs().flatten(1).amax(dim=1) > 1e-7
        if not bool(moved.any()):
            return x
        idx = moved.nonzero().squeeze(1)
        return x.index_copy(0, idx, warp(x[idx], m[idx], self.resample_filter))

    def _intensity(self, x: torch.Tensor, p: float, g: torch.Generator | None) -> torch.Tensor:
        s, n, dev = self.spec, x.shape[0], x.device
        if s.brightness and s.brightness_std > 0:
            b = torch.where(self._fires(n, p, g, dev), self._randn(n, g, dev) * s.brightness_std, torch.zeros(n, device=dev))
            x = x + b.to(x.dtype).view(-1, 1, 1, 1)
        if s.contrast and s.contrast_std > 0:
            k = torch.where(self._fires(n, p, g, dev), torch.exp2(self._randn(n, g, dev) * s.contrast_std), torch.ones(n, device=dev))
            x = x * k.to(x.dtype).view(-1, 1, 1, 1)
        return x


class AdaController:
    """Adjusts an :class:`AugmentPipe`'s probability from the sign of D's outputs on reals (ADA §3).

    Call :meth:`observe` with every batch of real logits and :meth:`step` once per training step with
    the global batch size. The statistics stay on the device between adjustments (no synchronization
    per step); under several processes pass ``reduce`` (e.g. a mean over processes of a tensor) so
    every process sees the same r_t and therefore the same p.
    """

    def __init__(self, pipe: AugmentPipe, target: float = 0.6, interval: int = 4, speed_kimg: float = 500.0):
        if not 0 < target < 1:
            raise ValueError(f"ADA target must be in (0, 1), got {target}")
        if interval < 1 or not speed_kimg > 0:
            raise ValueError(f"ADA interval must be at least 1 and speed_kimg positive, got {interval} and {speed_kimg}")
        self.pipe, self.target, self.interval, self.speed_kimg = pipe, target, interval, speed_kimg
        self._stats: torch.Tensor | None = None  # (sum of signs, count)
        self._steps = 0
        self.last_rt: float | None = None

    def observe(self, real_logits: torch.Tensor) -> None:
        x = real_logits.detach().float()
        batch = torch.stack([x.sign().sum(), torch.tensor(float(x.numel()), device=x.device)])
        self._stats = batch if self._stats is None else self._stats.to(x.device) + batch

    def step(self, batch_size: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float | None:
        """Count one training step; every ``interval`` steps adjust p. Returns r_t when it adjusted."""
        self._steps += 1
        if self._steps % self.interval or self._stats is None:
            return None
        stats = self._stats if reduce is None else reduce(self._stats)
        self._stats = None
        signs, count = (float(v) for v in stats.cpu())
        if count <= 0:
            return None
        rt = signs / count
        direction = (rt > self.target) - (rt < self.target)
        p = self.pipe.probability + direction * batch_size * self.interval / (self.speed_kimg * 1000)
        self.pipe.set_probability(min(max(p, 0.0), 1.0))
        self.last_rt = rt
        return rt

    def state_dict(self) -> dict[str, Any]:
        stats = None if self._stats is None else self._stats.detach().cpu().tolist()
        return {"p": self.pipe.probability, "stats": stats, "steps": self._steps, "last_rt": self.last_rt}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pipe.set_probability(float(state["p"]))
        self._stats = None if state.get("stats") is None else torch.tensor([float(v) for v in state["stats"]])
        self._steps = int(state["steps"])
        self.last_rt = None if state.get("last_rt") is None else float(state["last_rt"])
