"""Evaluate a generator (or a set of generated images) against real images: every metric in one place.

Metrics (names used in ``evaluation.json``, tables and snapshot records):

``fid``, ``kid``        Frechet and kernel distances on FID Inception pool3 features
                        (:mod:`.frechet`, :mod:`.kid`); skipped, with the reason, without the weights file.
``precision``, ``recall``  improved precision and recall, k = 3, on the same features (:mod:`.precision_recall`).
``hog_*``, ``radiomics_*``  the same three in the download-free spaces (HOG descriptors, radiomic
                        features z-scored against the reference set, :mod:`.radiomics`): ``hog_fd``,
                        ``radiomics_frd`` (log of the Frechet distance, FRD), ``*_kid``, ``*_precision``,
                        ``*_recall``; on whenever the metric names above are asked for.
``tstr_*``              train on synthetic, test on real next to train on real (:mod:`.utility`): body
                        part (and view) classifiers, accuracy on the held-out reference set, and the ratio.
``ssim``, ``psnr``      each generated image against its nearest (MSE) reference image, mean over the
                        generated images (:mod:`.fidelity`).
``diversity``           mean MS-SSIM over random pairs of generated images, and of reference images
                        beside it (:mod:`.diversity`); lower is more diverse.
``memorization``        fraction of generated images closer to a training image than the training set's
                        1st percentile of its own nearest-neighbour distances, and their seeds
                        (:mod:`.memorization`).

When an in-domain TorchScript network is given, the Frechet distance, KID and precision/recall are
also reported in its feature space under ``feature_spaces[<its name>]``.

Which of these are quality figures (they rank the control sets of :mod:`.calibration` correctly) and
which measure something else is decided in :mod:`.calibration`; the report follows it.

Generated images are quantized exactly as they are delivered (``models.sampling.to_uint`` to the
reference set's bit depth) before any metric sees them, so the numbers describe what a user receives.
"""

from __future__ import annotations

import collections
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from models.conditions import space_of
from models.metrics.conditional import ConditionSampler, sampler_for
from models.metrics.diversity import pairwise_ms_ssim
from models.metrics.features import FeatureExtractor, extract_features
from models.metrics.fidelity import matched_fidelity
from models.metrics.frechet import frechet_distance_features
from models.metrics.images import batches, check_images, to_unit
from models.metrics.kid import kernel_inception_distance
from models.metrics.memorization import MemorizationGuard
from models.metrics.precision_recall import precision_recall
from models.metrics.progress import Progress, Reporter
from models.metrics.utility import Generate, Labelled, tstr
from models.sampling import latents, to_uint

FORMAT = "synthpacs-evaluation/1"
METRICS = ("fid", "kid", "precision_recall", "ssim_psnr", "diversity", "memorization", "tstr")
# Labelling tasks of the TSTR metric: manifest fields, the first one is the headline.
TSTR_TASKS = ("body_part", "view")
# Feature spaces that need no downloaded weights, whose numbers get flat names in "metrics".
FREE_SPACES = ("hog", "radiomics")
# Which metrics need feature networks (the others run on pixels alone).
FEATURE_METRICS = ("fid", "kid", "precision_recall")

DEFINITIONS = {
    "fid": "Frechet distance between Gaussians fitted to FID Inception pool3 features (pytorch-fid weights and preprocessing) of the reference and generated images (Heusel et al. 2017, eq. 6), float64",
    "kid": "unbiased squared MMD with kernel (x.y/d + 1)^3 on the same features, mean (and std) over random subsets (Binkowski et al. 2018, §4)",
    "precision_recall": "improved precision and recall with k = 3 nearest-neighbour manifolds on the same features, at equal counts (the larger set subsampled to the smaller, 10 draws averaged) (Kynkaanniemi et al. 2019)",
    "ssim": "mean over generated images of SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03, data range 1) against the reference image nearest in MSE",
    "psnr": "mean over generated images of 10 log10(1 / MSE) in dB against the reference image nearest in MSE (images in [0, 1]; identical pairs capped at 100 dB)",
    "diversity": "mean MS-SSIM (Wang et al. 2003; scales that fit the image size) over random pairs of generated images; the same for reference images as 'diversity_real'; lower is more diverse",
    "memorization": "fraction of generated images whose nearest training image (32x32 standardized pixels, or HOG) is at or below the training set's 1st percentile of its own nearest-neighbour distances",
    "hog_fd": "Frechet distance between Gaussians fitted to HOG descriptors (64x64 px, 8x8 cells, 2x2 blocks, 9 bins, L2-Hys; 1764 dimensions) of the reference and generated images",
    "hog_kid": "KID (as kid) on the HOG descriptors",
    "hog_precision": "improved precision, k = 3, on the HOG descriptors",
    "hog_recall": "improved recall, k = 3, on the HOG descriptors",
    "radiomics_frd": "Frechet Radiomic Distance (Konz, Osuala et al. 2024): log of the Frechet distance between radiomic features (first order, GLCM, GLRLM of the image, its LoG sigma 1/2/3 and Haar wavelet bands) z-scored with the reference set's mean and std after dropping features that barely vary across it, clipped to +-5",
    "radiomics_kid": "KID (as kid) on the same standardized radiomic features",
    "radiomics_precision": "improved precision, k = 3, on the standardized radiomic features",
    "radiomics_recall": "improved recall, k = 3, on the standardized radiomic features",
    "tstr": "train on synthetic, test on real (Esteban et al. 2017; classification accuracy score, Ravuri & Vinyals 2019): a small CNN classifying body part (and view) trained on generated images (labelled by their condition, or for an unconditional model by a classifier trained on the real training set) and tested on the held-out reference set; tstr_trtr_ratio divides its balanced accuracy (mean recall per class) by that of the same classifier trained on the real training set (TRTR)",
}


@dataclass
class EvaluationSettings:
    """What to compute and how much of it."""

    metrics: tuple[str, ...] = METRICS
    n: int = 5000
    seed_start: int = 0
    psi: float = 1.0
    batch_size: int = 32
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    pr_k: int = 3
    diversity_pairs: int = 1000
    memorization_percentile: float = 1.0
    device: str = "cpu"
    tstr_epochs: int = 30
    tstr_seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {', '.join(unknown)}; known: {', '.join(METRICS)}")
        if self.n < 2:
            raise ValueError(f"at least 2 generated images are needed, got n={self.n}")
        if self.seed_start < 0 or self.seed_start + self.n - 1 > 2**32 - 1:
            raise ValueError("seeds must lie in 0..2**32-1")
        if not np.isfinite(self.psi) or self.psi < 0:
            raise ValueError(f"psi must be a finite number >= 0, got {self.psi}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if self.tstr_epochs < 1:
            raise ValueError(f"tstr_epochs must be at least 1, got {self.tstr_epochs}")
        if self.diversity_pairs < 1 or self.kid_subsets < 1 or self.kid_subset_size < 2 or self.pr_k < 1:
            raise ValueError("diversity_pairs, kid_subsets and pr_k must be at least 1, kid_subset_size at least 2")

    @property
    def seeds(self) -> list[int]:
        return list(range(self.seed_start, self.seed_start + self.n))


def parse_metrics(text: str | Iterable[str]) -> tuple[str, ...]:
    """``"fid,kid,ssim_psnr"`` or ``"all"`` -> a validated tuple (aliases: ``pr``, ``ssim``, ``psnr``)."""
    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    alias = {"pr": "precision_recall", "precision": "precision_recall", "recall": "precision_recall", "ssim": "ssim_psnr", "psnr": "ssim_psnr",
             "trtr": "tstr", "cas": "tstr", "utility": "tstr"}
    out: list[str] = []
    for item in items:
        if item == "all":
            out.extend(METRICS)
            continue
        name = alias.get(item, item)
        if name not in METRICS:
            raise ValueError(f"unknown metric {item!r}; known: all, {', '.join(METRICS)} (aliases pr, ssim, psnr, utility)")
        out.append(name)
    if not out:
        raise ValueError("no metrics named")
    return tuple(dict.fromkeys(out))


def generate_images(G: torch.nn.Module, seeds: Sequence[int], psi: float = 1.0, batch_size: int = 32, bits: int = 8, progress: Reporter | None = None,
                    conditions: Sequence[Mapping[str, str]] | None = None) -> tuple[np.ndarray, float]:
    """Images (N, H, W) of ``bits`` for the given seeds (models.sampling conventions) and images/s.

    Runs on the device G is on, in eval mode, and puts G back in the mode it was in (the training
    runner hands its live networks to snapshot metrics). Multi-channel output (a 3-channel StyleGAN)
    is averaged to gray, as the datasets are grayscale. A conditional generator needs ``conditions``
    (one per seed, :mod:`models.conditions`), an unconditional one takes none.
    """
    space = space_of(G)
    if (space is None) != (conditions is None):
        raise ValueError("a conditional generator needs one condition per seed" if space is not None else "this generator is unconditional: it takes no conditions")
    if conditions is not None and len(conditions) != len(seeds):
        raise ValueError(f"{len(conditions)} conditions for {len(seeds)} seeds")
    try:
        device = next(G.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = G.training
    G.eval()
    out: list[np.ndarray] = []
    p = Progress("generating", len(seeds), progress)
    started = time.perf_counter()
    try:
        with torch.inference_mode():
            for start, stop in batches(len(seeds), batch_size):
                cond = {"c": space.encode_batch(conditions[start:stop], device=device)} if space is not None and conditions is not None else {}
                img = G(latents(seeds[start:stop], G.z_dim, device=device), psi=psi, **cond)
                if img.shape[1] > 1:
                    img = img.mean(1, keepdim=True)
                out.append(to_uint(img, bits=bits)[:, 0])
                p.update(stop - start)
    finally:
        G.train(was_training)
    elapsed = time.perf_counter() - started
    return np.concatenate(out), (len(seeds) / elapsed if elapsed > 0 else 0.0)


def resize_images(images, size: int, batch: int = 256) -> np.ndarray:
    """Float32 (N, size, size) in [0, 1], antialiased bilinear (for comparing sets of different sizes)."""
    images = check_images(images)
    out = []
    for start, stop in batches(images.shape[0], batch):
        x = to_unit(images[start:stop])
        out.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)[:, 0].numpy())
    return np.concatenate(out)


def _cache_name(key: str, extractor: FeatureExtractor) -> str:
    tag = str(getattr(extractor, "cache_key", extractor.name))
    return re.sub(r"[^A-Za-z0-9._-]", "_", f"{key}-{tag}") + ".npy"


class MemoryFeatureCache:
    """The same interface in memory: snapshot metrics reuse the reference features across snapshots."""

    def __init__(self) -> None:
        self._store: dict[str, np.ndarray] = {}

    def get(self, key: str, extractor: FeatureExtractor) -> np.ndarray | None:
        return self._store.get(_cache_name(key, extractor))

    def put(self, key: str, extractor: FeatureExtractor, features: np.ndarray) -> None:
        self._store[_cache_name(key, extractor)] = features


@dataclass
class FeatureCache:
    """Reference-set features kept on disk by (dataset content hash, feature network), so a second
    evaluation against the same dataset does not run the network over it again."""

    folder: Path

    def get(self, key: str, extractor: FeatureExtractor) -> np.ndarray | None:
        path = self.folder / _cache_name(key, extractor)
        try:
            return np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, OSError):
            return None

    def put(self, key: str, extractor: FeatureExtractor, features: np.ndarray) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / _cache_name(key, extractor)
        tmp = path.with_suffix(f".tmp{time.monotonic_ns()}.npy")
        np.save(tmp, features)
        tmp.replace(path)


@dataclass
class Inputs:
    """The image sets of one evaluation."""

    reference: Any  # (N, H, W) real images the distribution metrics compare with
    training: Any | None = None  # (N, H, W) training images for the memorization check
    reference_key: str = ""  # content hash of the reference set, for the feature cache
    extractors: list[FeatureExtractor] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # metric -> why it cannot run (e.g. no weights)
    cache: FeatureCache | MemoryFeatureCache | None = None
    guard: MemorizationGuard | None = None  # prebuilt guard (else built from ``training``)
    reference_diversity: dict[str, Any] | None = None  # kept after the first evaluation (snapshots reuse it)
    # TSTR: labels per task (manifest field -> one label per image) of the training and reference sets;
    # the reference must be held out from training for the test to mean anything.
    training_labels: dict[str, list[str]] = field(default_factory=dict)
    reference_labels: dict[str, list[str]] = field(default_factory=dict)
    reference_held_out: bool = False
    generate: Generate | None = None  # a conditional generator: generate(labels, seeds) -> (N, H, W) images
    generate_for: dict[str, Generate] = field(default_factory=dict)  # the same per TSTR task (overrides ``generate``)
    # A conditional generator's conditions are drawn with the training set's label frequencies: from these
    # manifest rows of the training set, else from the model card's counts (models.metrics.conditional).
    training_rows: list[dict[str, Any]] | None = None
    card: Mapping[str, Any] | None = None
    utility_baselines: dict[str, dict[str, Any]] = field(default_factory=dict)  # TRTR classifiers, per task, reused


def evaluate_images(fake: np.ndarray, inputs: Inputs, settings: EvaluationSettings, seeds: Sequence[int] | None = None, progress: Reporter | None = None,
                    generated_labels: Mapping[str, Sequence[str]] | None = None) -> dict[str, Any]:
    """Every requested metric for generated images ``fake`` ((N, H, W) uint8/uint16) -> a JSON-ready dict.

    ``generated_labels`` (task -> one label per image) are the conditions a conditional model generated
    ``fake`` for; TSTR then trains on them instead of labels from a classifier.
    """
    fake = check_images(fake, "generated images")
    reference = check_images(inputs.reference, "reference images")
    seeds = list(seeds) if seeds is not None else list(range(fake.shape[0]))
    wanted = set(settings.metrics)
    metrics: dict[str, Any] = {}
    spaces: dict[str, dict[str, Any]] = {}
    # Keys that are not metrics name a feature space (e.g. "inception" without its weights file).
    skipped = {m: msg for m, msg in inputs.skipped.items() if m in wanted or (m not in METRICS and wanted & set(FEATURE_METRICS))}
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"format": FORMAT, "metrics": metrics, "feature_spaces": spaces, "skipped": skipped, "timings_s": timings}

    feature_metrics = wanted & set(FEATURE_METRICS)
    for extractor in inputs.extractors if feature_metrics else []:
        t = time.perf_counter()
        real_f = inputs.cache.get(inputs.reference_key, extractor) if inputs.cache and inputs.reference_key else None
        if real_f is None or real_f.shape[0] != reference.shape[0]:
            real_f = extract_features(extractor, reference, settings.batch_size, progress, f"{extractor.name} features of the reference set")
            if inputs.cache and inputs.reference_key:
                inputs.cache.put(inputs.reference_key, extractor, real_f)
        fake_f = extract_features(extractor, fake, settings.batch_size, progress, f"{extractor.name} features of the generated set")
        space: dict[str, Any] = {"dim": int(real_f.shape[1]), "n_reference": int(real_f.shape[0]), "n_generated": int(fake_f.shape[0])}
        standardize = getattr(extractor, "standardize", None)
        if standardize is not None:
            real_f, fake_f, space["standardization"] = standardize(real_f, fake_f)
            space["dim"] = int(real_f.shape[1])
        if "fid" in wanted:
            space["frechet_distance"] = frechet_distance_features(real_f, fake_f)
            if getattr(extractor, "log_frechet", False):
                # FRD takes the log: the distance spans orders of magnitude between good and bad sets.
                space["log_frechet_distance"] = math.log(max(space["frechet_distance"], 1e-12))
            if min(real_f.shape[0], fake_f.shape[0]) <= real_f.shape[1]:
                space["note"] = f"fewer images than feature dimensions ({real_f.shape[1]}): the covariance is singular and the Frechet distance is biased upward; compare only numbers computed with the same counts"
        if "kid" in wanted:
            space["kid"], space["kid_std"] = kernel_inception_distance(real_f, fake_f, settings.kid_subsets, settings.kid_subset_size)
            space["kid_subset_size"] = int(min(settings.kid_subset_size, real_f.shape[0], fake_f.shape[0]))
        if "precision_recall" in wanted:
            if min(real_f.shape[0], fake_f.shape[0]) > settings.pr_k:
                space["precision"], space["recall"] = precision_recall(real_f, fake_f, settings.pr_k)
                space["k"] = settings.pr_k
                # Both manifolds are built from this many samples (the larger set subsampled, averaged).
                space["pr_samples"] = int(min(real_f.shape[0], fake_f.shape[0]))
            else:
                skipped["precision_recall"] = f"precision/recall with k={settings.pr_k} needs more than {settings.pr_k} images in each set"
        spaces[extractor.name] = space
        timings[f"features_{extractor.name}"] = time.perf_counter() - t
        if extractor.name == "inception":
            for src, dst in (("frechet_distance", "fid"), ("kid", "kid"), ("kid_std", "kid_std"), ("precision", "precision"), ("recall", "recall")):
                if src in space:
                    metrics[dst] = space[src]
        elif extractor.name in FREE_SPACES:
            for src, dst in (("frechet_distance", "fd"), ("log_frechet_distance", "frd"), ("kid", "kid"), ("kid_std", "kid_std"), ("precision", "precision"), ("recall", "recall")):
                if src in space:
                    metrics[f"{extractor.name}_{dst}"] = space[src]
    if feature_metrics and not inputs.extractors:
        for m in feature_metrics:
            skipped.setdefault(m, "no feature network is available")

    if "ssim_psnr" in wanted:
        t = time.perf_counter()
        ref = reference
        if tuple(reference.shape[1:]) != tuple(fake.shape[1:]):
            ref = resize_images(reference, fake.shape[1])
            out["reference_resized_to"] = int(fake.shape[1])
        matched = matched_fidelity(fake, ref, device=settings.device, progress=progress)
        metrics.update(matched.summary())
        timings["ssim_psnr"] = time.perf_counter() - t

    if "diversity" in wanted:
        t = time.perf_counter()
        d = pairwise_ms_ssim(fake, settings.diversity_pairs, device=settings.device, progress=progress, label="MS-SSIM diversity of the generated set")
        r = inputs.reference_diversity
        if r is None and reference.shape[0] >= 2:
            r = inputs.reference_diversity = pairwise_ms_ssim(reference, settings.diversity_pairs, device=settings.device, progress=progress, label="MS-SSIM diversity of the reference set")
        metrics["diversity"] = d["mean"]
        out["diversity"] = {"generated": d, "reference": r}
        if r is not None:
            metrics["diversity_real"] = r["mean"]
        timings["diversity"] = time.perf_counter() - t

    if "memorization" in wanted:
        t = time.perf_counter()
        guard = inputs.guard
        if guard is None and inputs.training is not None:
            guard = MemorizationGuard(inputs.training, percentile=settings.memorization_percentile, device=settings.device)
        if guard is None:
            skipped["memorization"] = "no training images were given"
        else:
            report = guard.check(fake)
            out["memorization"] = report.to_dict(seeds=seeds)
            out["memorization"]["guard"] = guard.describe()
            metrics["memorization"] = report.fraction
            metrics["near_copies"] = len(report.offending)
        timings["memorization"] = time.perf_counter() - t

    if "tstr" in wanted:
        t = time.perf_counter()
        _utility(fake, reference, inputs, settings, seeds, generated_labels, metrics, out, skipped, progress)
        timings["tstr"] = time.perf_counter() - t
    return out


def _utility(fake, reference, inputs: Inputs, settings: EvaluationSettings, seeds, generated_labels, metrics, out, skipped, progress) -> None:
    """TSTR/TRTR per labelling task into ``out["utility"]``; the first task's numbers also as flat metrics."""
    if inputs.training is None:
        skipped["tstr"] = "no training images were given"
        return
    if not inputs.reference_held_out:
        skipped["tstr"] = "needs a held-out real reference set (--real): testing on the training images says nothing about new patients"
        return
    results: dict[str, Any] = {}
    reasons: list[str] = []
    for task in TSTR_TASKS:
        train_labels = inputs.training_labels.get(task)
        test_labels = inputs.reference_labels.get(task)
        if not train_labels or not test_labels:
            reasons.append(f"{task}: the datasets carry no {task} labels")
            continue
        kwargs: dict[str, Any] = {}
        generate = inputs.generate_for.get(task) or inputs.generate
        if generate is not None:
            kwargs = {"generate": generate, "n": settings.n, "seeds": seeds}
        elif generated_labels and generated_labels.get(task):
            kwargs = {"generated": fake, "generated_labels": generated_labels[task]}
        else:
            kwargs = {"generated": fake}
        try:
            results[task] = tstr(Labelled(inputs.training, list(train_labels)), Labelled(reference, list(test_labels)),
                                 seed=settings.tstr_seed, epochs=settings.tstr_epochs, task=task, progress=progress,
                                 baseline=inputs.utility_baselines.setdefault(task, {}), **kwargs)
        except ValueError as exc:
            reasons.append(str(exc))
    if not results:
        skipped["tstr"] = "; ".join(reasons) or "no labelling task could run"
        return
    out["utility"] = results
    if reasons:
        out["utility"]["not_run"] = reasons
    for i, (task, r) in enumerate((k, v) for k, v in results.items() if isinstance(v, dict)):
        prefix = "" if i == 0 else f"{task}_"
        metrics[f"{prefix}tstr_accuracy"] = r["tstr"]["accuracy"]
        metrics[f"{prefix}trtr_accuracy"] = r["trtr"]["accuracy"]
        metrics[f"{prefix}tstr_balanced_accuracy"] = r["tstr"]["balanced_accuracy"]
        metrics[f"{prefix}trtr_balanced_accuracy"] = r["trtr"]["balanced_accuracy"]
        # Balanced accuracy (mean per-class recall): body parts are far from uniform, and a classifier that
        # calls everything the commonest part scores its share on plain accuracy. On FracAtlas, smooth noise
        # labelled all LEG reached 0.64 of TRTR accuracy, above noisy copies of real radiographs (0.56);
        # balanced, 0.66 against 0.78 (tests/metrics/test_calibration.py).
        metrics[f"{prefix}tstr_trtr_ratio"] = r["balanced_ratio"]
        if r.get("recognition_rates"):
            # A conditional model's images: does the real-trained classifier see the body part asked for?
            out.setdefault("recognition_rates", {})[task] = r["recognition_rates"]
            metrics[f"{task}_recognition_rate_min"] = min(r["recognition_rates"].values())


def _conditional_generators(G: torch.nn.Module, sampler: ConditionSampler, settings: EvaluationSettings, bits: int) -> dict[str, Generate]:
    """For each TSTR task that is a condition field of G: ``generate(labels, seeds)``, the other fields
    drawn given each label with the training frequencies (deterministic per seed)."""

    def make(task: str) -> Generate:
        def generate(labels: Sequence[str], seeds: Sequence[int]) -> np.ndarray:
            conditions = sampler.conditions_given(task, labels, seeds)
            return generate_images(G, list(seeds), settings.psi, settings.batch_size, bits, conditions=conditions)[0]

        return generate

    return {task: make(task) for task in TSTR_TASKS if task in sampler.space.names}


def evaluate_generator(G: torch.nn.Module, inputs: Inputs, settings: EvaluationSettings, progress: Reporter | None = None) -> tuple[dict[str, Any], np.ndarray]:
    """Generate ``settings.n`` images from seeds ``seed_start..`` and evaluate them; returns (results, images).

    A conditional generator gets one condition per seed, drawn with the training set's label
    frequencies (``inputs.training_rows``, else ``inputs.card``; :mod:`.conditional`); TSTR then trains
    on images generated for labels it asks for, and ``recognition_rates`` says, per requested body part
    (and view), how many of them the classifier trained on real images recognizes as such.
    """
    reference = check_images(inputs.reference, "reference images")
    bits = 16 if reference.dtype in (np.uint16, torch.uint16) else 8
    sampler = sampler_for(G, inputs.training_rows, inputs.card)
    conditions = sampler.conditions(settings.seeds) if sampler is not None else None
    fake, rate = generate_images(G, settings.seeds, settings.psi, settings.batch_size, bits, progress, conditions=conditions)
    saved = inputs.generate_for
    if sampler is not None and conditions is not None:
        inputs.generate_for = {**_conditional_generators(G, sampler, settings, bits), **saved}
        generated_labels = {name: [c[name] for c in conditions] for name in sampler.space.names}
    else:
        generated_labels = None
    try:
        results = evaluate_images(fake, inputs, settings, settings.seeds, progress, generated_labels=generated_labels)
    finally:
        inputs.generate_for = saved
    if sampler is not None and conditions is not None:
        results["conditions"] = {**sampler.describe(), "generated_per_condition": dict(sorted(collections.Counter(" ".join(c.values()) for c in conditions).items()))}
    results["generated"] = {
        "count": int(fake.shape[0]),
        "seeds": [settings.seed_start, settings.seed_start + settings.n - 1],
        "psi": settings.psi,
        "resolution": int(fake.shape[1]),
        "dtype": str(fake.dtype),
        "images_per_s": rate,
        "device": str(next(iter(G.parameters()), torch.empty(0)).device),
    }
    results["metrics"]["generation_images_per_s"] = rate
    return results, fake

