"""Deterministic, non-pretrained InceptionV3 weights that any environment can rebuild bit for bit.

Used on both sides of the FID architecture proof: ``make_fid_golden.py`` loads them into pytorch-fid's
network (in a separate environment with torchvision), ``test_inception_golden.py`` into ours. Values come
from NumPy's legacy ``RandomState``, whose stream NumPy keeps fixed across versions, seeded by the CRC-32
of each tensor's name, so the same name and shape give the same values everywhere. Only NumPy is
imported, so the script can load this file by path without the project installed.

Scales keep the activations of a 20-layer network in a useful range: He-normal convolutions
(std sqrt(2 / fan_in)), batch-norm statistics near the identity with some spread.
"""

from __future__ import annotations

import zlib
from typing import Iterable

import numpy as np


def tensor(name: str, shape: tuple[int, ...]) -> np.ndarray:
    rs = np.random.RandomState(zlib.crc32(name.encode("utf-8")))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "num_batches_tracked":
        return np.zeros(shape, dtype=np.int64)
    if leaf == "running_var":
        return rs.uniform(0.5, 1.5, size=shape).astype(np.float32)
    if leaf == "running_mean":
        return (0.1 * rs.standard_normal(shape)).astype(np.float32)
    if ".bn." in f".{name}" and leaf == "weight":
        return rs.uniform(0.8, 1.2, size=shape).astype(np.float32)
    if leaf == "bias":
        return (0.05 * rs.standard_normal(shape)).astype(np.float32)
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return (rs.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def state(shapes: Iterable[tuple[str, tuple[int, ...]]]) -> dict[str, np.ndarray]:
    """name -> array for every (name, shape) of a state dict."""
    return {name: tensor(name, tuple(shape)) for name, shape in shapes}


def images() -> list[np.ndarray]:
    """The fixture's inputs: grayscale uint8 images of three sizes with edges, gradients and noise,
    so that resizing, padding-aware pooling and every branch are exercised."""
    rs = np.random.RandomState(20151205)
    out = []
    for size in ((64, 64), (64, 64), (96, 80), (300, 300)):
        h, w = size
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        r = np.hypot(yy - h * rs.uniform(0.3, 0.7), xx - w * rs.uniform(0.3, 0.7))
        img = 128 + 80 * np.sin(r / rs.uniform(3, 9)) + 40 * (xx / w - 0.5) + rs.normal(0, 12, size)
        img[int(h * 0.2) : int(h * 0.45), int(w * 0.55) : int(w * 0.8)] = rs.uniform(0, 255)
        out.append(np.clip(np.rint(img), 0, 255).astype(np.uint8))
    return out
