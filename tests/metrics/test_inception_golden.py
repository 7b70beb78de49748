"""The FID network equals pytorch-fid's: same weights in, same pool3 features out.

The fixture ``fid_golden.npz`` was recorded by ``make_fid_golden.py`` with pytorch-fid 0.3.0 itself
(torch 2.14.1, torchvision 0.29.1, in a separate environment), its network carrying the deterministic
non-pretrained weights of ``golden_weights.py`` and its own image reading and preprocessing. Tolerance:
rtol = atol = 1e-4 on features of magnitude ~1 (float32 convolutions may sum in another order on
another CPU or library build; measured here: bit-identical). An architecture slip is far above it:
torchvision's padding-counting average pool changes features by ~0.28, average instead of max pooling
in Mixed_7c by ~1.9 (the last test shows the fixture catches the first).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.metrics import inception as inc
from models.metrics.features import extract_features
from models.metrics.frechet import frechet_distance, gaussian_stats
from tests.metrics import golden_weights

FIXTURE = Path(__file__).with_name("fid_golden.npz")
RTOL = ATOL = 1e-4


@pytest.fixture(scope="module")
def golden():
    return np.load(FIXTURE)


@pytest.fixture(scope="module")
def net(golden):
    net = inc.FIDInceptionV3().eval()
    shapes = [(k, tuple(v.shape)) for k, v in net.state_dict().items()]
    net.load_state_dict({k: torch.from_numpy(v) for k, v in golden_weights.state(shapes).items()}, strict=True)
    return net


class _Extractor:
    name = "inception"

    def __init__(self, net):
        self.net = net

    def __call__(self, x):
        return self.net(x.expand(-1, 3, -1, -1))


def test_state_dict_names_and_shapes_equal_pytorch_fid(golden):
    ours = inc.FIDInceptionV3().state_dict()
    names = [str(n) for n in golden["state_names"]]
    shapes = json.loads(str(golden["state_shapes"]))
    assert list(ours) == names
    assert [list(v.shape) for v in ours.values()] == shapes
    assert len(names) == 566  # the count of tensors in pt_inception-2015-12-05-6726825d.pth


def test_features_equal_pytorch_fid(golden, net):
    expected = golden["features"]
    for i in range(expected.shape[0]):
        img = golden[f"image{i}"]
        ours = extract_features(_Extractor(net), img[None], batch_size=1)[0]
        np.testing.assert_allclose(ours, expected[i], rtol=RTOL, atol=ATOL, err_msg=f"image{i} {img.shape}")


def test_frechet_distance_equals_pytorch_fid(golden):
    a, b = golden["fd_a"], golden["fd_b"]
    ours = frechet_distance(*gaussian_stats(a), *gaussian_stats(b))
    assert ours == pytest.approx(float(golden["fd_value"]), rel=1e-9, abs=1e-9)


def test_fixture_catches_an_architecture_slip(golden, net, monkeypatch):
    # torchvision's own InceptionA/C/E average pools count the zero padding; the FID graph does not.
    monkeypatch.setattr(inc, "_tf_avg_pool", lambda x: F.avg_pool2d(x, 3, 1, 1))
    img = golden["image0"]
    ours = extract_features(_Extractor(net), img[None], batch_size=1)[0]
    assert np.abs(ours - golden["features"][0]).max() > 100 * ATOL
