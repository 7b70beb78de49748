"""Small worlds for metric tests: a phantom dataset, tiny DCGANs in a registry, a TorchScript feature net."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.datasets import DatasetVersion, DatasetWriter
from models.dcgan import Generator
from models.registry import ModelVersion, Registry
from service.data.phantom import phantom_image


def make_dataset(root: Path, name: str, count: int, seed0: int = 0, size: int = 64) -> DatasetVersion:
    with DatasetWriter(root, name, size, count) as w:
        for s in range(seed0, seed0 + count):
            w.append(phantom_image(size, size, bits_stored=8, seed=s, noise=0.03)[0], {"seed": s})
        return w.commit()


def export_dcgan(models_root: Path, name: str, dataset: DatasetVersion | None, seed: int = 0, card_extra: dict | None = None) -> ModelVersion:
    torch.manual_seed(seed)
    G = Generator(z_dim=16, resolution=64, base_channels=8)
    card = {"architecture": "dcgan", "training": {"wall_time_s": 1800 * (seed + 1), "images_per_s": 50.0 + seed}}
    if dataset is not None:
        card["dataset"] = {"name": dataset.name, "version": dataset.version, "content_hash": dataset.content_hash}
    card.update(card_extra or {})
    return Registry([models_root]).export(G, card, name)


class TinyFeatures(nn.Module):
    """A stand-in for a hospital's in-domain network: (N, 3, H, W) in [0, 1] -> (N, 8)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 5, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)).mean(dim=(2, 3))


@pytest.fixture
def feature_net(tmp_path: Path) -> Path:
    path = tmp_path / "feat.pt"
    torch.jit.script(TinyFeatures()).save(str(path))
    return path


@pytest.fixture
def world(tmp_path: Path):
    """A home with dataset 'phantoms' (40 images) and two untrained 64 px DCGANs m1, m2 trained 'on' it."""
    home = tmp_path / "home"
    dv = make_dataset(home / "datasets", "phantoms", 40)
    m1 = export_dcgan(home / "models", "m1", dv, seed=0)
    m2 = export_dcgan(home / "models", "m2", dv, seed=1)
    return home, dv, m1, m2


def golden_weights_file(path: Path) -> Path:
    """A state dict with the FID network's names and shapes (deterministic values), saved like the real file."""
    from models.metrics.inception import FIDInceptionV3
    from tests.metrics import golden_weights

    shapes = [(k, tuple(v.shape)) for k, v in FIDInceptionV3().state_dict().items()]
    torch.save({k: torch.from_numpy(v) for k, v in golden_weights.state(shapes).items()}, path)
    return path


__all__ = ["make_dataset", "export_dcgan", "golden_weights_file", "np"]


def labelled_phantom(seed: int, label: str, size: int = 64) -> np.ndarray:
    """A phantom 'LEG' (bone upright) or 'HAND' (the same phantom transposed: bone across the image)."""
    img = phantom_image(size, size, bits_stored=8, seed=seed, noise=0.03)[0]
    return img if label == "LEG" else np.ascontiguousarray(img.T)


def labelled_phantoms(seeds, size: int = 64) -> tuple[np.ndarray, list[str]]:
    """Two body parts, alternating: even seeds LEG, odd seeds HAND."""
    labels = ["LEG" if s % 2 == 0 else "HAND" for s in seeds]
    return np.stack([labelled_phantom(s, lab, size) for s, lab in zip(seeds, labels)]), labels
