"""Feature networks for the distribution metrics, and batched extraction over image arrays.

A feature extractor is any callable mapping a float32 batch ``(N, 1, H, W)`` in [0, 1] to ``(N, D)``
features, with a ``name`` (recorded in every result, so numbers from different spaces are never
mixed). Two are provided:

* :class:`InceptionFeatures`: the FID InceptionV3 (:mod:`models.metrics.inception`), fed the way
  pytorch-fid feeds it: the gray channel repeated to three (PIL's ``convert('RGB')``), then the
  network's own bilinear resize to 299 and mapping to [-1, 1]. FID, KID and precision/recall in
  papers use this space.
* :class:`HOGFeatures`: histograms of oriented gradients (:func:`models.metrics.descriptors.hog_descriptor`,
  Dalal and Triggs 2005) at 64 x 64, 1764 dimensions. No weights, the same numbers on every machine;
  on by default beside :class:`models.metrics.radiomics.RadiomicsFeatures`.
* :class:`TorchScriptFeatures`: the extension point for an in-domain network, e.g. a RadImageNet
  model a hospital has. Any TorchScript file (``torch.jit.save`` of a scripted or traced module)
  given by path (``evaluation.feature_network``). Contract: it receives float32
  ``(N, C, S, S)`` in [0, 1], with C = ``input_channels`` (1, or 3 = gray repeated) and S =
  ``input_size`` (0 keeps the images' own size; otherwise bilinear resize with antialiasing), does its
  own normalization inside, and returns ``(N, D)`` or ``(N, D, 1, 1)``. The same Frechet distance, KID
  and precision/recall are then computed on its features and reported under its file name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F

from models.fileio import sha256_file
from models.metrics.descriptors import HOG_BINS, HOG_CELL, HOG_SIZE, hog_descriptor
from models.metrics.images import batches, check_images, to_unit
from models.metrics.inception import load_fid_inception
from models.metrics.progress import Progress, Reporter


class FeatureNetworkError(RuntimeError):
    """A feature network file that cannot be used; the message names the file and the reason."""


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


class InceptionFeatures:
    """FID Inception pool3 features (2048) from pytorch-fid's weights file at ``weights_path``."""

    name = "inception"
    dim = 2048
    cache_key = "inception-2015-12-05-6726825d"

    def __init__(self, weights_path: str | os.PathLike[str] | None, device: str | torch.device = "cpu"):
        self.device = torch.device(device)
        self.net = load_fid_inception(weights_path, device=self.device)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.to(self.device).expand(-1, 3, -1, -1))


class HOGFeatures:
    """HOG descriptors as a feature space: edge shapes (cortices, joint lines), independent of exposure."""

    name = "hog"
    dim = ((HOG_SIZE // HOG_CELL) - 1) ** 2 * 4 * HOG_BINS
    cache_key = f"hog-v1-{HOG_SIZE}px-{HOG_CELL}cell-{HOG_BINS}bins"
    batch_size = 256

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return hog_descriptor(images)


class TorchScriptFeatures:
    """An in-domain feature network from a TorchScript file (contract in the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], device: str | torch.device = "cpu", input_size: int = 0, input_channels: int = 3):
        self.path = Path(path).expanduser()
        self.name = f"torchscript:{self.path.name}"
        self.device = torch.device(device)
        if input_channels not in (1, 3):
            raise FeatureNetworkError(f"feature network input channels must be 1 or 3, got {input_channels}")
        if input_size < 0:
            raise FeatureNetworkError(f"feature network input size must be 0 (native) or positive, got {input_size}")
        self.input_size = int(input_size)
        self.input_channels = int(input_channels)
        if not self.path.is_file():
            raise FeatureNetworkError(f"feature network {self.path} does not exist (setting evaluation.feature_network)")
        try:
            self.net = torch.jit.load(str(self.path), map_location=self.device).eval()
        except Exception as exc:  # TorchScript reports bad archives as RuntimeError, ValueError or zip errors
            raise FeatureNetworkError(f"{self.path} is not a TorchScript file that torch.jit.load can read ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})") from None

        # Cached reference features are keyed by the file's content and the input contract.
        self.cache_key = f"torchscript-{sha256_file(self.path)[:16]}-{self.input_channels}c{self.input_size}"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device)
        if self.input_size and tuple(x.shape[-2:]) != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False, antialias=True)
        if self.input_channels == 3:
            x = x.expand(-1, 3, -1, -1)
        try:
            out = self.net(x)
        except Exception as exc:
            raise FeatureNetworkError(f"{self.path} failed on a batch of shape {tuple(x.shape)}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        if not isinstance(out, torch.Tensor):
            raise FeatureNetworkError(f"{self.path} returned {type(out).__name__}; it must return one tensor (N, D)")
        if out.ndim == 4 and out.shape[-2:] == (1, 1):
            out = out.flatten(1)
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise FeatureNetworkError(f"{self.path} returned shape {tuple(out.shape)} for {x.shape[0]} images; it must return (N, D) or (N, D, 1, 1)")
        if not torch.isfinite(out).all():
            raise FeatureNetworkError(f"{self.path} returned NaN or infinite features")
        return out


def extract_features(extractor: FeatureExtractor, images, batch_size: int = 32, progress: Reporter | None = None, label: str | None = None) -> np.ndarray:
    """Features (N, D) float64 of (N, H, W) uint8/uint16/float images, batch by batch (memory maps welcome)."""
    images = check_images(images)
    n = images.shape[0]
    # An extractor may ask for larger batches (one that farms a batch out to worker processes).
    batch_size = max(batch_size, int(getattr(extractor, "batch_size", 0) or 0))
    p = Progress(label or f"{extractor.name} features", n, progress)
    out: list[np.ndarray] = []
    with torch.inference_mode():
        for start, stop in batches(n, batch_size):
            f = extractor(to_unit(images[start:stop]))
            out.append(f.detach().to("cpu", torch.float64).numpy())
            p.update(stop - start)
    return np.concatenate(out)
