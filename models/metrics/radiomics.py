"""Radiomic features of whole images, for a Frechet Radiomic Distance that needs no downloaded weights.

Konz, Osuala et al. 2024, "Fréchet Radiomic Distance (FRD)" (arXiv 2412.01496), §3: describe each
image by the radiomic features of the image and of its Laplacian-of-Gaussian and wavelet filtered
versions, z-score them against the real set, and take the log of the Frechet distance between the two
sets. Their features come from PyRadiomics; this module computes the same feature classes with NumPy
and SciPy, by the definitions PyRadiomics documents (after the IBSI, Zwanenburg et al. 2020), because
PyRadiomics does not install from PyPI on its own (its sdist needs numpy and versioneer at build time
and a C compiler) and takes 0.35-0.85 s per 256 px image on one core, where this takes milliseconds
(``bench/RESULTS.md``). The numbers are therefore *radiomics-style* features, not PyRadiomics' values.

Per image, at ``size`` x ``size`` (antialiased bilinear resize) with the whole image as the region:

* filtered images: ``original``; ``log-sigma-{1,2,3}`` (``scipy.ndimage.gaussian_laplace``, sigma in
  pixels of the working size); ``wavelet-{LL,LH,HL,HH}`` (one level of the decimated 2-D Haar
  transform; PyRadiomics' default is the undecimated coif1, the sub-band roles are the same);
* first order (17, on the filtered values): energy (mean of x^2), entropy and uniformity of the
  discretized histogram, minimum, 10th and 90th percentile, maximum, mean, median, interquartile
  range, range, mean absolute deviation, robust mean absolute deviation (10-90 % values), root mean
  square, skewness, kurtosis, variance;
* GLCM (22): symmetric co-occurrence at distance 1 in the four directions 0, 45, 90, 135 degrees, each
  feature averaged over the directions as PyRadiomics does: autocorrelation, joint average, cluster
  prominence, shade and tendency, contrast, correlation, difference average, entropy and variance,
  joint energy, joint entropy, IDM, IDMN, ID, IDN, inverse variance, maximum probability, sum average,
  sum entropy, sum of squares, informational measures of correlation 1 and 2;
* GLRLM (12): runs along rows and columns, averaged: short and long run emphasis, gray level and run
  length non-uniformity (and normalized), run percentage, gray level and run variance, run entropy,
  low and high gray level run emphasis.

Texture matrices use a fixed bin number (:data:`LEVELS` gray levels between the filtered image's own
minimum and maximum), the IBSI's choice for intensities without a physical unit, such as radiographs.

:func:`standardize_against_reference` applies the two fixes black-padded radiographs need (issue 15,
NOTES.md): features that barely vary across the real set are dropped (four wavelet features are about
1e-30 on every padded radiograph; z-scoring them would divide rounding noise by rounding noise), and
z-scores are clipped to +-:data:`Z_CLIP`, so a single exploding feature cannot dominate the distance.

:class:`RadiomicsFeatures` is a feature extractor for :mod:`models.metrics.evaluate`: it computes the
features in worker processes (NumPy and SciPy only; they never import torch) and tells the evaluation
to standardize with the reference set and report ``log_frechet_distance`` (FRD).
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import threading

import numpy as np
from scipy import ndimage

LEVELS = 32
LOG_SIGMAS = (1.0, 2.0, 3.0)
Z_CLIP = 5.0
# A feature is dropped when its standard deviation over the real set is below this fraction of
# (|its mean| + this floor): constant features carry no information, only rounding noise.
RELATIVE_STD_FLOOR = 1e-6
FIRST_ORDER = (
    "energy", "entropy", "minimum", "p10", "p90", "maximum", "mean", "median", "iqr", "range",
    "mad", "robust_mad", "rms", "skewness", "kurtosis", "variance", "uniformity",
)
GLCM = (
    "autocorrelation", "joint_average", "cluster_prominence", "cluster_shade", "cluster_tendency", "contrast",
    "correlation", "difference_average", "difference_entropy", "difference_variance", "joint_energy",
    "joint_entropy", "idm", "idmn", "id", "idn", "inverse_variance", "maximum_probability", "sum_average",
    "sum_entropy", "sum_squares", "imc1", "imc2",
)
GLRLM = (
    "sre", "lre", "gln", "glnn", "rln", "rlnn", "run_percentage", "gl_variance", "run_variance", "run_entropy",
    "lglre", "hglre",
)
_EPS = np.finfo(np.float64).eps


def filter_names() -> list[str]:
    return ["original"] + [f"log-sigma-{s:g}" for s in LOG_SIGMAS] + [f"wavelet-{b}" for b in ("LL", "LH", "HL", "HH")]


def feature_names() -> list[str]:
    """Names of the columns :func:`radiomic_features` returns, ``<filter>_<class>_<feature>``."""
    return [f"{f}_{cls}_{n}" for f in filter_names() for cls, names in (("firstorder", FIRST_ORDER), ("glcm", GLCM), ("glrlm", GLRLM)) for n in names]


def _haar(x: np.ndarray) -> dict[str, np.ndarray]:
    h, w = (x.shape[0] // 2) * 2, (x.shape[1] // 2) * 2
    a, b, c, d = x[0:h:2, 0:w:2], x[0:h:2, 1:w:2], x[1:h:2, 0:w:2], x[1:h:2, 1:w:2]
    return {"LL": (a + b + c + d) / 2, "LH": (a - b + c - d) / 2, "HL": (a + b - c - d) / 2, "HH": (a - b - c + d) / 2}


def filtered_images(x: np.ndarray) -> list[np.ndarray]:
    """The image and its filtered versions, in :func:`filter_names` order (float64)."""
    x = np.asarray(x, dtype=np.float64)
    out = [x] + [ndimage.gaussian_laplace(x, s, mode="reflect") for s in LOG_SIGMAS]
    wav = _haar(x)
    return out + [wav[b] for b in ("LL", "LH", "HL", "HH")]


def discretize(x: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    """Gray levels 0..levels-1 by a fixed bin number over the image's own range (a flat image: all 0)."""
    lo, hi = float(x.min()), float(x.max())
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):
        return np.zeros(x.shape, np.int64)
    return np.minimum(((x - lo) / (hi - lo) * levels).astype(np.int64), levels - 1)


def first_order(x: np.ndarray, q: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    v = x.ravel()
    p10, p25, p50, p75, p90 = np.percentile(v, [10, 25, 50, 75, 90])
    mean = v.mean()
    dev = v - mean
    var = float((dev**2).mean())
    std = math.sqrt(var)
    robust = v[(v >= p10) & (v <= p90)]
    hist = np.bincount(q.ravel(), minlength=levels) / v.size
    nz = hist[hist > 0]
    return np.array([
        float((v**2).mean()),
        float(-(nz * np.log2(nz + _EPS)).sum()),
        float(v.min()), p10, p90, float(v.max()), mean, p50, p75 - p25, float(v.max() - v.min()),
        float(np.abs(dev).mean()),
        float(np.abs(robust - robust.mean()).mean()) if robust.size else 0.0,
        math.sqrt(float((v**2).mean())),
        float((dev**3).mean() / std**3) if std > 0 else 0.0,
        float((dev**4).mean() / var**2) if var > 0 else 0.0,
        var,
        float((hist**2).sum()),
    ])


_GLCM_OFFSETS = ((0, 1), (-1, 1), (-1, 0), (-1, -1))  # 0, 45, 90, 135 degrees (row, column)


def _glcm_one(q: np.ndarray, dr: int, dc: int, levels: int) -> np.ndarray:
    h, w = q.shape
    r0, r1 = max(0, -dr), h - max(0, dr)
    c0, c1 = max(0, -dc), w - max(0, dc)
    a = q[r0:r1, c0:c1]
    b = q[r0 + dr : r1 + dr, c0 + dc : c1 + dc]
    m = np.bincount((a * levels + b).ravel(), minlength=levels * levels).reshape(levels, levels).astype(np.float64)
    m = m + m.T  # symmetric, as PyRadiomics' default
    s = m.sum()
    return m / s if s > 0 else m


def _glcm_features(p: np.ndarray) -> np.ndarray:
    n = p.shape[0]
    i = np.arange(1, n + 1, dtype=np.float64)
    ii, jj = np.meshgrid(i, i, indexing="ij")
    px, py = p.sum(1), p.sum(0)
    ux, uy = (px * i).sum(), (py * i).sum()
    sx = math.sqrt(max(((i - ux) ** 2 * px).sum(), 0.0))
    sy = math.sqrt(max(((i - uy) ** 2 * py).sum(), 0.0))
    k_sum = (ii + jj).astype(np.int64) - 2  # 0..2n-2 -> sum 2..2n
    k_diff = np.abs(ii - jj).astype(np.int64)  # 0..n-1
    p_sum = np.bincount(k_sum.ravel(), weights=p.ravel(), minlength=2 * n - 1)
    p_diff = np.bincount(k_diff.ravel(), weights=p.ravel(), minlength=n)
    ks = np.arange(2, 2 * n + 1, dtype=np.float64)
    kd = np.arange(0, n, dtype=np.float64)
    log_p = np.log2(p + _EPS)
    hxy = -(p * log_p).sum()
    pxy = np.outer(px, py)
    hxy1 = -(p * np.log2(pxy + _EPS)).sum()
    hxy2 = -(pxy * np.log2(pxy + _EPS)).sum()
    hx = -(px * np.log2(px + _EPS)).sum()
    hy = -(py * np.log2(py + _EPS)).sum()
    diff_avg = (kd * p_diff).sum()
    sum_avg = (ks * p_sum).sum()
    sum_entropy = -(p_sum * np.log2(p_sum + _EPS)).sum()
    off = p_diff[1:]
    return np.array([
        (p * ii * jj).sum(),
        ux,
        (((ii + jj - ux - uy) ** 4) * p).sum(),
        (((ii + jj - ux - uy) ** 3) * p).sum(),
        (((ii + jj - ux - uy) ** 2) * p).sum(),
        (((ii - jj) ** 2) * p).sum(),
        ((p * ii * jj).sum() - ux * uy) / (sx * sy) if sx * sy > 0 else 1.0,
        diff_avg,
        -(p_diff * np.log2(p_diff + _EPS)).sum(),
        (((kd - diff_avg) ** 2) * p_diff).sum(),
        (p**2).sum(),
        hxy,
        (p / (1 + (ii - jj) ** 2)).sum(),
        (p / (1 + (ii - jj) ** 2 / n**2)).sum(),
        (p / (1 + np.abs(ii - jj))).sum(),
        (p / (1 + np.abs(ii - jj) / n)).sum(),
        (off / kd[1:] ** 2).sum(),
        p.max(),
        sum_avg,
        sum_entropy,
        (((ii - ux) ** 2) * p).sum(),
        (hxy - hxy1) / max(hx, hy) if max(hx, hy) > 0 else 0.0,
        math.sqrt(max(0.0, 1 - math.exp(-2 * (hxy2 - hxy)))),
    ])


def glcm(q: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    return np.mean([_glcm_features(_glcm_one(q, dr, dc, levels)) for dr, dc in _GLCM_OFFSETS], axis=0)


def _run_matrix(q: np.ndarray, levels: int) -> np.ndarray:
    """Gray level run length matrix (levels x width) of runs along each row."""
    h, w = q.shape
    grid = np.full((h, w + 1), -1, dtype=np.int64)
    grid[:, :w] = q
    flat = grid.ravel()
    change = np.ones(flat.size, bool)
    change[1:] = flat[1:] != flat[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, flat.size))
    level = flat[starts]
    keep = level >= 0  # the separator column is not a run
    return np.bincount(level[keep] * w + lengths[keep] - 1, minlength=levels * w).reshape(levels, w).astype(np.float64)


def _glrlm_features(m: np.ndarray, n_pixels: int) -> np.ndarray:
    nr = m.sum()
    i = np.arange(1, m.shape[0] + 1, dtype=np.float64)[:, None]
    j = np.arange(1, m.shape[1] + 1, dtype=np.float64)[None, :]
    p = m / nr
    pg, pr = m.sum(1), m.sum(0)
    mu_i = (p * i).sum()
    mu_j = (p * j).sum()
    return np.array([
        (m / j**2).sum() / nr,
        (m * j**2).sum() / nr,
        (pg**2).sum() / nr,
        (pg**2).sum() / nr**2,
        (pr**2).sum() / nr,
        (pr**2).sum() / nr**2,
        nr / n_pixels,
        (p * (i - mu_i) ** 2).sum(),
        (p * (j - mu_j) ** 2).sum(),
        -(p * np.log2(p + _EPS)).sum(),
        (m / i**2).sum() / nr,
        (m * i**2).sum() / nr,
    ])


def glrlm(q: np.ndarray, levels: int = LEVELS) -> np.ndarray:
    return np.mean([_glrlm_features(_run_matrix(a, levels), q.size) for a in (q, q.T)], axis=0)


def radiomic_features(image: np.ndarray) -> np.ndarray:
    """All features (:func:`feature_names`) of one 2-D float image."""
    parts = []
    for f in filtered_images(image):
        q = discretize(f)
        parts += [first_order(f, q), glcm(q), glrlm(q)]
    return np.concatenate(parts)


def features_of_batch(images: np.ndarray) -> np.ndarray:
    """(N, H, W) float images -> (N, D) float64; what each worker process runs."""
    return np.stack([radiomic_features(x) for x in images])


def standardize_against_reference(real: np.ndarray, fake: np.ndarray, clip: float = Z_CLIP) -> tuple[np.ndarray, np.ndarray, dict]:
    """Z-score both sets with the real set's mean and std, after dropping features that barely vary
    across the real set, and clip to +-``clip``. Returns (real_z, fake_z, what was done)."""
    real = np.asarray(real, np.float64)
    fake = np.asarray(fake, np.float64)
    mean = real.mean(0)
    std = real.std(0)
    keep = std > RELATIVE_STD_FLOOR * (np.abs(mean) + RELATIVE_STD_FLOOR)
    if not keep.any():
        raise ValueError("every radiomic feature is constant across the reference set: it has no texture to compare with")
    rz = np.clip((real[:, keep] - mean[keep]) / std[keep], -clip, clip)
    fz = np.clip((fake[:, keep] - mean[keep]) / std[keep], -clip, clip)
    info = {
        "features_total": int(real.shape[1]),
        "features_kept": int(keep.sum()),
        "features_dropped_near_constant": int((~keep).sum()),
        "z_clip": clip,
        "generated_values_clipped": float((np.abs((fake[:, keep] - mean[keep]) / std[keep]) > clip).mean()),
    }
    return rz, fz, info


def _start_method() -> str:
    # fork is fast and needs no __main__ guard, but copies locks held by other threads: only when alone.
    if "fork" in multiprocessing.get_all_start_methods() and threading.active_count() == 1:
        return "fork"
    return "spawn"


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


class RadiomicsFeatures:
    """Feature extractor (:mod:`models.metrics.features` contract) of :func:`radiomic_features`.

    Batches are resized to ``size`` and split across ``workers`` processes (default: the CPUs this
    process may use; 1 computes in this process). The evaluation standardizes its features against
    the reference set (:func:`standardize_against_reference`) and reports the log of the Frechet
    distance, as FRD does.
    """

    name = "radiomics"
    standardize = staticmethod(standardize_against_reference)
    log_frechet = True
    batch_size = 256

    def __init__(self, size: int = 128, workers: int | None = None):
        if size < 16:
            raise ValueError(f"radiomics needs images of at least 16 px, got size {size}")
        self.size = int(size)
        self.workers = max(1, int(workers if workers is not None else default_workers()))
        self.dim = len(feature_names())
        self.cache_key = f"radiomics-v1-{self.size}px-{LEVELS}levels"
        self._pool: cf.ProcessPoolExecutor | None = None

    def _executor(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(_start_method()))
        return self._pool

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    def compute(self, images: np.ndarray) -> np.ndarray:
        """(N, size, size) float images in [0, 1] -> (N, D) features, in worker processes."""
        n = images.shape[0]
        if self.workers == 1 or n < 2 * self.workers:
            return features_of_batch(images)
        parts = np.array_split(np.arange(n), min(n, self.workers * 4))
        return np.concatenate(list(self._executor().map(features_of_batch, [images[p] for p in parts if p.size])))

    def __call__(self, images):
        import torch
        import torch.nn.functional as F

        x = images.to(torch.float32)
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return torch.from_numpy(self.compute(x[:, 0].cpu().numpy().astype(np.float64)))
