"""DCGAN generator and discriminator for 1-channel radiographs at 64, 128 and 256 px.

Radford, Metz and Chintala, "Unsupervised Representation Learning with Deep Convolutional Generative
Adversarial Networks", ICLR 2016 (arXiv 1511.06434), §3 "Approach and model architecture":

- no pooling: the generator up-samples with fractionally-strided (transposed) convolutions, the
  discriminator down-samples with strided convolutions;
- batch normalization in both networks, except the generator's output layer and the discriminator's
  input layer;
- ReLU in the generator with Tanh at the output, LeakyReLU (slope 0.2) in the discriminator;
- weights drawn from N(0, 0.02), batch-norm scales from N(1, 0.02) (§4 "Details of adversarial training").

The paper's network (Fig. 1) goes from a 4x4 map to 64x64 in four doublings. Larger images get further
doublings of the same block; channel counts double toward the 4x4 end as in the paper and are capped at
``max_channels`` so a 256 px network stays a few tens of millions of parameters. The discriminator ends in
a 4x4 convolution giving one logit (the Sigmoid of Fig. 1 is folded into the loss, which is numerically
safer and what mixed precision needs). Spectral normalization (Miyato et al. 2018, ICLR, §2.1) of the
discriminator's convolutions is optional, and so is batch normalization in the discriminator
(``batch_norm=False``, as the spectrally normalized discriminators of Miyato et al. 2018 and Miyato and
Koyama 2018 have none): real and generated images go through D in separate batches, and normalizing each
batch by its own statistics hides what all images of a batch share, which is what a collapsed generator's
images share (observed here: a conditional DCGAN with batch norm in D drew one image per condition).
``minibatch_std`` appends the minibatch standard deviation layer of Karras et al. 2018 ("Progressive
Growing of GANs", ICLR, §3) before D's last convolution: the standard deviation of every feature over
groups of ``MBSTD_GROUP`` images, averaged to one number per group and broadcast as an extra feature
map, so D sees directly when generated images look alike (without it, the conditional runs here
collapsed to one image per condition with or without batch norm in D).

Both networks record their constructor arguments in ``init_kwargs`` so a model card can rebuild them.

Conditional networks (``conditions``: ``{field: [values]}``, :mod:`models.conditions`) take the one-hot
condition vector ``c`` (one block per field). The generator turns each field's block into a learned
embedding of ``embed_dim`` numbers and concatenates the embeddings to the latent, so the first
transposed convolution sees ``z_dim + fields * embed_dim`` inputs (Mirza and Osindero 2014, "Conditional
Generative Adversarial Nets", §4.1, with an embedding in place of the raw one-hot). The discriminator is
a projection discriminator (Miyato and Koyama 2018, "cGANs with Projection Discriminator", ICLR, §3,
eq. 3): with phi(x) the sum over positions of its last feature map, the logit is
psi(phi(x)) + sum over fields of <V_f y_f, phi(x)>, one projection matrix V_f per field. The unconditional
part psi stays the final 4x4 convolution, so an unconditional network is unchanged, weight for weight.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm as _spectral_norm

from models.conditions import ConditionSpace

SUPPORTED_RESOLUTIONS = (64, 128, 256)
MBSTD_GROUP = 4


class UnsupportedResolution(ValueError):
    """The network cannot be built for this image size."""


def check_resolution(resolution: int) -> int:
    if resolution not in SUPPORTED_RESOLUTIONS:
        raise UnsupportedResolution(
            f"DCGAN supports resolutions {', '.join(map(str, SUPPORTED_RESOLUTIONS))} px, not {resolution}; "
            "build the dataset at one of them (synthpacs dataset build --resolution ...)"
        )
    return resolution


def _widths(resolution: int, base: int, max_channels: int) -> list[int]:
    """Channels of the 4x4, 8x8, ..., resolution/2 feature maps (generator order).

    With ``base`` 64 at 64 px this is [512, 256, 128, 64], the paper's Fig. 1.
    """
    doublings = int(math.log2(resolution // 4))
    return [min(base * 2 ** (doublings - 1 - i), max_channels) for i in range(doublings)]


def _check_c(c: torch.Tensor | None, n: int, c_dim: int) -> torch.Tensor:
    if c is None:
        raise ValueError(f"this network is conditional: give c, the (N, {c_dim}) one-hot condition vectors")
    if c.ndim != 2 or c.shape != (n, c_dim):
        raise ValueError(f"expected condition vectors of shape ({n}, {c_dim}), got {tuple(c.shape)}")
    return c


def _blocks(space: ConditionSpace, c: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
    out, offset = [], 0
    for name, values in space.fields:
        out.append((name, c[:, offset : offset + len(values)]))
        offset += len(values)
    return out


class Generator(nn.Module):
    """z (N, z_dim) -> image (N, channels, resolution, resolution) in [-1, 1].

    ``psi`` is the truncation of the latent: the generator sees ``psi * z``, i.e. z pulled linearly toward
    the mean of its prior (the origin), the latent-space form of the truncation trick (Brock et al. 2019,
    BigGAN §3.1; Karras et al. 2019 use the same interpolation toward the mean in W). ``psi = 1`` is the
    plain sample, smaller values trade variety for typicality, ``psi = 0`` gives the one "mean" image.
    The scaling is per sample, so it never couples images in a batch.
    """

    def __init__(
        self, z_dim: int = 100, resolution: int = 64, channels: int = 1, base_channels: int = 64, max_channels: int = 512,
        conditions: dict[str, list[str]] | None = None, embed_dim: int = 32,
    ):
        super().__init__()
        check_resolution(resolution)
        if z_dim < 1 or channels < 1 or base_channels < 1 or max_channels < 1 or embed_dim < 1:
            raise ValueError("z_dim, channels, base_channels, max_channels and embed_dim must be positive")
        self.init_kwargs = dict(z_dim=z_dim, resolution=resolution, channels=channels, base_channels=base_channels, max_channels=max_channels)
        self.z_dim, self.resolution, self.channels = z_dim, resolution, channels
        self.space = ConditionSpace.from_json(conditions) if conditions else None
        self.c_dim = self.space.c_dim if self.space else 0
        in_dim = z_dim
        if self.space is not None:
            # Only a conditional network records these, so an unconditional card stays as it was.
            self.init_kwargs.update(conditions=self.space.to_json(), embed_dim=embed_dim)
            self.embed = nn.ParameterDict({name: nn.Parameter(torch.randn(len(values), embed_dim)) for name, values in self.space.fields})
            in_dim += len(self.space.fields) * embed_dim
        widths = _widths(resolution, base_channels, max_channels)
        layers: list[nn.Module] = [
            # Project and reshape (Fig. 1): a 4x4 transposed convolution of a 1x1 input.
            nn.ConvTranspose2d(in_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]
        for cin, cout in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, psi: float = 1.0, c: torch.Tensor | None = None) -> torch.Tensor:
        """``c``: the (N, c_dim) one-hot condition vectors of a conditional network; None otherwise."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"expected latents of shape (N, {self.z_dim}), got {tuple(z.shape)}")
        if psi != 1.0:
            z = z * psi
        if self.space is not None:
            z = torch.cat([z, self._embedding(c, z.shape[0]).to(z.dtype)], dim=1)
        elif c is not None and c.numel():
            raise ValueError("this generator is unconditional; it takes no condition vector")
        x = z[:, :, None, None]
        if self.training or x.device.type != "cpu":
            return self.main(x)
        return _batch_invariant(self.main, x)

    def _embedding(self, c: torch.Tensor | None, n: int) -> torch.Tensor:
        """Per field, the one-hot block times the field's embedding table; concatenated in field order.

        A one-hot block times a table selects one row exactly (every other product is an exact zero),
        whatever kernel the matrix product uses, so an image does not depend on its batch.
        """
        assert self.space is not None
        c = _check_c(c, n, self.c_dim)
        return torch.cat([block.to(self.embed[name].dtype) @ self.embed[name] for name, block in _blocks(self.space, c)], dim=1)


def _batch_invariant(layers: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """Inference on the CPU whose every image is bit-identical whatever batch it is in.

    oneDNN's transposed convolution chooses its kernel by batch size and gives results that differ in
    the last bit for some sizes (measured here with torch 2.13: batches of 3, 5 and 13 against 1), which
    flips 16-bit pixel values. ATen's reference kernel computes each image with the same GEMM and col2im
    whatever the batch, so the transposed convolutions go through it directly, without touching the
    process-wide ``torch.backends.mkldnn`` switch that serving threads share. Batch-norm in eval mode,
    ReLU and Tanh work element by element and are already invariant.
    """
    for m in layers:
        if isinstance(m, nn.ConvTranspose2d):
            x = torch.ops.aten.slow_conv_transpose2d(x, m.weight, m.kernel_size, m.bias, m.stride, m.padding, m.output_padding, m.dilation)
        else:
            x = m(x)
    return x


class Discriminator(nn.Module):
    """image (N, channels, resolution, resolution) -> one real/fake logit per image, shape (N,)."""

    def __init__(
        self, resolution: int = 64, channels: int = 1, base_channels: int = 64, max_channels: int = 512, spectral_norm: bool = False,
        conditions: dict[str, list[str]] | None = None, batch_norm: bool = True, minibatch_std: bool = False,
    ):
        super().__init__()
        check_resolution(resolution)
        self.init_kwargs = dict(resolution=resolution, channels=channels, base_channels=base_channels, max_channels=max_channels, spectral_norm=spectral_norm)
        if not batch_norm:
            self.init_kwargs["batch_norm"] = False
        if minibatch_std:
            self.init_kwargs["minibatch_std"] = True
        self.minibatch_std = bool(minibatch_std)
        self.resolution, self.channels = resolution, channels
        widths = list(reversed(_widths(resolution, base_channels, max_channels)))
        sn = _spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [sn(nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False)), nn.LeakyReLU(0.2, inplace=True)]
        for cin, cout in zip(widths, widths[1:]):
            norm = [nn.BatchNorm2d(cout)] if batch_norm else []
            layers += [sn(nn.Conv2d(cin, cout, 4, 2, 1, bias=not batch_norm)), *norm, nn.LeakyReLU(0.2, inplace=True)]
        layers += [sn(nn.Conv2d(widths[-1] + int(self.minibatch_std), 1, 4, 1, 0, bias=False))]
        self.main = nn.Sequential(*layers)
        self.space = ConditionSpace.from_json(conditions) if conditions else None
        self.c_dim = self.space.c_dim if self.space else 0
        if self.space is not None:
            self.init_kwargs["conditions"] = self.space.to_json()
            # V_f of Miyato and Koyama eq. 3: a linear map of field f's one-hot block to phi's space.
            self.project = nn.ModuleDict({name: sn(nn.Linear(len(values), widths[-1], bias=False)) for name, values in self.space.fields})

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.space is None and not self.minibatch_std:
            return self.main(x).flatten()
        features = self.main[:-1](x)
        logit = self.main[-1](_with_minibatch_std(features) if self.minibatch_std else features).flatten()
        if self.space is None:
            return logit
        c = _check_c(c, x.shape[0], self.c_dim)
        phi = features.sum(dim=(2, 3))
        for name, block in _blocks(self.space, c):
            logit = logit + (self.project[name](block.to(phi.dtype)) * phi).sum(dim=1)
        return logit


def _with_minibatch_std(x: torch.Tensor) -> torch.Tensor:
    """Karras et al. 2018 §3: one extra feature map holding, for each group of images, the mean over
    features and positions of the features' standard deviation within the group."""
    n, ch, h, w = x.shape
    g = min(MBSTD_GROUP, n)
    if n % g:
        g = 1 if n % 2 else 2
    y = x.float().reshape(g, n // g, ch, h, w)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (n/g, ch, h, w)
    y = y.mean(dim=(1, 2, 3)).to(x.dtype)  # one number per group
    y = y.reshape(-1, 1, 1, 1).repeat(g, 1, h, w)  # image i belongs to group i % (n/g)
    return torch.cat([x, y], dim=1)


def init_weights(module: nn.Module) -> None:
    """Radford et al. §4: convolution weights ~ N(0, 0.02); batch-norm scale ~ N(1, 0.02), shift 0.

    Draws from torch's global generator, so a seeded run initializes identically every time.
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            # Under spectral normalization the raw weight lives in parametrizations.weight.original.
            weight = m.parametrizations.weight.original if hasattr(m, "parametrizations") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
        elif isinstance(m, (nn.BatchNorm2d, nn.SyncBatchNorm)):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
