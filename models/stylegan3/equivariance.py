"""Equivariance metrics as the paper defines them: EQ-T, EQ-T_frac and EQ-R (Karras et al. 2021, §2
"Equivariance metrics" and Appendix E).

Each is a PSNR in dB between two images that an equivariant generator makes equal:

    EQ = 10 log10(I_max^2 / E[ (g(t[z0]; w) - t[g(z0; w)])^2 ]),   I_max = 2 for images in [-1, 1],

where g(t[z0]) is generated from input coordinates transformed by t (:func:`content_transform`) and
t[g(z0)] is the original image transformed by t, compared over the pixels valid in both (those the
transform brings in from outside the image, or whose resampling support leaves it, are not compared):

- EQ-T: integer-pixel translations, for which translating the image is exact (no filter enters);
- EQ-T_frac: fractional translations; the image is translated by separable windowed-sinc
  interpolation (Kaiser window, ``taps`` samples each side);
- EQ-R: rotations about the centre. A rotated square sampling grid cannot hold the corners of the
  original square spectrum, so both images are first low-passed to the disc inscribed in it (the
  radially symmetric jinc filter of config R, :func:`models.stylegan3.filters.lowpass_filter`, passing
  up to about 0.6 of Nyquist and stopping at Nyquist): the original before it is rotated (windowed-sinc
  interpolation in 2-D), the generated image as is. The paper's metric band-limits to the intersection
  of the two squares instead, which contains this disc: both compare the content any rotation keeps.

Translations are drawn up to 1/8 of the image and rotations up to 180 degrees either way, the paper's
ranges. Higher is more equivariant: the paper reports for trained 256 px config T about 63 dB EQ-T and
about 15-20 dB lower EQ-R; for config R both well above 40 dB.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from models.stylegan3.filters import filter2d, lowpass_filter
from models.stylegan3.synthesis import content_transform

I_MAX = 2.0  # the dynamic range of images in [-1, 1]
SINC_TAPS = 12  # interpolation support: this many input samples on each side of the read position
KAISER_BETA = 7.0  # the interpolation window: measured best for content up to 0.45 cycles per pixel
DISC_CUTOFF, DISC_WIDTH, DISC_TAPS = 0.4, 0.2, 19  # EQ-R's band limit, cycles per pixel


def _psnr(total: float, count: int) -> float:
    mse = total / max(count, 1)
    return float("inf") if mse == 0 else 10 * math.log10(I_MAX**2 / mse)


def _compare(G: torch.nn.Module, z: torch.Tensor, psi: float, transforms, pair: Callable) -> float:
    """Mean squared error over every latent and transform, as a PSNR. ``pair(ref, moved, t)`` returns
    (expected, got, mask) for one transform ``t``."""
    ws = G.mapping(z, psi=psi)
    ref = G.synthesis(ws).double()
    total, count = 0.0, 0
    for t, matrix in transforms:
        moved = G.synthesis(ws, transform=matrix).double()
        expected, got, mask = pair(ref, moved, t)
        total += ((expected - got).square() * mask).sum().item()
        count += int(mask.sum().item()) * ref.shape[0] * ref.shape[1]
    return _psnr(total, count)


# --------------------------------------------------------------------------------------------- EQ-T


@torch.no_grad()
def eq_t_psnr(G: torch.nn.Module, z: torch.Tensor, shifts: list[tuple[int, int]], psi: float = 1.0) -> float:
    """EQ-T in dB over the latents ``z`` and integer pixel ``shifts`` (dx, dy), each applied to every
    latent. The paper reports about 60-65 dB for trained config T."""
    res = G.resolution
    for dx, dy in shifts:
        if abs(dx) >= res or abs(dy) >= res:
            raise ValueError(f"shift ({dx}, {dy}) leaves no overlap in a {res}x{res} image")

    def pair(ref, moved, shift):
        dx, dy = shift
        # Content moved by (dx, dy): moved[y, x] should equal ref[y - dy, x - dx] where both exist.
        a = moved[:, :, max(dy, 0) : res + min(dy, 0), max(dx, 0) : res + min(dx, 0)]
        b = ref[:, :, max(-dy, 0) : res + min(-dy, 0), max(-dx, 0) : res + min(-dx, 0)]
        return b, a, torch.ones(a.shape[-2:], dtype=a.dtype)

    transforms = [((dx, dy), content_transform(translate=(dx / res, dy / res))) for dx, dy in shifts]
    return _compare(G, z, psi, transforms, pair)


def random_shifts(resolution: int, count: int, generator: torch.Generator | None = None, max_fraction: float = 0.125) -> list[tuple[int, int]]:
    """``count`` integer shifts, each coordinate uniform in +-``max_fraction`` of the image (the paper's
    translations are of this scale), never (0, 0)."""
    limit = max(1, int(resolution * max_fraction))
    out = []
    while len(out) < count:
        dx, dy = (int(v) for v in torch.randint(-limit, limit + 1, (2,), generator=generator))
        if (dx, dy) != (0, 0):
            out.append((dx, dy))
    return out


# ---------------------------------------------------------------------------------------- resampling


def interpolation_kernel(offsets: torch.Tensor, taps: int = SINC_TAPS, beta: float | None = None) -> torch.Tensor:
    """sinc(x) under a Kaiser window reaching zero at |x| = ``taps``: the weight of the sample at
    distance x from the read position (Oppenheim & Schafer §7.5-7.6, band-limited interpolation)."""
    beta = KAISER_BETA if beta is None else beta
    x = offsets.double()
    inside = (x.abs() < taps).to(x.dtype)
    arg = (1 - (x / taps).square()).clamp_min(0).sqrt()
    window = torch.special.i0(beta * arg) / torch.special.i0(torch.tensor(beta, dtype=x.dtype))
    return torch.sinc(x) * window * inside


def _shift_matrix(size: int, shift: float, taps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(size, size) matrix A with (A v)[j] = v interpolated at j - shift, and the rows whose whole
    support lies inside the signal."""
    j = torch.arange(size, dtype=torch.float64)
    k = torch.arange(size, dtype=torch.float64)
    a = interpolation_kernel(j.view(-1, 1) - shift - k.view(1, -1), taps)
    a = a / a.sum(dim=1, keepdim=True).clamp_min(1e-12)
    pos = j - shift
    valid = (torch.floor(pos) - taps + 1 >= 0) & (torch.floor(pos) + taps <= size - 1)
    return a, valid


def translate_image(img: torch.Tensor, dx: float, dy: float, taps: int = SINC_TAPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's content moved by (dx, dy) pixels (x right, y down), any fraction of a pixel, by
    separable windowed-sinc interpolation; and the (H, W) mask of pixels computed from inside the image."""
    h, w = img.shape[-2:]
    ax, vx = _shift_matrix(w, dx, taps)
    ay, vy = _shift_matrix(h, dy, taps)
    out = torch.einsum("yk,nckx,jx->ncyj", ay.to(img.dtype), img, ax.to(img.dtype))
    return out, (vy.view(-1, 1) & vx.view(1, -1)).to(img.dtype)


def rotate_image(img: torch.Tensor, degrees: float, taps: int = SINC_TAPS, border: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The image's content rotated by ``degrees`` about its centre (the sense of
    :func:`content_transform`: x right, y down), by 2-D windowed-sinc interpolation at the rotated
    positions; and the (H, W) mask of pixels whose support lies at least ``border`` pixels inside.

    Exact only for content inside the disc of radius Nyquist (low-pass it first, see EQ-R)."""
    n, c, h, w = img.shape
    a = math.radians(degrees)
    cos, sin = math.cos(a), math.sin(a)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    px, py = xx + 0.5 - w / 2, yy + 0.5 - h / 2
    # Content rotated by R is read at R^-1 p; R^-1 = [[cos, sin], [-sin, cos]].
    u = cos * px + sin * py + w / 2 - 0.5
    v = -sin * px + cos * py + h / 2 - 0.5
    u0, v0 = torch.floor(u), torch.floor(v)
    lo, hi = border + taps - 1, taps + border
    mask = (u0 - lo >= 0) & (u0 + hi <= w - 1) & (v0 - lo >= 0) & (v0 + hi <= h - 1)
    offsets = torch.arange(-taps + 1, taps + 1, dtype=torch.float64)
    wx = interpolation_kernel(u.unsqueeze(-1) - (u0.unsqueeze(-1) + offsets), taps)  # (H, W, 2 taps)
    wy = interpolation_kernel(v.unsqueeze(-1) - (v0.unsqueeze(-1) + offsets), taps)
    wx = wx / wx.sum(-1, keepdim=True)
    wy = wy / wy.sum(-1, keepdim=True)
    flat = img.reshape(n, c, h * w)
    out = torch.zeros_like(img)
    for iy, oy in enumerate(offsets.tolist()):
        rows = (v0 + oy).clamp(0, h - 1).long()
        for ix, ox in enumerate(offsets.tolist()):
            cols = (u0 + ox).clamp(0, w - 1).long()
            weight = (wy[..., iy] * wx[..., ix]).to(img.dtype)
            out += flat[:, :, (rows * w + cols).view(-1)].view(n, c, h, w) * weight
    return out, mask.to(img.dtype)


def disc_lowpass(img: torch.Tensor) -> torch.Tensor:
    """Low-pass to the disc inscribed in the sampling square: the jinc filter (config R's radial
    design), -6 dB at 0.4 cycles per pixel, stop band from Nyquist (0.5)."""
    f = lowpass_filter(DISC_TAPS, DISC_CUTOFF, DISC_WIDTH, 1.0, radial=True)
    return filter2d(img, f.to(img.device, img.dtype))


# ------------------------------------------------------------------------------- EQ-T_frac and EQ-R


@torch.no_grad()
def eq_t_frac_psnr(G: torch.nn.Module, z: torch.Tensor, shifts: list[tuple[float, float]], psi: float = 1.0) -> float:
    """EQ-T_frac in dB over the latents ``z`` and pixel ``shifts`` (dx, dy), fractions allowed."""
    res = G.resolution
    for dx, dy in shifts:
        if abs(dx) + SINC_TAPS >= res / 2 or abs(dy) + SINC_TAPS >= res / 2:
            raise ValueError(f"shift ({dx}, {dy}) leaves too little of a {res}x{res} image to compare")

    def pair(ref, moved, shift):
        expected, mask = translate_image(ref, *shift)
        return expected, moved, mask

    transforms = [((dx, dy), content_transform(translate=(dx / res, dy / res))) for dx, dy in shifts]
    return _compare(G, z, psi, transforms, pair)


@torch.no_grad()
def eq_r_psnr(G: torch.nn.Module, z: torch.Tensor, angles: list[float], psi: float = 1.0) -> float:
    """EQ-R in dB over the latents ``z`` and rotation ``angles`` in degrees."""
    half = DISC_TAPS // 2
    smallest = 2 * (SINC_TAPS + half + 8)  # a disc of radius 8 px survives every rotation
    if G.resolution < smallest:
        raise ValueError(f"EQ-R needs images of at least {smallest} px to leave pixels to compare, not {G.resolution}")

    def pair(ref, moved, angle):
        expected, mask = rotate_image(disc_lowpass(ref), angle, border=half)
        inner = torch.zeros_like(mask)
        inner[half:-half, half:-half] = 1  # where the generated image's own filtering is complete
        return expected, disc_lowpass(moved), mask * inner

    transforms = [(a, content_transform(rotate_deg=a)) for a in angles]
    return _compare(G, z, psi, transforms, pair)


def random_fractional_shifts(resolution: int, count: int, generator: torch.Generator | None = None, max_fraction: float = 0.125) -> list[tuple[float, float]]:
    """``count`` shifts in pixels, each coordinate uniform in +-``max_fraction`` of the image."""
    limit = resolution * max_fraction
    return [tuple(float(v) for v in (torch.rand(2, generator=generator, dtype=torch.float64) * 2 - 1) * limit) for _ in range(count)]


def random_angles(count: int, generator: torch.Generator | None = None, max_degrees: float = 180.0) -> list[float]:
    """``count`` rotation angles uniform in +-``max_degrees``."""
    return [float(v) for v in (torch.rand(count, generator=generator, dtype=torch.float64) * 2 - 1) * max_degrees]
