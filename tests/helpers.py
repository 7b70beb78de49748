"""Helpers for tests: free ports, peer programs, test configurations, shared data location."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from service.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
SHARED_RADIOGRAPHS = REPO.parent / "shared" / "data" / "radiographs"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_tool(name: str, package: str) -> str:
    """Path of a peer program, or skip with the Debian package that provides it."""
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (Debian package {package}; `make deps` installs it)")
    return path


def make_config(home: Path, **overrides) -> Config:
    """A configuration for tests: everything under ``home``, loopback, ephemeral ports, no /metrics server."""
    # The burned-in SYNTHETIC label is on by default, but most tests write 16-32 px images, too small to hold
    # it; the tests of the label turn it on (tests/synthetic/test_label.py checks the default itself).
    base = {"home": str(home), "dicom.port": 0, "grpc.port": 0, "dicomweb.port": 0, "metrics.enabled": False, "deid.secret": "test-secret",
            "synthetic.burn_in_label": False,
            # Most test models come without a near-copy index or training set; the guard's tests turn this off.
            "synthetic.allow_unchecked": True}
    base.update(overrides)
    return load_config(path=None, env={}, overrides=base)
