"""The download-free feature spaces: HOG descriptors and radiomic features, the two FRD fixes, the cache."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.metrics import radiomics as rad
from models.metrics.evaluate import EvaluationSettings, FeatureCache, Inputs, evaluate_images
from models.metrics.features import HOGFeatures, extract_features
from service.data.phantom import phantom_image


def _phantoms(seeds, size=64, noise=0.03):
    return np.stack([phantom_image(size, size, bits_stored=8, seed=s, noise=noise)[0] for s in seeds])


def test_radiomic_features_are_named_finite_and_follow_their_definitions():
    x = _phantoms([0])[0].astype(np.float64) / 255
    f = rad.radiomic_features(x)
    names = rad.feature_names()
    assert f.shape == (len(names),) == (8 * (17 + 23 + 12),) and np.isfinite(f).all()
    col = dict(zip(names, f))
    assert col["original_firstorder_mean"] == pytest.approx(x.mean())
    assert col["original_firstorder_variance"] == pytest.approx(x.var())
    assert col["original_firstorder_p90"] == pytest.approx(np.percentile(x, 90))
    # GLCM of a two-level checkerboard: every neighbour pair at 0 and 90 degrees differs, at 45/135 it does not.
    board = (np.indices((16, 16)).sum(0) % 2).astype(np.int64)
    g = dict(zip(rad.GLCM, rad.glcm(board, levels=2)))
    assert g["contrast"] == pytest.approx(0.5) and g["joint_energy"] == pytest.approx(0.5, rel=1e-4)
    # Runs: a row of 16 equal pixels is one run of length 16; the checkerboard has only runs of 1 along rows/columns.
    assert dict(zip(rad.GLRLM, rad.glrlm(board, levels=2)))["sre"] == pytest.approx(1.0)
    flat = np.zeros((16, 16), np.int64)
    assert dict(zip(rad.GLRLM, rad.glrlm(flat, levels=2)))["run_percentage"] == pytest.approx(1 / 16)


def test_worker_processes_give_the_same_features_as_one_process():
    images = _phantoms(range(12)).astype(np.float64) / 255
    inline = rad.RadiomicsFeatures(size=64, workers=1).compute(images)
    pooled = rad.RadiomicsFeatures(size=64, workers=2)
    try:
        np.testing.assert_array_equal(pooled.compute(images), inline)
    finally:
        pooled.close()


def test_features_that_barely_vary_are_dropped_and_z_scores_clipped():
    rs = np.random.RandomState(0)
    real = np.column_stack([rs.normal(10, 2, 50), np.full(50, 1e-30) + rs.normal(0, 1e-33, 50), rs.normal(0, 1, 50)])
    fake = np.column_stack([rs.normal(10, 2, 40), rs.normal(1e-3, 1e-4, 40), rs.normal(100, 1, 40)])
    rz, fz, info = rad.standardize_against_reference(real, fake)
    # The ~1e-30 column (black padding in wavelet bands) would explode to z ~ 1e26 without the drop.
    assert info["features_kept"] == 2 and info["features_dropped_near_constant"] == 1 and rz.shape == (50, 2)
    assert np.abs(rz.mean(0)).max() < 1e-9 and fz[:, 1].max() == 5.0 and info["generated_values_clipped"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="constant across the reference set"):
        rad.standardize_against_reference(np.ones((5, 3)), np.zeros((5, 3)))


def test_frd_is_the_log_of_the_frechet_distance_and_separates_real_from_noise():
    real, held = _phantoms(range(40)), _phantoms(range(100, 140))
    noise = np.random.RandomState(1).randint(0, 256, real.shape).astype(np.uint8)
    inputs = Inputs(reference=real, extractors=[rad.RadiomicsFeatures(size=64, workers=1), HOGFeatures()])
    settings = EvaluationSettings(metrics=("fid", "kid", "precision_recall"), n=40, kid_subsets=10)
    good = evaluate_images(held, inputs, settings)
    bad = evaluate_images(noise, inputs, settings)
    space = good["feature_spaces"]["radiomics"]
    assert good["metrics"]["radiomics_frd"] == pytest.approx(math.log(space["frechet_distance"]))
    assert space["standardization"]["features_kept"] == space["dim"] < len(rad.feature_names())  # padding-like constants dropped
    for key in ("radiomics_frd", "radiomics_kid", "hog_fd", "hog_kid"):
        assert good["metrics"][key] < bad["metrics"][key], key
    assert good["metrics"]["hog_recall"] > bad["metrics"]["hog_recall"]
    assert good["feature_spaces"]["hog"]["dim"] == HOGFeatures.dim == 1764


def test_reference_features_are_cached_by_dataset_hash(tmp_path):
    real = _phantoms(range(20))
    extractor = rad.RadiomicsFeatures(size=64, workers=1)
    cache = FeatureCache(tmp_path)
    inputs = Inputs(reference=real, reference_key="abc123", extractors=[extractor], cache=cache)
    settings = EvaluationSettings(metrics=("fid",), n=20)
    first = evaluate_images(_phantoms(range(50, 70)), inputs, settings)
    (path,) = tmp_path.glob("abc123-radiomics-v1-64px-32levels.npy")
    np.testing.assert_array_equal(np.load(path), extract_features(extractor, real))
    # A second evaluation reads the cache: a poisoned cache file changes the result, so it was used.
    np.save(path, np.load(path) * 1.5)
    second = evaluate_images(_phantoms(range(50, 70)), inputs, settings)
    assert second["metrics"]["radiomics_frd"] != first["metrics"]["radiomics_frd"]


def test_hog_features_as_an_extractor():
    x = torch.rand(3, 1, 80, 80)
    assert HOGFeatures()(x).shape == (3, 1764)
    with pytest.raises(ValueError, match="at least 16 px"):
        rad.RadiomicsFeatures(size=8)
