"""Kernel Inception Distance: the unbiased squared MMD with a cubic polynomial kernel.

Binkowski et al. 2018, "Demystifying MMD GANs", §4 (KID) and Appendix D: with
``k(x, y) = (x . y / d + 1)^3`` on d-dimensional features and subsets of m real and m generated
samples, the unbiased estimator is::

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(m(m-1)) sum_{i != j} k(y_i, y_j)
              - 2/m^2 sum_{i, j} k(x_i, y_j)

It is averaged over several random subsets (as the paper's code, torch-fidelity and StyleGAN's
metrics do: 100 subsets of 1000 by default), and the standard deviation over subsets is reported with
it. Unlike FID, the estimate is unbiased, so it can be compared across sample sizes; it can be
slightly negative when the two sets are alike. Computed in float64.
"""

from __future__ import annotations

import numpy as np


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased squared MMD of two equally sized sets with the KID kernel."""
    m = x.shape[0]
    if y.shape[0] != m or m < 2:
        raise ValueError("both sets need the same size, at least 2")
    kxx = polynomial_kernel(x, x)
    kyy = polynomial_kernel(y, y)
    kxy = polynomial_kernel(x, y)
    within = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(within - 2.0 * kxy.sum() / (m * m))


def kernel_inception_distance(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """(mean, std) of the unbiased MMD^2 over ``subsets`` random subsets of ``subset_size`` from each set.

    ``subset_size`` is reduced to the smaller set's size when larger. Subsets are drawn without
    replacement within a subset, independently across subsets, from ``RandomState(seed)``, so the same
    features always give the same value.
    """
    x = np.asarray(real, dtype=np.float64)
    y = np.asarray(fake, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("features contain NaN or infinite values")
    m = min(int(subset_size), x.shape[0], y.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(f"KID needs at least 2 samples in each set and one subset (got {x.shape[0]} real, {y.shape[0]} generated)")
    rs = np.random.RandomState(seed)
    values = np.empty(int(subsets))
    for s in range(int(subsets)):
        values[s] = mmd2_unbiased(x[rs.choice(x.shape[0], m, replace=False)], y[rs.choice(y.shape[0], m, replace=False)])
    return float(values.mean()), float(values.std())
