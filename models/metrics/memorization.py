"""Memorization check: is a generated image a near-copy of a training image?

The rule (after the nearest-neighbour memorization tests of Meehan et al. 2020, "A Non-Parametric
Test to Detect Data-Copying in Generative Models", and Carlini et al. 2023, "Extracting Training Data
from Diffusion Models", §4): in each descriptor space, a generated image's distance to its nearest
training image is compared with the training set's own nearest-neighbour distances (each training
image to its nearest *other* training image). Real radiographs of different patients are never
closer to each other than the training set's 1st percentile of those distances, except for 1 % of
them by construction; a generated image that close to a training image is flagged as a near-copy.
An image is flagged when it is at or below the threshold in **any** space (a tiny absolute floor also
flags exact copies when the training set itself holds duplicates and the percentile is 0).

Mirror images count as copies: the training set is described together with its left-right mirrors
(a flipped radiograph is the same patient, and training with x-flip augmentation can produce one), so a
distance is to the nearest training image or mirrored training image, for the threshold as for the
checked images; ``mirror=False`` turns this off.

Spaces, both weight-free by default (:mod:`models.metrics.descriptors`): ``pixels`` (32 x 32
downsampled, standardized: catches copies under noise and exposure changes) and ``hog`` (gradient
orientation histograms: catches copies by structure). Another feature extractor (the FID Inception,
an in-domain TorchScript network) can replace ``hog`` through ``features=``.

Used by the release path (``service/studies.py`` refuses flagged images before they become DICOM) and
by ``synthpacs evaluate`` (fraction flagged, offending seeds). Build once per training set (a dataset
version never changes, so :meth:`MemorizationGuard.for_images_file` caches guards by file), then call
:meth:`MemorizationGuard.check` on every batch: building for 500 images takes well under a second of
CPU, checking 16 images a few milliseconds.

For large training sets the threshold is estimated from the nearest-neighbour distances of a random
subset of at most ``max_reference`` training images (each against the whole set); the distances of
checked images are always to the whole set.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from models.metrics.descriptors import hog_descriptor, pixel_descriptor
from models.metrics.images import batches, check_images, to_unit

# Distances at or below this always count as copies (exact copies when the percentile is 0).
COPY_FLOOR = 1e-6


@dataclass
class MemorizationReport:
    """The result of :meth:`MemorizationGuard.check` for N images.

    ``distances[space][i]``: distance of image i to its nearest training image in that space;
    ``nearest[space][i]``: that training image's index; ``thresholds[space]``: the training set's
    ``percentile`` of its own nearest-neighbour distances; ``near_copy[i]``: flagged in any space;
    ``offending``: indices of the flagged images; ``mirrored[space][i]``: the nearest is the mirror image.
    """

    spaces: tuple[str, ...]
    distances: dict[str, np.ndarray]
    nearest: dict[str, np.ndarray]
    thresholds: dict[str, float]
    percentile: float
    near_copy: np.ndarray
    offending: list[int] = field(default_factory=list)
    mirrored: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def count(self) -> int:
        return int(self.near_copy.size)

    @property
    def fraction(self) -> float:
        return float(self.near_copy.mean()) if self.near_copy.size else 0.0

    def ratios(self, space: str) -> np.ndarray:
        """distance / threshold (below or at 1 is flagged), for reading a report at a glance."""
        t = self.thresholds[space]
        return self.distances[space] / t if t > 0 else np.where(self.distances[space] > 0, np.inf, 0.0)

    def to_dict(self, seeds: Sequence[int] | None = None, per_image: bool = False) -> dict[str, Any]:
        """JSON-ready summary; with ``seeds`` (one per checked image) the offending seeds are listed."""
        out: dict[str, Any] = {
            "checked": self.count,
            "near_copies": len(self.offending),
            "fraction": self.fraction,
            "percentile": self.percentile,
            "thresholds": {s: float(t) for s, t in self.thresholds.items()},
            "min_distance": {s: float(d.min()) for s, d in self.distances.items()},
            "offending_indices": [int(i) for i in self.offending],
        }
        if seeds is not None:
            if len(seeds) != self.count:
                raise ValueError(f"{len(seeds)} seeds for {self.count} checked images")
            out["offending_seeds"] = [int(seeds[i]) for i in self.offending]
        if per_image:
            out["distances"] = {s: [float(v) for v in d] for s, d in self.distances.items()}
            out["nearest"] = {s: [int(v) for v in n] for s, n in self.nearest.items()}
            out["mirrored"] = {s: [bool(v) for v in m] for s, m in self.mirrored.items()}
        return out


Descriptor = Callable[[torch.Tensor], torch.Tensor]


class MemorizationGuard:
    """Nearest-neighbour near-copy detector built from training images (module docstring).

    Parameters
    ----------
    training_images:
        (N, H, W) uint8/uint16 (or float in [0, 1]) training images, N >= 2; a memory map is read
        batch by batch.
    percentile:
        Threshold percentile of the training set's own nearest-neighbour distances (default 1).
    pixel_size:
        Side of the downsampled pixel space (default 32).
    features:
        The second space: ``"hog"`` (default, weight-free) or any feature extractor (a callable from
        float32 (N, 1, H, W) in [0, 1] to (N, D) with a ``name``), e.g. ``InceptionFeatures``.
    max_reference:
        At most this many training images (a fixed random subset) estimate the thresholds.
    mirror:
        Also compare with the left-right mirrors of the training images (default True).
    """

    def __init__(
        self,
        training_images,
        percentile: float = 1.0,
        pixel_size: int = 32,
        features: str | Any = "hog",
        max_reference: int = 5000,
        batch_size: int = 256,
        seed: int = 0,
        device: str | torch.device = "cpu",
        source: str = "",
        mirror: bool = True,
    ):
        images = check_images(training_images, "training images")
        if images.shape[0] < 2:
            raise ValueError("the memorization guard needs at least 2 training images (it compares each with its nearest other)")
        if not 0 < percentile < 100:
            raise ValueError(f"percentile must be between 0 and 100, got {percentile}")
        if pixel_size < 4:
            raise ValueError(f"pixel_size must be at least 4, got {pixel_size}")
        self.percentile = float(percentile)
        self.pixel_size = int(pixel_size)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.source = source
        self.training_count = int(images.shape[0])
        self.mirror = bool(mirror)
        self._descriptors: dict[str, Descriptor] = {"pixels": lambda x: pixel_descriptor(x, self.pixel_size)}
        if isinstance(features, str):
            if features != "hog":
                raise ValueError(f"unknown feature space {features!r}; use 'hog' or pass a feature extractor")
            self._descriptors["hog"] = hog_descriptor
        else:
            self._descriptors[str(getattr(features, "name", "features"))] = features
        self.spaces = tuple(self._descriptors)
        # Rows 0..N-1 describe the training images, rows N..2N-1 (with mirror) their mirrors.
        self._train = self._describe(images, with_mirrors=self.mirror)
        n = self.training_count
        rs = np.random.RandomState(seed)
        self.reference_index = np.sort(rs.choice(n, max_reference, replace=False)) if n > max_reference else np.arange(n)
        # A training image may match neither itself nor its own mirror.
        own = np.stack([self.reference_index, self.reference_index + n], 1) if self.mirror else self.reference_index[:, None]
        self.training_nn: dict[str, np.ndarray] = {}
        self.thresholds: dict[str, float] = {}
        for space, feats in self._train.items():
            d, _ = self._nearest(feats[torch.as_tensor(self.reference_index)], feats, exclude=own)
            self.training_nn[space] = d
            self.thresholds[space] = float(np.percentile(d, self.percentile))

    def _describe(self, images, with_mirrors: bool = False) -> dict[str, torch.Tensor]:
        out: dict[str, list[torch.Tensor]] = {s: [] for s in self._descriptors}
        mirrored: dict[str, list[torch.Tensor]] = {s: [] for s in self._descriptors}
        with torch.inference_mode():
            for start, stop in batches(images.shape[0], self.batch_size):
                x = to_unit(images[start:stop], self.device)
                for space, fn in self._descriptors.items():
                    out[space].append(fn(x).to(torch.float32))
                    if with_mirrors:
                        mirrored[space].append(fn(x.flip(-1)).to(torch.float32))
        return {s: torch.cat(out[s] + mirrored[s]) for s in out}

    def _nearest(self, queries: torch.Tensor, train: torch.Tensor, exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Nearest training row for each query (float32 search, float64 distance of the winner).

        ``exclude[i]`` holds the training rows that query i may not match (itself and its mirror, for
        the training set's own distances)."""
        tn = (train * train).sum(1)
        idx_all, dist_all = [], []
        with torch.inference_mode():
            for start, stop in batches(queries.shape[0], 1024):
                q = queries[start:stop]
                d2 = (q * q).sum(1, keepdim=True) + tn[None, :] - 2.0 * q @ train.T
                if exclude is not None:
                    cols = torch.as_tensor(exclude[start:stop], device=d2.device)
                    rows = torch.arange(stop - start, device=d2.device)[:, None].expand_as(cols)
                    d2[rows, cols] = float("inf")
                idx = d2.argmin(1)
                exact = (q.to(torch.float64) - train[idx].to(torch.float64)).norm(dim=1)
                idx_all.append(idx.cpu())
                dist_all.append(exact.cpu())
        return torch.cat(dist_all).numpy(), torch.cat(idx_all).numpy()

    def check(self, images) -> MemorizationReport:
        """Distances of ``images`` ((N, H, W) uint8/uint16/float in [0, 1], any size) to the training set."""
        images = check_images(images, "images to check")
        feats = self._describe(images)
        distances, nearest, mirrored = {}, {}, {}
        flagged = np.zeros(images.shape[0], dtype=bool)
        n = self.training_count
        for space in self.spaces:
            d, idx = self._nearest(feats[space], self._train[space])
            distances[space], nearest[space], mirrored[space] = d, idx % n, idx >= n
            flagged |= d <= max(self.thresholds[space], COPY_FLOOR)
        return MemorizationReport(
            spaces=self.spaces,
            distances=distances,
            nearest=nearest,
            thresholds=dict(self.thresholds),
            percentile=self.percentile,
            near_copy=flagged,
            offending=[int(i) for i in np.flatnonzero(flagged)],
            mirrored=mirrored,
        )

    def describe(self) -> dict[str, Any]:
        """What the guard was built from, for logs and reports (no pixel data)."""
        return {
            "source": self.source,
            "training_images": self.training_count,
            "reference_images": int(self.reference_index.size),
            "spaces": list(self.spaces),
            "percentile": self.percentile,
            "thresholds": dict(self.thresholds),
            "pixel_size": self.pixel_size,
            "mirror": self.mirror,
        }

    @classmethod
    def for_images_file(cls, path: str | os.PathLike[str], **kwargs: Any) -> "MemorizationGuard":
        """A guard for a dataset's ``images.npy``, built once per file and kept (at most 4 in memory).

        The key is the file's path, size and modification time plus ``kwargs``, so a replaced file
        gets a new guard. Safe to call from several threads: one builds, the others wait for it.
        """
        p = Path(path).resolve()
        try:
            st = p.stat()
        except FileNotFoundError:
            raise FileNotFoundError(f"training images {p} do not exist") from None
        key = (str(p), st.st_size, st.st_mtime_ns, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        with _CACHE_LOCK:
            lock = _BUILD_LOCKS.setdefault(key, threading.Lock())
        with lock:
            with _CACHE_LOCK:
                if key in _CACHE:
                    _CACHE.move_to_end(key)
                    return _CACHE[key]
            try:
                images = np.load(p, mmap_mode="r", allow_pickle=False)
            except ValueError as exc:
                raise ValueError(f"{p} is not a readable .npy image array ({exc})") from None
            guard = cls(images, source=kwargs.pop("source", str(p)), **kwargs)
            with _CACHE_LOCK:
                _CACHE[key] = guard
                while len(_CACHE) > _CACHE_SIZE:
                    old, _ = _CACHE.popitem(last=False)
                    _BUILD_LOCKS.pop(old, None)
            return guard


_CACHE_SIZE = 4
_CACHE: "OrderedDict[tuple, MemorizationGuard]" = OrderedDict()
_BUILD_LOCKS: dict[tuple, threading.Lock] = {}
_CACHE_LOCK = threading.Lock()
