"""Frechet distance, KID and improved precision/recall against closed forms and direct computations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import linalg

from models.metrics.frechet import frechet_distance, frechet_distance_features, gaussian_stats, trace_sqrt_product
from models.metrics.kid import kernel_inception_distance, mmd2_unbiased
from models.metrics.precision_recall import coverage, knn_radii, precision_recall


def _rotation(d, seed):
    q, _ = np.linalg.qr(np.random.RandomState(seed).standard_normal((d, d)))
    return q


def test_frechet_of_a_set_with_itself_is_zero():
    f = np.random.RandomState(0).standard_normal((300, 64)) * 3 + 1
    assert frechet_distance_features(f, f) == pytest.approx(0.0, abs=1e-6)
    # Rank-deficient covariance (fewer samples than dimensions), as FID with few images gives.
    g = np.random.RandomState(1).standard_normal((20, 64))
    assert frechet_distance_features(g, g) == pytest.approx(0.0, abs=1e-6)


def test_frechet_of_two_gaussians_matches_the_closed_form():
    d = 16
    rs = np.random.RandomState(2)
    q = _rotation(d, 3)
    a, b = rs.uniform(0.5, 4, d), rs.uniform(0.1, 2, d)
    mu1, mu2 = rs.standard_normal(d), rs.standard_normal(d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T  # commuting: sqrt(S1 S2) = Q sqrt(ab) Q^T
    closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(closed, rel=1e-10)


def test_frechet_non_commuting_covariances_agree_with_scipy_sqrtm():
    rs = np.random.RandomState(4)
    x, y = rs.standard_normal((8, 8)), rs.standard_normal((8, 8))
    s1, s2 = x @ x.T + 0.1 * np.eye(8), y @ y.T + 0.1 * np.eye(8)
    expected = np.trace(linalg.sqrtm(s1 @ s2)).real
    assert trace_sqrt_product(s1, s2) == pytest.approx(expected, rel=1e-9)
    # One dimension: |m1 - m2|^2 + (s1 - s2)^2 for standard deviations s1, s2.
    assert frechet_distance([0.0], [[4.0]], [3.0], [[1.0]]) == pytest.approx(9 + 1)


def test_frechet_from_few_images_equals_the_covariance_form():
    """Fewer images than dimensions (HOG: 1764): computed from the images, the same value as from the D x D covariances."""
    rs = np.random.RandomState(5)
    for n1, n2, d in ((30, 50, 200), (10, 400, 64), (300, 20, 500)):
        a = rs.standard_normal((n1, d)) @ rs.standard_normal((d, d)) * 0.1 + 0.3
        b = rs.standard_normal((n2, d)) * 1.2
        assert frechet_distance_features(a, b) == pytest.approx(frechet_distance(*gaussian_stats(a), *gaussian_stats(b)), rel=1e-6)
    with pytest.raises(ValueError, match="dimensions differ"):
        frechet_distance_features(np.zeros((3, 4)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_features(np.full((3, 4), np.nan), np.zeros((3, 4)))


def test_frechet_bad_input():
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 4)))
    with pytest.raises(ValueError, match="NaN"):
        gaussian_stats(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="shapes do not agree"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def _kid_direct(x, y):
    """Binkowski et al. 2018 eq. for the unbiased MMD^2, written as explicit sums."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (np.dot(a, b) / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(m), 2)) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_against_a_direct_computation():
    rs = np.random.RandomState(5)
    x, y = rs.standard_normal((12, 6)), rs.standard_normal((12, 6)) + 0.7
    assert mmd2_unbiased(x, y) == pytest.approx(_kid_direct(x, y), rel=1e-12)
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=12)
    assert mean == pytest.approx(_kid_direct(x, y), rel=1e-12) and std == 0.0
    # Subsets: the mean over subsets of the direct value on the same subsets.
    mean, _ = kernel_inception_distance(x, y, subsets=3, subset_size=5, seed=9)
    rs9 = np.random.RandomState(9)
    direct = [_kid_direct(x[rs9.choice(12, 5, replace=False)], y[rs9.choice(12, 5, replace=False)]) for _ in range(3)]
    assert mean == pytest.approx(np.mean(direct), rel=1e-12)


def test_kid_near_zero_for_the_same_distribution_and_positive_otherwise():
    rs = np.random.RandomState(6)
    a, b = rs.standard_normal((400, 8)), rs.standard_normal((400, 8))
    same, _ = kernel_inception_distance(a, b, subsets=20, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=200)
    assert abs(same) < 0.02 < shifted


def test_kid_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        kernel_inception_distance(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="same D"):
        kernel_inception_distance(np.zeros((5, 3)), np.zeros((5, 4)))


def test_knn_radii_exclude_the_sample_itself():
    pts = np.array([[0.0], [1.0], [3.0], [7.0]])
    assert knn_radii(pts, k=1).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert knn_radii(pts, k=2).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_precision_recall_on_toy_manifolds():
    rs = np.random.RandomState(7)
    # The unit square, densely sampled: the same distribution is covered both ways; a generator that
    # covers only its left half is precise, with recall ~ 1/2.
    real = rs.uniform(0, 1, (1000, 2))
    p, r = precision_recall(real, rs.uniform(0, 1, (1000, 2)))
    assert p > 0.95 and r > 0.95
    p, r = precision_recall(real, rs.uniform(0, 1, (1000, 2)) * [0.5, 1.0])
    assert p > 0.95 and r == pytest.approx(0.5, abs=0.04)
    # Mode collapse onto 3 of 10 well-separated modes: precise, recall ~ 3/10.
    centers = rs.standard_normal((10, 5)) * 20
    modes = np.concatenate([c + 0.3 * rs.standard_normal((39, 5)) for c in centers])
    collapsed = np.concatenate([c + 0.3 * rs.standard_normal((130, 5)) for c in centers[:3]])
    p, r = precision_recall(modes, collapsed)
    assert p > 0.8 and r == pytest.approx(0.3, abs=0.03)
    # Far away from everything: neither precise nor covering.
    assert precision_recall(real, real + 1000) == (0.0, 0.0)
    # Exact copies count as inside (the sphere's boundary is inclusive).
    assert precision_recall(real, real) == (1.0, 1.0)


def test_precision_recall_compares_equal_counts():
    # 80 real samples against 2,000 generated from the same distribution: measured naively, the 2,000
    # small spheres cover fewer real samples than 80 generated ones would; at equal counts (the paper's
    # protocol) the estimate does not depend on how many images were generated.
    rs = np.random.RandomState(3)
    real = rs.standard_normal((80, 40))
    few, many = rs.standard_normal((80, 40)), rs.standard_normal((2000, 40))
    _, r_few = precision_recall(real, few)
    _, r_many = precision_recall(real, many)
    naive = coverage(many, knn_radii(many), real).mean()
    assert abs(r_many - r_few) < 0.05 and naive < r_few - 0.08
    # The subsets come from a fixed seed: the same call gives the same numbers.
    assert precision_recall(real, many) == precision_recall(real, many)


def test_precision_recall_bad_input():
    with pytest.raises(ValueError, match="more than 3 samples"):
        precision_recall(np.zeros((3, 2)), np.zeros((10, 2)))
    with pytest.raises(ValueError, match="NaN"):
        precision_recall(np.full((10, 2), np.nan), np.zeros((10, 2)))
