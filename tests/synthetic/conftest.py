"""Fixtures for the synthetic-study tests: a tiny real DCGAN in a registry, a store, a writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Config
from service.dicom.store import Store
from service.home import Home
from tests.helpers import make_config


def export_tiny_dcgan(models_dir: Path, name: str = "tiny-dcgan", dataset: dict | None = None, seed: int = 0):
    """A 64 px DCGAN with a few thousand weights, randomised so its images vary, exported to the registry."""
    import torch

    from models.dcgan import Generator
    from models.registry import Registry

    torch.manual_seed(seed)
    net = Generator(z_dim=16, resolution=64, channels=1, base_channels=8, max_channels=32)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    card = {"architecture": "dcgan", "dataset": dataset or {"name": "tiny-train", "version": 1}}
    return Registry.with_bundled(models_dir).export(net.eval(), card, name)


@pytest.fixture
def registry(config: Config):
    from models.registry import Registry

    return Registry.with_bundled(Home.at(config.home_path).models_dir)


@pytest.fixture
def tiny_model(config: Config):
    return export_tiny_dcgan(Home.at(config.home_path).models_dir)


@pytest.fixture
def store(config: Config):
    s = Store(config)
    yield s
    s.index.close()


def config_with_peers(home: Path, peers: list[tuple[str, str, int]], **overrides) -> Config:
    """A test configuration whose dicom.peers are (AE title, host, port) triples."""
    listed = [{"ae_title": ae, "host": host, "port": port} for ae, host, port in peers]
    return make_config(home, **{"dicom.peers": listed, **overrides})
