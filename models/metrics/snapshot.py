"""Metrics at training snapshots: the callable for the training runner's ``metrics_fn`` hook.

StyleGAN's habit (Karras et al., NVlabs stylegan3 ``metric_main``): at every snapshot, generate a
fixed set of seeds from the network being trained, compute the chosen metrics against the real data,
and record them. The runner (``models.train.runner``) calls ``metrics_fn(G, info)`` on rank 0 with the
inference generator and a ``SnapshotInfo`` (whose ``dataset`` is the training dataset version) and
writes the returned flat dict into the snapshot row of ``metrics.jsonl`` and the model card::

    hook = SnapshotEvaluator(metrics="fid,ssim_psnr,diversity,memorization", n_samples=1000,
                             extractors=[InceptionFeatures(path)])
    train(options, datasets_root, runs_root, metrics_fn=hook)
    # metrics.jsonl: {"event": "snapshot", ..., "metrics": {"fid": 41.2, "ssim": 0.61, ..., "n_samples": 1000}}

Reference images default to the training dataset named in ``info`` (memory-mapped); its features and
the memorization guard are computed at the first call and reused (the data do not change during a
run). The seeds are the same at every snapshot, so snapshots are comparable. The generator is left in
the mode and on the device it was in. Feature metrics without a feature network are listed under
``skipped`` with the reason, never silently replaced. ``synthpacs train`` builds this from the
configuration with ``service.cli.evaluate.snapshot_hook`` (``evaluation.snapshot_metrics``,
``evaluation.snapshot_samples``).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from models.datasets import load_images
from models.metrics.evaluate import METRICS, EvaluationSettings, Inputs, MemoryFeatureCache, evaluate_generator, parse_metrics
from models.metrics.features import FeatureExtractor
from models.metrics.memorization import MemorizationGuard
from models.metrics.progress import Reporter


class SnapshotEvaluator:
    """``evaluator(G, info=None) -> dict`` of flat, JSON-able values (module docstring).

    Parameters
    ----------
    metrics:
        Names from :data:`models.metrics.evaluate.METRICS` (aliases ``pr``, ``ssim``, ``psnr``), or a
        comma-separated string.
    n_samples:
        Generated images per snapshot (seeds ``seed_start .. seed_start + n_samples - 1``).
    reference_images:
        Real images (N, H, W) uint8/uint16; default: the training dataset of the snapshot ``info``.
    training_images:
        For the memorization metric; default: the reference images.
    training_rows:
        Manifest rows of the training images: a conditional generator's conditions are drawn per seed
        with their label frequencies (:mod:`models.metrics.conditional`); default: the manifest of the
        snapshot ``info``'s dataset.
    extractors:
        Feature networks for FID/KID/precision-recall (e.g. ``InceptionFeatures``); ``skipped`` holds
        the reasons when some are unavailable (e.g. the weights error message).
    """

    def __init__(
        self,
        metrics: Sequence[str] | str = ("fid", "kid", "ssim_psnr", "diversity", "memorization"),
        n_samples: int = 1000,
        reference_images=None,
        training_images=None,
        training_rows=None,
        extractors: Sequence[FeatureExtractor] = (),
        skipped: Mapping[str, str] | None = None,
        psi: float = 1.0,
        seed_start: int = 0,
        batch_size: int = 32,
        kid_subset_size: int = 1000,
        diversity_pairs: int = 500,
        memorization_percentile: float = 1.0,
        progress: Reporter | None = None,
    ):
        self.settings = EvaluationSettings(
            metrics=parse_metrics(metrics),
            n=int(n_samples),
            seed_start=int(seed_start),
            psi=float(psi),
            batch_size=int(batch_size),
            kid_subset_size=int(kid_subset_size),
            kid_subsets=50,
            diversity_pairs=int(diversity_pairs),
            memorization_percentile=float(memorization_percentile),
        )
        self.reference_images = reference_images
        self.training_images = training_images
        self.training_rows = list(training_rows) if training_rows is not None else None
        self.extractors = list(extractors)
        self.skipped = dict(skipped or {})
        self.progress = progress
        self._inputs: Inputs | None = None

    @property
    def metrics(self) -> tuple[str, ...]:
        return self.settings.metrics

    def _prepare(self, info: Any) -> Inputs:
        if self._inputs is not None:
            return self._inputs
        reference = self.reference_images
        dataset = getattr(info, "dataset", None)
        rows = self.training_rows
        if rows is None and dataset is not None:
            rows = list(dataset.manifest())
        if reference is None:
            if dataset is None:
                raise ValueError("snapshot metrics need reference images: pass reference_images, or call with the runner's SnapshotInfo")
            reference = load_images(dataset)
        training = self.training_images if self.training_images is not None else reference
        guard = None
        if "memorization" in self.settings.metrics:
            guard = MemorizationGuard(training, percentile=self.settings.memorization_percentile)
        self._inputs = Inputs(
            reference=reference,
            training=training,
            reference_key="reference",
            extractors=self.extractors,
            skipped=self.skipped,
            cache=MemoryFeatureCache(),
            guard=guard,
            training_rows=rows,
        )
        return self._inputs

    def __call__(self, generator: torch.nn.Module, info: Any = None) -> dict[str, Any]:
        inputs = self._prepare(info)
        results, _ = evaluate_generator(generator, inputs, self.settings, self.progress)
        record: dict[str, Any] = {k: _plain(v) for k, v in results["metrics"].items()}
        record["n_samples"] = self.settings.n
        if results["skipped"]:
            record["skipped"] = dict(results["skipped"])
        if "memorization" in results:
            record["near_copy_seeds"] = list(results["memorization"].get("offending_seeds", []))
        return record


def _plain(v: Any) -> Any:
    if isinstance(v, (np.floating, np.integer)):
        return v.item()
    return v


__all__ = ["SnapshotEvaluator", "METRICS"]
