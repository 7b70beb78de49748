"""Calibration: every metric the report shows as a quality figure ranks control sets of known quality
correctly, and the memorization check flags the copies (models.metrics.calibration).

The core suite runs on phantoms; the ``shared_data`` suite on the FracAtlas radiographs in
../shared/data/radiographs (skipped, with the reason, in a clone without them).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.metrics.calibration import ANATOMY_ONLY, COPIES, NOT_QUALITY, QUALITY_METRICS, TIERS, calibration_table, control_sets, ranking_failures
from models.metrics.evaluate import EvaluationSettings, Inputs, evaluate_images
from models.metrics.features import HOGFeatures
from models.metrics.memorization import MemorizationGuard
from models.metrics.radiomics import RadiomicsFeatures
from service.data.phantom import phantom_image
from tests.metrics.conftest import labelled_phantoms

# Beside the repository, or beside the folder that holds the repository's worktrees.
RADIOGRAPHS = next((p / "shared" / "data" / "radiographs" for p in Path(__file__).resolve().parents[3:5] if (p / "shared" / "data" / "radiographs").is_dir()),
                   Path(__file__).resolve().parents[2].parent / "shared" / "data" / "radiographs")
DISTANCES = ("fid", "kid", "precision_recall", "ssim_psnr", "diversity", "memorization")


def _split(images: np.ndarray, labels=None, seed: int = 0):
    perm = np.random.RandomState(seed).permutation(len(images))
    k = len(images) // 3
    parts = [perm[:k], perm[k : 2 * k], perm[2 * k : 3 * k]]
    sets = [images[p] for p in parts]
    return sets if labels is None else sets + [[labels[i] for i in p] for p in parts]


def _run_controls(training, reference, held_out, metrics, training_labels=None, reference_labels=None, epochs=30):
    inputs = Inputs(
        reference=reference, training=training, guard=MemorizationGuard(training),
        extractors=[HOGFeatures(), RadiomicsFeatures(size=64, workers=1)] if "fid" in metrics else [],
        training_labels={"body_part": training_labels} if training_labels else {},
        reference_labels={"body_part": reference_labels} if reference_labels else {}, reference_held_out=True,
    )
    settings = EvaluationSettings(metrics=metrics, n=len(held_out), kid_subsets=20, diversity_pairs=100, tstr_epochs=epochs)
    out = {name: evaluate_images(images, inputs, settings) for name, images in control_sets(training, held_out).items()}
    return {name: o["metrics"] for name, o in out.items()}, out


def _assert_calibrated(metrics_by_control, names, not_asked=()):
    """Every metric in ``names`` ranks the controls; pairs that involve a control in ``not_asked`` are not checked."""
    table = calibration_table(metrics_by_control)
    report = {name: [f for f in table[name]["failures"] if not any(f.startswith(c + " ") or f" {c} (" in f for c in not_asked)] for name in names}
    assert not any(report.values()), report
    return table


def test_ranking_rule():
    good = {c: float(t) for c, t in TIERS.items()}  # lower is better, tier by tier
    assert ranking_failures(good, "lower") == []
    swapped = {**good, "blurred copies": 2.0}  # a degraded set as bad as noise
    assert ranking_failures(swapped, "lower") and "blurred copies" in ranking_failures(swapped, "lower")[0]
    # TSTR's controls: anatomy (tiers 0 and 1) above none (tier 2); ties inside the anatomy tier are fine.
    utility = {c: (1.0 if t < 2 else 0.5) for c, t in TIERS.items()}
    assert ranking_failures(utility, "higher", anatomy_only=True) == [] and ranking_failures(utility, "higher")


def test_quality_and_not_quality_metrics_are_disjoint_and_described():
    assert not set(QUALITY_METRICS) & set(NOT_QUALITY)
    assert {"hog_fd", "hog_kid", "tstr_trtr_ratio"} <= set(QUALITY_METRICS)
    assert "not a quality ranking" in NOT_QUALITY["ssim"] and "not a quality ranking" in NOT_QUALITY["psnr"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_phantom_controls_rank_correctly_and_copies_are_flagged():
    images = np.stack([phantom_image(64, 64, bits_stored=8, seed=s, noise=0.03)[0] for s in range(300)])
    training, reference, held_out = _split(images)
    by_control, _ = _run_controls(training, reference, held_out, DISTANCES)
    distances = [m for m in QUALITY_METRICS if m not in ANATOMY_ONLY]
    # A phantom's only texture is its edges: a 1.3 px blur removes most of its HOG gradient energy, and
    # HOG scores blurred phantoms with the noise sets (FD 15.5-16.8 against 12.1-25.0). Radiographs keep
    # trabecular and soft-tissue gradients under that blur: the FracAtlas suite below asks the full order.
    table = _assert_calibrated(by_control, distances, not_asked=("blurred copies",))
    # What the report does not show as quality fails its controls here too (the reason it is not shown).
    for name in ("hog_precision", "hog_recall", "ssim", "psnr", "diversity", "radiomics_frd"):
        assert table[name]["failures"], name
    for copies in COPIES:
        assert by_control[copies]["memorization"] >= 0.9, copies
    assert by_control["held-out real"]["memorization"] <= 0.05


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_phantom_tstr_separates_anatomy_from_none():
    images, labels = labelled_phantoms(range(150))
    training, reference, held_out, t_labels, r_labels, _ = _split(images, labels)
    by_control, out = _run_controls(training, reference, held_out, ("tstr",), t_labels, r_labels, epochs=20)
    _assert_calibrated(by_control, ["tstr_trtr_ratio"])
    assert out["held-out real"]["utility"]["body_part"]["trtr"]["accuracy"] >= 0.9


def _fracatlas(size: int = 64) -> tuple[np.ndarray, list[str]]:
    """The radiographs at ``size`` px, aspect kept, padded with black (as ``dataset build --fit pad``),
    and their body part (the first of mixed labels, as ``dataset import-images``)."""
    with open(RADIOGRAPHS / "manifest.csv", newline="") as f:
        body = {r["filename"]: r["body_part"].split("+")[0].upper() for r in csv.DictReader(f)}
    files = sorted(p for p in RADIOGRAPHS.glob("*.jpg") if p.name in body)
    out = []
    for path in files:
        with Image.open(path) as im:
            im = im.convert("L")
            scale = size / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.Resampling.LANCZOS)
            canvas = Image.new("L", (size, size), 0)
            canvas.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
            out.append(np.asarray(canvas))
    return np.stack(out), [body[p.name] for p in files]


@pytest.mark.slow
@pytest.mark.timeout(3600)
@pytest.mark.shared_data
def test_fracatlas_controls_rank_correctly_and_copies_are_flagged():
    if not (RADIOGRAPHS / "manifest.csv").is_file():
        pytest.skip(f"the FracAtlas radiographs are not at {RADIOGRAPHS} (they live beside the repository on the project's machines)")
    images, labels = _fracatlas()
    training, reference, held_out, t_labels, r_labels, _ = _split(images, labels)
    by_control, _ = _run_controls(training, reference, held_out, DISTANCES + ("tstr",), t_labels, r_labels)
    table = _assert_calibrated(by_control, list(QUALITY_METRICS))
    for name in ("hog_precision", "ssim", "psnr", "diversity"):
        assert table[name]["failures"], name
    for copies in COPIES:
        assert by_control[copies]["memorization"] >= 0.9, copies
    assert by_control["held-out real"]["memorization"] <= 0.05
