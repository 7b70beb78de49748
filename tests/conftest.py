"""Fixtures shared by every test: a temporary home, configuration, free ports, phantoms, real peers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from service.config import Config
from tests.helpers import SHARED_RADIOGRAPHS, make_config

@pytest.fixture
def home(tmp_path: Path) -> Path:
    h = tmp_path / "home"
    h.mkdir()
    return h


@pytest.fixture
def config(home: Path) -> Config:
    return make_config(home)


@pytest.fixture
def shared_radiographs() -> Path:
    if not SHARED_RADIOGRAPHS.is_dir():
        pytest.skip(f"{SHARED_RADIOGRAPHS} is not here (it exists beside the project on the developers' machines only)")
    return SHARED_RADIOGRAPHS


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the developer's own synthpacs.toml or SYNTHPACS_* variables."""
    for key in list(os.environ):
        if key.startswith("SYNTHPACS_"):
            monkeypatch.delenv(key)
    # dcmtk and Orthanc read this: without it they stall ~40 ms per message on loopback.
    monkeypatch.setenv("TCP_NODELAY", "1")


@pytest.fixture
def orthanc(tmp_path: Path):
    """Orthanc as the hospital PACS, on loopback, with temporary storage; stopped after the test."""
    from tests.peers import start_orthanc

    o = start_orthanc(tmp_path / "orthanc")
    yield o
    o.stop()
