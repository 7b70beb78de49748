"""Without the FID weights file (or with the wrong one) FID/KID are refused with a message that says
which file to put where and how to recognise it; never a silent fallback to other weights."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from models.metrics import inception as inc
from models.metrics.features import InceptionFeatures
from tests.metrics.conftest import golden_weights_file

PUBLISHED = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"


def _says_what_to_do(msg: str) -> None:
    assert "pt_inception-2015-12-05-6726825d.pth" in msg
    assert PUBLISHED in msg
    assert "evaluation.inception_weights" in msg
    assert "SYNTHPACS_EVALUATION_INCEPTION_WEIGHTS" in msg


def test_published_sha256_matches_the_file_name_prefix():
    # torch.hub names weight files <name>-<first 8 hex digits of the sha256>.
    assert inc.WEIGHTS_SHA256 == PUBLISHED
    assert inc.WEIGHTS_FILE.split("-")[-1].split(".")[0] == PUBLISHED[:8]


@pytest.mark.parametrize("path", [None, ""])
def test_not_configured(path):
    with pytest.raises(inc.InceptionWeightsError) as err:
        inc.load_fid_inception(path)
    assert "not configured" in str(err.value)
    _says_what_to_do(str(err.value))


def test_missing_file(tmp_path):
    with pytest.raises(inc.InceptionWeightsError) as err:
        InceptionFeatures(tmp_path / "nowhere.pth")
    assert "nowhere.pth does not exist" in str(err.value)
    _says_what_to_do(str(err.value))


def test_wrong_sha256(tmp_path):
    other = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    other.write_bytes(b"torchvision ImageNet weights, not the FID graph")
    actual = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(inc.InceptionWeightsError) as err:
        inc.load_fid_inception(other)
    msg = str(err.value)
    assert f"its sha256 is {actual}, expected {PUBLISHED}" in msg
    _says_what_to_do(msg)


def _pretend_published(monkeypatch, path: Path) -> None:
    monkeypatch.setattr(inc, "WEIGHTS_SHA256", hashlib.sha256(path.read_bytes()).hexdigest())


def test_a_file_with_the_published_sha_loads_strictly(tmp_path, monkeypatch):
    path = golden_weights_file(tmp_path / inc.WEIGHTS_FILE)
    _pretend_published(monkeypatch, path)
    loaded = inc.load_fid_inception(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    golden = np.load(Path(__file__).with_name("fid_golden.npz"))
    with torch.inference_mode():
        x = torch.from_numpy(golden["image1"]).float().div(255)[None, None].expand(1, 3, -1, -1)
        np.testing.assert_allclose(loaded(x)[0].numpy(), golden["features"][1], rtol=1e-4, atol=1e-4)


def test_unreadable_or_misfitting_files_are_named(tmp_path, monkeypatch):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a zip")
    _pretend_published(monkeypatch, junk)
    with pytest.raises(inc.InceptionWeightsError, match="junk.pth cannot be read as a PyTorch state dict"):
        inc.load_fid_inception(junk)
    partial = tmp_path / "partial.pth"
    torch.save({"fc.weight": torch.zeros(1008, 2048)}, partial)
    _pretend_published(monkeypatch, partial)
    with pytest.raises(inc.InceptionWeightsError, match="partial.pth does not fit the FID InceptionV3"):
        inc.load_fid_inception(partial)
