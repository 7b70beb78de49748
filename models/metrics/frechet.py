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


def _checked(features: np.ndarray) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N, D) with N >= 2, got shape {f.shape}")
    if not np.isfinite(f).all():
        raise ValueError("features contain NaN or infinite values")
    return f


def frechet_distance_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets.

    With fewer images than dimensions in either set (e.g. 500 images in the 1764-dimensional HOG space)
    the covariances have rank < D and the same value comes from the images instead of two D x D
    eigendecompositions: with the centred features X1 (N1 x D), X2 (N2 x D), S_i = X_i^T X_i / (N_i - 1),
    the non-zero eigenvalues of S1^(1/2) S2 S1^(1/2) are those of S1 S2, which are the squared singular
    values of X2 X1^T / sqrt((N1 - 1)(N2 - 1)); so tr((S1 S2)^(1/2)) is that matrix's nuclear norm, and
    tr(S_i) = |X_i|_F^2 / (N_i - 1). Exact, not an approximation: O(N1 N2 D) instead of O(D^3).
    """
    f1, f2 = _checked(real), _checked(fake)
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature dimensions differ: {f1.shape[1]} and {f2.shape[1]}")
    if min(f1.shape[0], f2.shape[0]) >= f1.shape[1]:
        return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2))
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    x1, x2 = f1 - mu1, f2 - mu2
    c1, c2 = f1.shape[0] - 1, f2.shape[0] - 1
    cross = np.linalg.svd(x2 @ x1.T, compute_uv=False).sum() / np.sqrt(c1 * c2)
    diff = mu1 - mu2
    value = float(diff @ diff + (x1 * x1).sum() / c1 + (x2 * x2).sum() / c2 - 2.0 * cross)
    return max(value, 0.0)
