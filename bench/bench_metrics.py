"""Metrics benchmark: each synthpacs metric against the peer implementation it replaces, in the same run.

* Memorization guard (the release path runs it on every generated study): build over the training
  set and check 16 images, against a brute-force nearest-neighbour search over full-resolution pixels
  in NumPy (what a first implementation would do).
* SSIM + PSNR of image pairs: batched float64 (SciPy filters on the CPU, convolutions on GPUs) against scikit-image's
  ``structural_similarity`` / ``peak_signal_noise_ratio`` called pair by pair (the values must agree).
* Frechet distance at 2048 dimensions: the eigenvalue form against pytorch-fid's
  ``scipy.linalg.sqrtm(sigma1 @ sigma2)`` (the values must agree).
* FID InceptionV3 features on the CPU, images/s (architecture only: deterministic weights, which cost
  the same as the real ones); no peer runs here (pytorch-fid needs torchvision).

* Feature spaces without weights (issue 15): seconds per 1,000 images for HOG and radiomics (one
  process, and the worker pool), beside the FID Inception network's cost on the same CPU, at 64 px.
* The control table: every metric on every control set of :mod:`models.metrics.calibration` at 64 px
  (FracAtlas split in thirds: training, reference, held-out), with whether it ranks them correctly.

Training images: ../shared/data/radiographs (FracAtlas, grayscale, resized to 256 px) when present,
otherwise phantoms.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from scipy import linalg

from bench.results import write_section
from models.metrics.frechet import frechet_distance
from models.metrics.inception import FIDInceptionV3
from models.metrics.memorization import MemorizationGuard
from models.metrics.ssim import psnr, ssim

# Beside the repository, or beside the folder that holds the repository's worktrees.
RADIOGRAPHS = next((p / "shared" / "data" / "radiographs" for p in Path(__file__).resolve().parents[2:4] if (p / "shared" / "data" / "radiographs").is_dir()),
                   Path(__file__).resolve().parents[2] / "shared" / "data" / "radiographs")
SIZE = 256


def _training_images(limit: int = 500) -> tuple[np.ndarray, str]:
    files = sorted(RADIOGRAPHS.glob("*.jpg"))[:limit] if RADIOGRAPHS.is_dir() else []
    if files:
        imgs = [np.asarray(Image.open(f).convert("L").resize((SIZE, SIZE), Image.Resampling.LANCZOS)) for f in files]
        return np.stack(imgs), f"{len(files)} FracAtlas radiographs at {SIZE} px"
    from service.data.phantom import phantom_image

    return np.stack([phantom_image(SIZE, SIZE, bits_stored=8, seed=s)[0] for s in range(limit)]), f"{limit} phantoms at {SIZE} px"


def _best(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _memorization(train: np.ndarray) -> list[str]:
    rs = np.random.RandomState(0)
    queries = np.clip(train[rs.choice(len(train), 16, replace=False)].astype(np.float64) + rs.normal(0, 4, (16, SIZE, SIZE)), 0, 255).astype(np.uint8)
    build = _best(lambda: MemorizationGuard(train), repeat=2)
    guard = MemorizationGuard(train)
    check = _best(lambda: guard.check(queries))
    flat = train.reshape(len(train), -1).astype(np.float32)

    def brute() -> np.ndarray:
        q = queries.reshape(16, -1).astype(np.float32)
        return np.array([np.argmin(((flat - v) ** 2).sum(1)) for v in q])

    peer = _best(brute)
    found = guard.check(queries)
    return [
        "### Memorization guard",
        "",
        f"16 lightly noised training images (sigma 4/255) checked against the training set; flagged {int(found.near_copy.sum())}/16.",
        "",
        "| step | synthpacs | brute-force NumPy, full-resolution pixels | synthpacs / peer speed |",
        "| --- | ---: | ---: | ---: |",
        f"| build (training NN distances, both spaces) | {build:.2f} s | - | - |",
        f"| check 16 images | {check * 1000:.1f} ms | {peer * 1000:.1f} ms | {peer / check:.1f}x |",
    ]


def _detection(images: np.ndarray) -> list[str]:
    """What the guard flags on real data: a training/held-out split, and altered training copies."""
    rs = np.random.RandomState(0)
    perm = rs.permutation(len(images))
    n_train = int(len(images) * 0.84)
    train, held = images[perm[:n_train]], images[perm[n_train:]]
    guard = MemorizationGuard(train)
    k = min(50, n_train)
    cases = {
        "held-out real images (other patients)": held,
        "training copies + Gaussian noise sigma 6/255": np.clip(train[:k] + rs.normal(0, 6, train[:k].shape), 0, 255).astype(np.uint8),
        "training copies shifted 4 px": np.roll(train[:k], 4, axis=2),
        "training copies, contrast x0.8 + 30": np.clip(train[:k] * 0.8 + 30, 0, 255).astype(np.uint8),
        "training copies flipped left-right": train[:k, :, ::-1],
    }
    lines = [
        "### What the memorization guard flags",
        "",
        f"Guard built on {n_train} images, threshold = 1st percentile of their own nearest-neighbour distances.",
        "",
        "| images checked | flagged | by pixels | by HOG |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, batch in cases.items():
        r = guard.check(batch)
        by = {s: int((r.distances[s] <= guard.thresholds[s]).sum()) for s in guard.spaces}
        lines.append(f"| {label} | {int(r.near_copy.sum())}/{len(batch)} | {by['pixels']} | {by['hog']} |")
    return lines


def _ssim_psnr(train: np.ndarray) -> list[str]:
    n = 32
    a = train[:n].astype(np.float64)
    b = np.clip(a + np.random.RandomState(1).normal(0, 8, a.shape), 0, 255)
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    ours_t = _best(lambda: (ssim(a, b, 255.0), psnr(a, b, 255.0)))
    ref_t = _best(lambda: [(structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0), peak_signal_noise_ratio(x, y, data_range=255.0)) for x, y in zip(a, b)])
    ours = ssim(a, b, 255.0).numpy()
    ref = np.array([structural_similarity(x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255.0) for x, y in zip(a, b)])
    return [
        "### SSIM + PSNR",
        "",
        f"| pairs | synthpacs (float64, batched) | scikit-image {__import__('skimage').__version__} (pair by pair) | speed | max abs SSIM difference |",
        "| ---: | ---: | ---: | ---: | ---: |",
        f"| {n} x {SIZE}x{SIZE} | {ours_t * 1000:.0f} ms | {ref_t * 1000:.0f} ms | {ref_t / ours_t:.1f}x | {np.abs(ours - ref).max():.1e} |",
    ]


def _frechet() -> list[str]:
    rs = np.random.RandomState(2)
    d = 2048
    f1 = rs.standard_normal((3000, d)) @ (np.eye(d) + 0.05 * rs.standard_normal((d, d)))
    f2 = rs.standard_normal((3000, d)) + 0.1
    mu1, s1, mu2, s2 = f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False)
    ours_t = _best(lambda: frechet_distance(mu1, s1, mu2, s2), repeat=1)

    def pytorch_fid_way() -> float:
        covmean = linalg.sqrtm(s1.dot(s2))
        covmean = covmean.real if np.iscomplexobj(covmean) else covmean
        diff = mu1 - mu2
        return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))

    t = time.perf_counter()
    peer = pytorch_fid_way()
    peer_t = time.perf_counter() - t
    ours = frechet_distance(mu1, s1, mu2, s2)
    return [
        "### Frechet distance, 2048 dimensions",
        "",
        "| synthpacs (eigh of S1^1/2 S2 S1^1/2) | pytorch-fid's scipy.linalg.sqrtm(S1 S2) | speed | relative difference of the values |",
        "| ---: | ---: | ---: | ---: |",
        f"| {ours_t:.2f} s | {peer_t:.2f} s | {peer_t / ours_t:.1f}x | {abs(ours - peer) / peer:.1e} |",
    ]


def _inception() -> list[str]:
    net = FIDInceptionV3().eval()
    x = torch.rand(16, 3, SIZE, SIZE)
    with torch.inference_mode():
        net(x[:2])
        t = _best(lambda: net(x), repeat=2)
    return [
        "### FID Inception features (CPU)",
        "",
        f"{16 / t:.1f} images/s at batch 16 ({SIZE} px inputs resized to 299), {torch.get_num_threads()} threads; no peer measured "
        "(pytorch-fid needs torchvision, which does not import beside this torch build). 5000 images: about "
        f"{5000 * t / 16 / 60:.0f} min on this CPU.",
    ]


def _padded(size: int = 64) -> tuple[np.ndarray, list[str], str]:
    """FracAtlas at ``size`` px, aspect kept, padded with black (``dataset build --fit pad``), with body
    parts (first of mixed labels); phantoms (two 'body parts': upright, transposed) without it."""
    import csv

    manifest = RADIOGRAPHS / "manifest.csv"
    if manifest.is_file():
        with open(manifest, newline="") as f:
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
        return np.stack(out), [body[p.name] for p in files], f"{len(files)} FracAtlas radiographs at {size} px (padded)"
    from service.data.phantom import phantom_image

    imgs = [phantom_image(size, size, bits_stored=8, seed=s, noise=0.03)[0] for s in range(300)]
    labels = ["LEG" if s % 2 == 0 else "HAND" for s in range(300)]
    imgs = [im if lab == "LEG" else np.ascontiguousarray(im.T) for im, lab in zip(imgs, labels)]
    return np.stack(imgs), labels, "300 phantoms at 64 px"


def _feature_speed(images: np.ndarray) -> list[str]:
    from models.metrics.features import HOGFeatures, extract_features
    from models.metrics.radiomics import RadiomicsFeatures, default_workers

    n = min(len(images), 400)
    x = images[:n]
    rows = []
    for label, extractor in (
        ("HOG (1764 dimensions)", HOGFeatures()),
        ("radiomics, 1 process (416 features)", RadiomicsFeatures(size=64, workers=1)),
        (f"radiomics, {default_workers()} worker processes", RadiomicsFeatures(size=64)),
    ):
        extract_features(extractor, x[:8])  # warm-up (starts the pool)
        t = _best(lambda: extract_features(extractor, x), repeat=2)
        getattr(extractor, "close", lambda: None)()
        rows.append(f"| {label} | {1000 * t / n:.1f} s |")
    net = FIDInceptionV3().eval()
    xi = torch.rand(16, 3, 64, 64)
    with torch.inference_mode():
        net(xi[:2])
        t = _best(lambda: net(xi), repeat=2)
    rows.append(f"| FID Inception (architecture, 64 px input resized to 299) | {1000 * t / 16:.1f} s |")
    return [
        "### Feature spaces: seconds per 1,000 images (CPU, 64 px)",
        "",
        f"{n} images, best of 2; {torch.get_num_threads()} torch threads. PyRadiomics, for comparison, measured 0.35-0.85 s per 256 px image on one core (NOTES.md), i.e. 350-850 s per 1,000.",
        "",
        "| feature space | s / 1,000 images |",
        "| --- | ---: |",
        *rows,
    ]


def _control_table(images: np.ndarray, labels: list[str], what: str) -> list[str]:
    from models.metrics.calibration import COPIES, QUALITY_METRICS, TIERS, calibration_table, control_sets
    from models.metrics.evaluate import EvaluationSettings, Inputs, evaluate_images
    from models.metrics.features import HOGFeatures
    from models.metrics.radiomics import RadiomicsFeatures

    perm = np.random.RandomState(0).permutation(len(images))
    k = len(images) // 3
    parts = [perm[:k], perm[k : 2 * k], perm[2 * k : 3 * k]]
    training, reference, held_out = (images[p] for p in parts)
    radiomics = RadiomicsFeatures(size=64)
    inputs = Inputs(
        reference=reference, training=training, guard=MemorizationGuard(training), extractors=[HOGFeatures(), radiomics],
        training_labels={"body_part": [labels[i] for i in parts[0]]}, reference_labels={"body_part": [labels[i] for i in parts[1]]},
        reference_held_out=True,
    )
    settings = EvaluationSettings(metrics=("fid", "kid", "precision_recall", "ssim_psnr", "diversity", "memorization", "tstr"), n=k, kid_subsets=50, diversity_pairs=200)
    results = {}
    for name, x in control_sets(training, held_out).items():
        results[name] = evaluate_images(x, inputs, settings)["metrics"]
        print(f"control {name}: done", flush=True)
    radiomics.close()
    table = calibration_table(results)
    names = list(TIERS)
    head = "| metric | " + " | ".join(f"{n} (tier {TIERS[n]})" for n in names) + " | ranks correctly |"
    lines = [
        "### Control table (64 px)",
        "",
        f"{what}, split in thirds with seed 0: training set T ({k}), reference R ({k}), held-out H ({k}); every metric against R, "
        "memorization against T. Controls (`models.metrics.calibration`): tier 0 = H and mirrored copies of T; tier 1 = blurred "
        "(sigma 2 % of the side) and noisy (sigma 0.08) copies of T; tier 2 = smooth noise, iid noise, T[0] repeated, the mean of T. "
        "A distance ranks correctly when each tier scores strictly better than every set of the next; TSTR/TRTR when tiers 0-1 "
        "score above tier 2. Quality figures in the report: " + ", ".join(f"`{m}`" for m in QUALITY_METRICS) + ".",
        "",
        head,
        "| --- | " + " | ".join("---:" for _ in names) + " | --- |",
    ]
    for metric, row in table.items():
        cells = " | ".join("-" if row["values"][n] is None else f"{row['values'][n]:.4g}" for n in names)
        verdict = "yes" if not row["failures"] else f"no ({len(row['failures'])} pairs; e.g. {row['failures'][0]})"
        lines.append(f"| `{metric}` ({row['better']} is better) | {cells} | {verdict} |")
    mem = " | ".join(f"{100 * (results[n].get('memorization') or 0):.0f} %" for n in names)
    lines.append(f"| memorization: flagged as near-copies of T | {mem} | copies ({', '.join(COPIES)}) flagged: "
                 f"{'yes' if all((results[c].get('memorization') or 0) >= 0.9 for c in COPIES) else 'no'} |")
    return lines


def main() -> None:
    train, what = _training_images()
    print(f"training set: {what}", flush=True)
    load = os.getloadavg()[0]
    parts = [
        "## Metrics (`bench/bench_metrics.py`)",
        "",
        f"Training set: {what}. Best of 2-3 runs unless one. Load average at the start: {load:.1f} on {os.cpu_count()} cores "
        "(other processes share the CPU; the ratios are measured side by side, the absolute times move with the load).",
    ]
    for section in (_memorization(train), _detection(train), _ssim_psnr(train), _frechet(), _inception()):
        print("\n".join(section), flush=True)
        parts += [""] + section
    write_section("metrics", "\n".join(parts))
    calibration_main()


def calibration_main() -> None:
    """The feature spaces' cost and the control table, one run on the same images (its own section)."""
    small, labels, what = _padded(64)
    load = os.getloadavg()[0]
    parts = [
        "## Metrics without weights, and the control table (`bench/bench_metrics.py`)",
        "",
        f"Images: {what}. Load average at the start: {load:.1f} on {os.cpu_count()} cores (other processes share the CPU: the "
        "absolute times move with the load; the control table does not).",
    ]
    for make in (lambda: _feature_speed(small), lambda: _control_table(small, labels, what)):
        section = make()
        print("\n".join(section), flush=True)
        parts += [""] + section
    write_section("metrics-calibration", "\n".join(parts))


if __name__ == "__main__":
    main()
