"""Tiny datasets and runs for the training tests: 64 px, a couple dozen images, networks a few channels wide."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import pytest

from models.datasets import DatasetVersion, write_dataset
from models.train.runner import TrainOptions

# DCGAN with 4-8 channels per layer: the same code paths as the real network at a fraction of the cost.
TINY = {"g_channels": 8, "d_channels": 4}


def blobs(n: int, res: int, seed: int = 0) -> np.ndarray:
    """(n, res, res) uint8 images of bright ellipses on a dark field, bone-like enough to train on."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / res
    out = np.empty((n, res, res), np.uint8)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.15)
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        out[i] = np.clip(20 + 200 * inside + rng.normal(0, 8, (res, res)), 0, 255).astype(np.uint8)
    return out


def make_dataset(home: Path, name: str = "tiny", n: int = 24, res: int = 64, seed: int = 0) -> DatasetVersion:
    return write_dataset(home / "datasets", name, blobs(n, res, seed))


def options(**kw) -> TrainOptions:
    base = dict(arch="dcgan", dataset="tiny", batch=8, epochs=2, hparams=dict(TINY), grid_size=4)
    base.update(kw)
    return TrainOptions(**base)


@pytest.fixture
def tiny_home(home: Path) -> Path:
    make_dataset(home)
    return home


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: the tiny networks gain nothing from two, and on a CPU shared with other
    jobs OpenMP's spinning threads made a 15 ms step take seconds (measured on the 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
