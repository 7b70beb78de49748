"""Improved precision and recall (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for
Assessing Generative Models", §2, eqs. 1-3).

Each set's manifold is the union of hyperspheres around its samples, each with the radius of the
distance to its k-th nearest neighbour in the same set (k = 3, the paper's choice). Precision is the
fraction of generated samples inside the real manifold (fidelity); recall is the fraction of real
samples inside the generated manifold (coverage). A sample on a sphere's surface counts as inside
(``<=``), as in the paper's reference code.

The two sets must be the same size: a manifold's k-NN radii shrink as its set grows, so 1,000 generated
images against 77 held-out radiographs would shrink the generated spheres (recall falls) and swell the
real ones (precision rises) whatever the generator does. The paper compares equal counts (50,000 each,
§3); with the small reference sets of medical imaging, the larger set is subsampled without replacement
to the smaller one's size, ``repeats`` times from a fixed seed, and the estimates averaged.
"""

from __future__ import annotations

import numpy as np
import torch

_CHUNK = 1024


def _sq_dists(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = (a * a).sum(1, keepdim=True) + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return d.clamp_min_(0.0)


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Distance from each sample to its k-th nearest other sample of the same set."""
    f = torch.as_tensor(np.asarray(features), dtype=torch.float64)
    n = f.shape[0]
    if n <= k:
        raise ValueError(f"k-NN radii with k={k} need more than {k} samples, got {n}")
    radii = torch.empty(n, dtype=torch.float64)
    for start in range(0, n, _CHUNK):
        d = _sq_dists(f[start : start + _CHUNK], f)
        # The k+1 smallest include the sample itself (distance 0).
        radii[start : start + _CHUNK] = d.topk(k + 1, dim=1, largest=False).values[:, k].sqrt()
    return radii.numpy()


def coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """For each query, whether it lies within some manifold sample's k-NN sphere."""
    m = torch.as_tensor(np.asarray(manifold), dtype=torch.float64)
    r2 = torch.as_tensor(np.asarray(radii), dtype=torch.float64) ** 2
    q = torch.as_tensor(np.asarray(queries), dtype=torch.float64)
    inside = torch.empty(q.shape[0], dtype=torch.bool)
    for start in range(0, q.shape[0], _CHUNK):
        inside[start : start + _CHUNK] = (_sq_dists(q[start : start + _CHUNK], m) <= r2[None, :]).any(1)
    return inside.numpy()


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3, repeats: int = 10, seed: int = 0) -> tuple[float, float]:
    """(precision, recall) of generated features ``fake`` against real features ``real``, both (N, D), at
    equal counts (module docstring): exact when the sizes agree, else the mean over ``repeats`` subsets."""
    real = np.asarray(real)
    fake = np.asarray(fake)
    if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
        raise ValueError(f"features must be (N, D) with the same D, got {real.shape} and {fake.shape}")
    if not (np.isfinite(real).all() and np.isfinite(fake).all()):
        raise ValueError("features contain NaN or infinite values")
    if real.shape[0] == fake.shape[0]:
        return _precision_recall(real, fake, k)
    n = min(real.shape[0], fake.shape[0])
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(max(1, repeats)):
        r = real[rng.choice(real.shape[0], n, replace=False)] if real.shape[0] > n else real
        f = fake[rng.choice(fake.shape[0], n, replace=False)] if fake.shape[0] > n else fake
        pairs.append(_precision_recall(r, f, k))
    precision, recall = np.mean(pairs, axis=0)
    return float(precision), float(recall)


def _precision_recall(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    precision = coverage(real, knn_radii(real, k), fake).mean()
    recall = coverage(fake, knn_radii(fake, k), real).mean()
    return float(precision), float(recall)
