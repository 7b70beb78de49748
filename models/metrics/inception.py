"""The FID Inception network: InceptionV3 as TensorFlow's FID code used it, pool3 features (2048).

FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
Equilibrium", §3 and Appendix A.1) is defined on the 2048-dimensional pool3 features of the 2015-12-05
TensorFlow Inception graph. pytorch-fid ported that graph's weights to a torchvision-shaped InceptionV3
with four local differences, and every published PyTorch FID number uses that port:

* the average-pooling branches of the A, C and first E blocks do not count padding in the average
  (TensorFlow's ``avg_pool`` with SAME padding);
* the pooling branch of the last E block (Mixed_7c) uses max pooling, not average pooling;
* the classifier has 1008 outputs (the graph's class list), kept here so the state dict loads strictly;
* inputs in [0, 1] are resized to 299 x 299 bilinearly (``align_corners=False``, no antialiasing) and
  mapped to [-1, 1].

This module rebuilds that network from the architecture (Szegedy et al. 2016, "Rethinking the Inception
Architecture", Figures 5-7 and Table 1) with the same module names, so pytorch-fid's weights file
``pt_inception-2015-12-05-6726825d.pth`` loads into it unchanged. ``tests/metrics/test_inception_golden.py``
proves the equality: with identical deterministic weights, this network and pytorch-fid's give the same
features on the same image files (fixture made by ``tests/metrics/make_fid_golden.py``).

Nothing is downloaded: the weights file is read from a local path (``evaluation.inception_weights``)
and checked against its published sha256 first.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from models.fileio import sha256_file

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
# Published with pytorch-fid's release "fid_weights"; torch.hub names files <name>-<first 8 hex of sha256>.
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
WEIGHTS_BYTES = 95_628_359
WEIGHTS_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{WEIGHTS_FILE}"
WEIGHTS_SETTING = "evaluation.inception_weights"
WEIGHTS_ENV = "SYNTHPACS_EVALUATION_INCEPTION_WEIGHTS"
FEATURE_DIM = 2048
INPUT_SIZE = 299


class InceptionWeightsError(RuntimeError):
    """The FID weights file is not configured, missing, or not the published file; FID/KID cannot run.

    The message says which file to put where, and how to recognise it.
    """


def weights_instructions() -> str:
    """Where the FID weights come from and how to configure them (used in every weights error)."""
    return (
        f"put pytorch-fid's {WEIGHTS_FILE} ({WEIGHTS_BYTES:,} bytes, sha256 {WEIGHTS_SHA256}; published at "
        f"{WEIGHTS_URL}) on this machine and name its path in the setting {WEIGHTS_SETTING} "
        f"(environment variable {WEIGHTS_ENV})"
    )


def check_weights_file(path: str | os.PathLike[str] | None) -> Path:
    """The path of a verified FID weights file, or :class:`InceptionWeightsError` saying what to do.

    Verification is by sha256 against the published file: other Inception weights (torchvision's
    ImageNet weights, a re-export) give different features, and FID numbers that cannot be compared
    with anyone else's, so they are refused rather than used.
    """
    if not path:
        raise InceptionWeightsError(f"FID, KID and precision/recall need the FID Inception weights, which are not configured: {weights_instructions()}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise InceptionWeightsError(f"the FID Inception weights file {p} does not exist: {weights_instructions()}")
    actual = sha256_file(p)
    if actual != WEIGHTS_SHA256:
        raise InceptionWeightsError(
            f"{p} is not pytorch-fid's {WEIGHTS_FILE}: its sha256 is {actual}, expected {WEIGHTS_SHA256} "
            f"({p.stat().st_size:,} bytes, expected {WEIGHTS_BYTES:,}); other weights give features that no "
            f"published FID can be compared with; {weights_instructions()}"
        )
    return p


class BasicConv2d(nn.Module):
    """Convolution without bias, batch normalization (eps 0.001, as the TF graph), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _tf_avg_pool(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's SAME-padded average ignores the padded cells; PyTorch counts them unless told not to.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35 x 35 block (Szegedy et al. 2016, Figure 5): 1x1, 5x5, double 3x3 and pooled branches."""

    def __init__(self, in_channels: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(in_channels, 64, 1)
        self.branch5x5_1 = BasicConv2d(in_channels, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(in_channels, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch1x1(x),
                self.branch5x5_2(self.branch5x5_1(x)),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                self.branch_pool(_tf_avg_pool(x)),
            ],
            1,
        )


class InceptionB(nn.Module):
    """Grid reduction 35 -> 17 (Szegedy et al. 2016, Figure 10)."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [
                self.branch3x3(x),
                self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                F.max_pool2d(x, kernel_size=3, stride=2),
            ],
            1,
        )


class InceptionC(nn.Module):
    """17 x 17 block with factorized 7x7 convolutions (Szegedy et al. 2016, Figure 6)."""

    def __init__(self, in_channels: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(in_channels, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            bd = layer(bd)
        return torch.cat([self.branch1x1(x), b7, bd, self.branch_pool(_tf_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Grid reduction 17 -> 8."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """8 x 8 block with expanded filter banks (Szegedy et al. 2016, Figure 7).

    ``pool="avg"`` for Mixed_7b; ``pool="max"`` for Mixed_7c, as in the FID graph.
    """

    def __init__(self, in_channels: int, pool: str):
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError("pool must be 'avg' or 'max'")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_channels, 320, 1)
        self.branch3x3_1 = BasicConv2d(in_channels, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(in_channels, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        pooled = _tf_avg_pool(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 as the FID graph: images in [0, 1], shape (N, 3, H, W) -> pool3 features (N, 2048).

    Module names follow torchvision's ``Inception3`` so pytorch-fid's state dict (566 tensors) loads
    with ``strict=True``. ``fc`` (1008 classes) is never used for features.
    """

    def __init__(self) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, channels_7x7=128)
        self.Mixed_6c = InceptionC(768, channels_7x7=160)
        self.Mixed_6d = InceptionC(768, channels_7x7=160)
        self.Mixed_6e = InceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (N, 3, H, W) in [0, 1], got {tuple(x.shape)}")
        x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e):
            x = block(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def load_fid_inception(path: str | os.PathLike[str] | None, device: str | torch.device = "cpu", verify: bool = True) -> FIDInceptionV3:
    """The FID network with pytorch-fid's weights from ``path``, in eval mode without gradients.

    Raises :class:`InceptionWeightsError` when the file is not configured, missing, not the published
    file (sha256), or not loadable.
    """
    p = check_weights_file(path) if verify else Path(path or "")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # a damaged zip or pickle surfaces as many exception types
        raise InceptionWeightsError(f"{p} cannot be read as a PyTorch state dict ({type(exc).__name__}: {exc}): {weights_instructions()}") from None
    net = FIDInceptionV3()
    try:
        net.load_state_dict(state, strict=True)
    except (RuntimeError, TypeError, AttributeError) as exc:
        raise InceptionWeightsError(f"{p} does not fit the FID InceptionV3 ({str(exc).splitlines()[0]}): {weights_instructions()}") from None
    net.requires_grad_(False)
    return net.eval().to(device)
