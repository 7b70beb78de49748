"""The near-copy index a model version carries, so the memorization guard runs wherever the model is served.

The guard (models/metrics/memorization.py) compares each generated image with the training set in two
descriptor spaces against the training set's own nearest-neighbour distances. Built from the training
images it needs the dataset; a model trained on one machine and served on another usually comes without it.
So at export (``synthpacs models export``, or ``synthpacs models index`` for a version exported before) the
training set's descriptors are written into the model version's folder as ``near_copy_index.npz``:

* ``pixels``: each training image (and its left-right mirror) downsampled to 32 x 32 and standardized to
  zero mean and unit variance (1024 values): a lossy miniature, enough to find a copy under noise or
  exposure changes, far too coarse to read a radiograph from;
* ``hog``: gradient-orientation histograms (structure, no pixel values);
* the training set's nearest-neighbour distances in each space (so the threshold follows
  ``evaluation.memorization_percentile`` wherever the model is served), the image count and the source
  dataset (``name@vN``).

It holds no training image itself, no header and no patient data (datasets are de-identified and headerless
already). Whoever ships a model ships this file with it: the descriptors say about the training set no more
than the generator's weights may, but they are derived from it, which the model card's data section must
cover as it covers the weights.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

INDEX_FILE = "near_copy_index.npz"
FORMAT = 1


class NearCopyIndexError(Exception):
    """An index that cannot be read or does not fit the guard."""


def index_path(model_dir: str | os.PathLike[str]) -> Path:
    return Path(model_dir) / INDEX_FILE


def build_index(images_path: str | os.PathLike[str], model_dir: str | os.PathLike[str], source: str) -> Path:
    """Describe the training images in ``images_path`` (a dataset's ``images.npy``) into ``model_dir``.

    Written atomically (a temporary file renamed into place): a served model sees a whole index or none.
    """
    from models.metrics.memorization import MemorizationGuard

    guard = MemorizationGuard(np.load(images_path, mmap_mode="r"), source=source)
    arrays: dict[str, np.ndarray] = {}
    for space in guard.spaces:
        arrays[f"train_{space}"] = guard._train[space].cpu().numpy().astype(np.float32)
        arrays[f"nn_{space}"] = np.asarray(guard.training_nn[space], dtype=np.float64)
    meta = {
        "format": FORMAT, "source": source, "spaces": list(guard.spaces), "training_images": guard.training_count,
        "mirror": guard.mirror, "pixel_size": guard.pixel_size,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    target = index_path(model_dir)
    fd, tmp = tempfile.mkstemp(prefix=".near_copy_index-", suffix=".npz", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def load_guard(model_dir: str | os.PathLike[str], percentile: float) -> Any | None:
    """The memorization guard from a model version's index, or None when the version has none.

    Raises :class:`NearCopyIndexError` for an index that is there but unusable (the caller must then fail
    closed, as without one)."""
    path = index_path(model_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise NearCopyIndexError(f"{path} has format {meta.get('format')!r}; this synthpacs reads format {FORMAT}")
            train = {s: torch.from_numpy(np.array(data[f"train_{s}"], dtype=np.float32)) for s in meta["spaces"]}
            nn = {s: np.array(data[f"nn_{s}"], dtype=np.float64) for s in meta["spaces"]}
    except NearCopyIndexError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise NearCopyIndexError(f"{path} cannot be read: {type(exc).__name__}: {exc}") from None
    return _indexed_guard(meta, train, nn, percentile)


def _indexed_guard(meta: dict[str, Any], train: dict[str, torch.Tensor], nn: dict[str, np.ndarray], percentile: float) -> Any:
    """A MemorizationGuard whose training descriptors come from the index instead of the images.

    The guard class builds its descriptors from images in its constructor; here its state is set from the
    index and its own ``check`` runs unchanged (the round trip is pinned by tests/synthetic/test_near_copy_index.py).
    """
    from models.metrics.descriptors import hog_descriptor, pixel_descriptor
    from models.metrics.memorization import MemorizationGuard

    if not 0 < percentile < 100:
        raise NearCopyIndexError(f"percentile must be between 0 and 100, got {percentile}")
    unknown = [s for s in meta["spaces"] if s not in ("pixels", "hog")]
    if unknown:
        raise NearCopyIndexError(f"the index holds descriptor spaces this synthpacs cannot compute: {unknown}")
    n = int(meta["training_images"])
    rows = 2 * n if meta["mirror"] else n
    if any(t.ndim != 2 or t.shape[0] != rows for t in train.values()):
        raise NearCopyIndexError("the index's descriptors do not match its image count")
    guard = MemorizationGuard.__new__(MemorizationGuard)
    guard.percentile = float(percentile)
    guard.pixel_size = int(meta["pixel_size"])
    guard.batch_size = 256
    guard.device = torch.device("cpu")
    guard.source = f"{meta['source']} (index)"
    guard.training_count = n
    guard.mirror = bool(meta["mirror"])
    descriptors = {"pixels": lambda x: pixel_descriptor(x, guard.pixel_size), "hog": hog_descriptor}
    guard._descriptors = {s: descriptors[s] for s in meta["spaces"]}
    guard.spaces = tuple(meta["spaces"])
    guard._train = train
    guard.training_nn = nn
    guard.reference_index = np.arange(len(next(iter(nn.values()))))
    guard.thresholds = {s: float(np.percentile(nn[s], guard.percentile)) for s in guard.spaces}
    return guard


def describe(model_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """What a version's index holds (source dataset, image count, spaces, size on disk), or None."""
    path = index_path(model_dir)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(bytes(data["meta"]).decode())
    except (OSError, KeyError, ValueError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}
    return {**meta, "bytes": path.stat().st_size}
