"""The memorization guard flags exact and lightly noised training copies and passes other images."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from models.datasets import DatasetWriter, load_images
from models.metrics.memorization import MemorizationGuard
from service.data.phantom import phantom_image


def _phantoms(seeds, size=64, bits=8):
    return np.stack([phantom_image(size, size, bits_stored=bits, seed=s, noise=0.03)[0] for s in seeds])


@pytest.fixture(scope="module")
def training():
    return _phantoms(range(120))


@pytest.fixture(scope="module")
def guard(training):
    return MemorizationGuard(training)


def _other_distribution(n, size=64, seed=5):
    rs = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    return np.stack(
        [np.clip(128 + 90 * np.sin(xx / rs.uniform(2, 8) + yy / rs.uniform(2, 8)) + rs.normal(0, 10, (size, size)), 0, 255).astype(np.uint8) for _ in range(n)]
    )


def test_thresholds_are_the_first_percentile_of_training_nn_distances(guard):
    assert guard.spaces == ("pixels", "hog")
    for space in guard.spaces:
        d = guard.training_nn[space]
        assert d.shape == (120,) and (d > 0).all()  # each image against its nearest *other* image
        assert guard.thresholds[space] == pytest.approx(np.percentile(d, 1.0))


def test_exact_copy_is_flagged(guard, training):
    report = guard.check(training[[7, 42]])
    assert report.near_copy.tolist() == [True, True]
    assert report.offending == [0, 1]
    assert report.nearest["pixels"].tolist() == [7, 42]
    assert report.distances["pixels"].max() < 1e-6


def test_lightly_noised_copy_is_flagged(guard, training):
    rs = np.random.RandomState(3)
    noisy = np.clip(training[[11, 90]].astype(np.float64) + rs.normal(0, 4, (2, 64, 64)), 0, 255).astype(np.uint8)
    assert np.abs(noisy.astype(int) - training[[11, 90]]).mean() > 2  # really changed
    report = guard.check(noisy)
    assert report.near_copy.all()
    assert report.nearest["pixels"].tolist() == [11, 90]
    assert (report.ratios("pixels") < 1).all()


def test_mirrored_copy_is_flagged(guard, training):
    report = guard.check(training[[20, 33], :, ::-1])
    assert report.near_copy.all()
    assert report.nearest["pixels"].tolist() == [20, 33] and report.mirrored["pixels"].all()
    assert not guard.check(training[[20]]).mirrored["pixels"].any()
    d = report.to_dict(per_image=True)
    assert d["mirrored"]["pixels"] == [True, True] and d["nearest"]["hog"] == [20, 33]


def test_mirror_off_compares_with_the_images_as_they_are(training):
    plain = MemorizationGuard(training, mirror=False)
    assert plain.describe()["mirror"] is False
    assert plain.check(training[[4]]).near_copy.all()
    assert not plain.check(training[[20], :, ::-1]).mirrored["pixels"].any()


def test_another_distribution_passes(guard):
    report = guard.check(_other_distribution(16))
    assert not report.near_copy.any() and report.offending == [] and report.fraction == 0.0
    for space in guard.spaces:
        assert (report.distances[space] > 2 * report.thresholds[space]).all()


def test_mixed_batch_report_and_seeds(guard, training):
    batch = np.concatenate([_other_distribution(3), training[[5]], _other_distribution(2, seed=9)])
    report = guard.check(batch)
    assert report.offending == [3]
    assert report.fraction == pytest.approx(1 / 6)
    d = report.to_dict(seeds=[100, 101, 102, 103, 104, 105])
    assert d["offending_seeds"] == [103] and d["near_copies"] == 1 and d["checked"] == 6
    with pytest.raises(ValueError, match="2 seeds for 6 checked images"):
        report.to_dict(seeds=[1, 2])


def test_other_sizes_and_depths_are_compared_after_normalization(training):
    big16 = _phantoms(range(20), size=128, bits=12)  # uint16, another resolution
    g = MemorizationGuard(big16)
    assert g.check(big16[[4]]).near_copy.all()
    assert g.check((big16[[4]] >> 4).astype(np.uint8)).nearest["pixels"].tolist() == [4]
    assert g.check(_other_distribution(4, size=48)).fraction == 0.0


def test_duplicates_in_the_training_set_still_flag_exact_copies():
    imgs = _phantoms(range(30))
    imgs = np.concatenate([imgs, imgs[:5]])  # the 1st percentile is now 0
    g = MemorizationGuard(imgs)
    assert min(g.thresholds.values()) == 0.0
    assert g.check(imgs[[2]]).near_copy.all()


def test_subsampled_reference_for_large_sets(training):
    g = MemorizationGuard(training, max_reference=50)
    assert g.reference_index.size == 50 and g.training_nn["pixels"].size == 50
    assert g.check(training[[100]]).near_copy.all()  # checked images search the whole set


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 16, 16), np.uint8), "at least 2 training images"),
        (np.zeros((4, 16, 16, 3), np.uint8), "grayscale"),
        (np.zeros((4, 16, 16), np.int32), "uint8, uint16 or float"),
        (np.zeros((0, 16, 16), np.uint8), "at least 2 training images|empty"),
    ],
)
def test_bad_training_images(bad, message):
    with pytest.raises(ValueError, match=message):
        MemorizationGuard(bad)


def test_bad_images_to_check(guard):
    with pytest.raises(ValueError, match="images to check must be grayscale"):
        guard.check(np.zeros((2, 3, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="images to check are empty"):
        guard.check(np.zeros((0, 64, 64), np.uint8))
    with pytest.raises(ValueError, match="percentile"):
        MemorizationGuard(np.zeros((4, 16, 16), np.uint8), percentile=0)


def test_for_images_file_builds_once_per_dataset_version(tmp_path, training):
    with DatasetWriter(tmp_path, "train", 64, len(training)) as w:
        for i, img in enumerate(training):
            w.append(img, {"i": i})
        dv = w.commit()
    guards = []
    threads = [threading.Thread(target=lambda: guards.append(MemorizationGuard.for_images_file(dv.images_path))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(guards) == 3 and all(g is guards[0] for g in guards)
    assert guards[0].check(load_images(dv)[[3]]).near_copy.all()
    assert guards[0].describe()["training_images"] == len(training)
    with pytest.raises(FileNotFoundError, match="do not exist"):
        MemorizationGuard.for_images_file(tmp_path / "missing.npy")
