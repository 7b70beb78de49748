"""Fixtures of the dataset tests: a store with a few instances of known kinds."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from service.archive.store import Store
from service.data.phantom import phantom_dataset
from tests.helpers import make_config


def rg(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return pydicom.dcmread(path)


def put_phantoms(store: Store) -> None:
    """Five trainable phantoms: CR HAND AP x2 (one MONOCHROME1), CR LEG LATERAL, DX HAND AP, CR HAND 40x50."""
    store.put(phantom_dataset(200, 160, seed=1, body_part="HAND"), source="import")
    store.put(phantom_dataset(180, 240, seed=2, body_part="HAND", photometric="MONOCHROME1"), source="import")
    lat = phantom_dataset(220, 200, seed=3, body_part="LEG")
    lat.ViewPosition = "LATERAL"
    store.put(lat, source="import")
    store.put(phantom_dataset(256, 256, seed=4, body_part="HAND", modality="DX"), source="import")
    store.put(phantom_dataset(40, 50, seed=5, body_part="HAND"), source="import")


@pytest.fixture
def store(tmp_path: Path):
    cfg = make_config(tmp_path / "home")
    s = Store(cfg)
    yield s
    s.index.close()
