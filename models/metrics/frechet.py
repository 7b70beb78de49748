"""The Frechet distance between Gaussians fitted to two feature sets (FID when the features are FID
Inception pool3 features).

Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", §3 eq. (6) (after Dowson and Landau 1982)::

    d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2))

Everything is float64. The trace of the matrix square root is computed without a general ``sqrtm``:
``S1 S2`` is similar to the symmetric positive semi-definite ``A = S1^(1/2) S2 S1^(1/2)``, so
``tr((S1 S2)^(1/2)) = sum(sqrt(eig(A)))``. Both square roots come from ``eigh`` of symmetric matrices,
whose tiny negative eigenvalues (rounding on rank-deficient covariances, e.g. fewer samples than
dimensions) are set to zero. This avoids the complex results and the retry with ``eps * I`` added
that a general ``scipy.linalg.sqrtm`` needs (pytorch-fid), and agrees with it where that one converges
(checked against pytorch-fid's own value in ``tests/metrics``).
"""

from __future__ import annotations

import numpy as np


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, N-1, as ``np.cov`` and pytorch-fid) of (N, D) features, float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _psd_sqrt(s: np.ndarray) -> np.ndarray:
    s = (s + s.T) / 2  # rounding can make a covariance slightly asymmetric
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric positive semi-definite S1, S2."""
    r = _psd_sqrt(np.asarray(sigma1, dtype=np.float64))
    a = r @ np.asarray(sigma2, dtype=np.float64) @ r
    w = np.linalg.eigvalsh((a + a.T) / 2)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2) (eq. 6 above), >= 0."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"shapes do not agree: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    for name, arr in (("mu1", mu1), ("mu2", mu2), ("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contains NaN or infinite values")
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2))
    # The three traces cancel to rounding error for identical distributions; a distance is never negative.
    return max(value, 0.0)


def frechet_distance_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets."""
    return frechet_distance(*gaussian_stats(real), *gaussian_stats(fake))
