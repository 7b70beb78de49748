"""Control sets with a known quality order, and which metrics rank them correctly.

A metric deserves to be read as a quality figure only if it orders image sets whose quality is known
by construction. Given real images split into a training set T, a reference set R (what the metrics
compare with) and a held-out set H of other patients, the controls are, from best to worst:

====  =====================  ==============================================================================
tier  control                what it is
====  =====================  ==============================================================================
0     ``held-out real``      H: real images of other patients, the best a generator can do
0     ``mirrored copies``    T flipped left-right: real radiographs (and near-copies of training patients)
1     ``blurred copies``     T blurred (Gaussian, sigma = 2 % of the side): anatomy kept, detail lost
1     ``noisy copies``       T plus Gaussian noise (sigma 0.08 of the range): anatomy kept, texture wrong
2     ``smooth noise``       Gaussian-filtered noise with the reference's mean and spread: no anatomy
2     ``iid noise``          independent pixel noise with the reference's mean and spread: no anatomy
2     ``one image repeated`` T[0] for every image: total mode collapse
2     ``mean image``         the mean of T for every image: collapse onto a blur of everything
====  =====================  ==============================================================================

A distance ranks the controls correctly when every control of a tier scores strictly better than every
control of the next tier (order within a tier is not asked: a mirrored radiograph is as real as any).
TSTR/TRTR asks whether a classifier of body parts learns from the images, for which a blurred or noisy
radiograph is still a radiograph of its body part: its controls are tiers 0 and 1 (anatomy) strictly
above tier 2 (no anatomy, or one image). The memorization check must flag the copies (mirrored and
noisy copies).

:data:`QUALITY_METRICS` lists the metrics that pass on the phantom suite of the tests and on FracAtlas
(``tests/metrics/test_calibration.py``; the whole table is in ``bench/RESULTS.md``). The report shows
only these as quality figures; :data:`NOT_QUALITY` says what the others measure instead. Measured at
64 px (FracAtlas split in thirds): the radiomic distance (FRD) orders real < degraded < noise, but
scores a collapsed set (one real image repeated) better than noisy or blurred copies of real images --
the Frechet distance's covariance term can add at most the reference's trace (the number of kept
features) for a set with no spread, while clipped z-scores let degraded texture add up to 25 per
feature -- so it is reported as a texture distance beside the quality figures, not as one of them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
from scipy import ndimage

TIERS: dict[str, int] = {
    "held-out real": 0,
    "mirrored copies": 0,
    "blurred copies": 1,
    "noisy copies": 1,
    "smooth noise": 2,
    "iid noise": 2,
    "one image repeated": 2,
    "mean image": 2,
}
COPIES = ("mirrored copies", "noisy copies")
BLUR_SIGMA = 0.02  # of the image side
NOISE_SIGMA = 0.08  # of the intensity range

# Flat metric name (evaluation.json "metrics") -> (label, better direction, feature space or task).
QUALITY_METRICS: dict[str, tuple[str, str, str]] = {
    "hog_fd": ("Frechet distance", "lower", "HOG"),
    "hog_kid": ("KID", "lower", "HOG"),
    "tstr_trtr_ratio": ("TSTR / TRTR balanced accuracy", "higher", "body-part classifier"),
}
# Metrics reported but not ranked as quality, and why (what they measure instead).
NOT_QUALITY: dict[str, str] = {
    "radiomics_frd": "texture distance: ranks real < degraded < noise, but a collapsed set (one image repeated) above blurred or noisy copies",
    "radiomics_kid": "texture distance: a collapsed set (one image repeated) scores better than blurred or noisy copies",
    "hog_precision": "fidelity only: one image repeated scores 1.0 (fails the controls)",
    "hog_recall": "coverage only: blurred copies score as high as new patients, smooth noise can score 1.0 (fails the controls)",
    "radiomics_precision": "fidelity only: one image repeated scores high (fails the controls)",
    "radiomics_recall": "coverage only: every degraded set scores 0 (fails the controls)",
    "ssim": "similarity to nearest reference, not a quality ranking: blurred copies and the mean image score above new patients",
    "psnr": "similarity to nearest reference, not a quality ranking: blurred copies and the mean image score above new patients",
    "diversity": "mode-collapse indicator only: noise scores as the most diverse set",
}
# Metrics whose controls are anatomy (tiers 0-1) vs none (tier 2), not the full order.
ANATOMY_ONLY = ("tstr_trtr_ratio", "tstr_accuracy")
# Inception-space metrics are the literature's standard; they cannot be calibrated without the weights file.
INCEPTION_METRICS: dict[str, tuple[str, str]] = {"fid": ("FID", "lower"), "kid": ("KID", "lower"), "precision": ("Precision", "higher"), "recall": ("Recall", "higher")}


def _as_unit(images: np.ndarray) -> tuple[np.ndarray, float]:
    top = 255.0 if images.dtype == np.uint8 else 65535.0 if images.dtype == np.uint16 else 1.0
    return images.astype(np.float64) / top, top


def _back(x: np.ndarray, dtype: np.dtype, top: float) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.rint(x * top).astype(dtype) if top > 1 else x.astype(dtype)


def control_sets(training: np.ndarray, held_out: np.ndarray, n: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """The control sets of the module docstring, ``n`` images each (default: as many as ``held_out``)."""
    training = np.asarray(training)
    held_out = np.asarray(held_out)
    n = int(n or held_out.shape[0])
    rs = np.random.RandomState(seed)
    t, top = _as_unit(training[np.arange(n) % training.shape[0]])
    side = training.shape[-1]
    mean, spread = float(t.mean()), float(t.std())
    smooth = ndimage.gaussian_filter(rs.standard_normal(t.shape), sigma=(0, 0.05 * side, 0.05 * side))
    smooth = mean + spread * (smooth - smooth.mean()) / (smooth.std() + 1e-12)
    dtype = training.dtype
    sets = {
        "held-out real": held_out[np.arange(n) % held_out.shape[0]],
        "mirrored copies": _back(t[:, :, ::-1], dtype, top),
        "blurred copies": _back(ndimage.gaussian_filter(t, sigma=(0, BLUR_SIGMA * side, BLUR_SIGMA * side)), dtype, top),
        "noisy copies": _back(t + rs.normal(0, NOISE_SIGMA, t.shape), dtype, top),
        "smooth noise": _back(smooth, dtype, top),
        "iid noise": _back(mean + spread * rs.standard_normal(t.shape), dtype, top),
        "one image repeated": _back(np.repeat(t[:1], n, axis=0), dtype, top),
        "mean image": _back(np.repeat(t.mean(0, keepdims=True), n, axis=0), dtype, top),
    }
    return sets


def ranking_failures(values: Mapping[str, float | None], better: str, anatomy_only: bool = False) -> list[str]:
    """Pairs of controls (one tier apart or more) the metric orders wrongly; empty when it ranks all correctly.

    ``anatomy_only``: tiers 0 and 1 count as one (the TSTR controls)."""
    sign = 1.0 if better == "lower" else -1.0
    tiers = {c: (0 if t < 2 else 1) if anatomy_only else t for c, t in TIERS.items()}
    failures = []
    for a, ta in tiers.items():
        for b, tb in tiers.items():
            if ta >= tb:
                continue
            va, vb = values.get(a), values.get(b)
            if va is None or vb is None or not np.isfinite(va) or not np.isfinite(vb):
                failures.append(f"{a} or {b}: no value")
            elif not sign * va < sign * vb:
                failures.append(f"{a} ({va:.4g}) is not {'below' if better == 'lower' else 'above'} {b} ({vb:.4g})")
    return failures


def metric_direction(name: str) -> str | None:
    if name in QUALITY_METRICS:
        return QUALITY_METRICS[name][1]
    if name.endswith(("_fd", "_frd", "_kid")) or name in ("fid", "kid"):
        return "lower"
    if name.endswith(("_precision", "_recall")) or name in ("precision", "recall", "ssim", "psnr", "tstr_trtr_ratio", "tstr_accuracy"):
        return "higher"
    if name == "diversity":
        return "lower"
    return None


def calibration_table(results: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """From {control: evaluation "metrics" dict} to {metric: {"values": {control: v}, "failures": [...]}}."""
    names = sorted({k for m in results.values() for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)})
    table = {}
    for name in names:
        direction = metric_direction(name)
        if direction is None:
            continue
        values = {c: results[c].get(name) for c in results}
        table[name] = {"better": direction, "values": values, "failures": ranking_failures(values, direction, name in ANATOMY_ONLY)}
    return table
