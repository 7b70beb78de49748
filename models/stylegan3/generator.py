"""The StyleGAN3 generator (Karras et al. 2021, arXiv 2106.12423): mapping network + alias-free synthesis.

It meets the generator contract of :mod:`models.registry`: ``G(z, psi=1.0)`` maps ``(N, z_dim)`` latents
to ``(N, channels, resolution, resolution)`` images in [-1, 1]; ``init_kwargs`` holds the constructor
arguments (with every default resolved) so the registry can rebuild it from a model card.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from models.stylegan3.mapping import MappingNetwork
from models.stylegan3.speed import SpeedOptions
from models.stylegan3.synthesis import CONFIGS, SynthesisNetwork

# Paper Table 1/Appendix D and NVlabs' docs/configs.md: config T uses channel base 32768 and max 512;
# config R doubles both because its 1x1 convolutions see less context per layer.
DEFAULT_CHANNELS = {"t": (32768, 512), "r": (65536, 1024)}


def magnitude_ema_beta_for(batch_size: int) -> float:
    """The magnitude EMA's decay per step: a half-life of 20k images (paper Appendix F)."""
    return 0.5 ** (batch_size / 20_000)


class Generator(nn.Module):
    """StyleGAN3 config T (translation equivariant) or R (also rotation equivariant).

    Parameters
    ----------
    z_dim, w_dim: latent and intermediate latent sizes (512 in the paper).
    resolution: output width and height; a power of two from 16 to 1024.
    channels: 1 (native grayscale radiographs) or 3.
    config: "t" or "r".
    channel_base, channel_max: layer widths are min(channel_base / (2 f_c), channel_max); None takes
        the paper's values for the config (:data:`DEFAULT_CHANNELS`).
    mapping_layers, mapping_lr_multiplier, w_avg_beta: mapping network (2 layers, 0.01, 0.998).
    num_layers, num_critical, margin, ...: the synthesis schedule (see :mod:`models.stylegan3.synthesis`).
    memory_budget: largest temporary signal one layer may hold, in values (None: no limit).
    """

    def __init__(
        self,
        z_dim: int = 512,
        w_dim: int = 512,
        resolution: int = 256,
        channels: int = 1,
        config: str = "t",
        channel_base: int | None = None,
        channel_max: int | None = None,
        mapping_layers: int = 2,
        mapping_lr_multiplier: float = 0.01,
        w_avg_beta: float = 0.998,
        num_layers: int = 14,
        num_critical: int = 2,
        first_cutoff: float = 2.0,
        first_stopband: float = 2**2.1,
        last_stopband_rel: float = 2**0.3,
        margin: int = 10,
        filter_size: int = 6,
        lrelu_upsampling: int = 2,
        conv_clamp: float | None = 256,
        magnitude_ema_beta: float = 0.5 ** (32 / 20_000),  # magnitude_ema_beta_for(32)
        output_scale: float = 0.25,
        memory_budget: int | None = 1 << 27,
    ):
        super().__init__()
        config = str(config).lower()
        if config not in CONFIGS:
            raise ValueError(f"config must be 't' or 'r', got {config!r}")
        if resolution < 16 or resolution > 1024 or resolution & (resolution - 1):
            raise ValueError(f"resolution must be a power of two from 16 to 1024, got {resolution}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
        if z_dim < 1 or w_dim < 1:
            raise ValueError("z_dim and w_dim must be positive")
        if num_critical < 1 or num_layers <= num_critical:
            raise ValueError(f"need 1 <= num_critical < num_layers, got num_critical={num_critical}, num_layers={num_layers}")
        base, cmax = DEFAULT_CHANNELS[config]
        channel_base = base if channel_base is None else int(channel_base)
        channel_max = cmax if channel_max is None else int(channel_max)
        if channel_base < 1 or channel_max < 1:
            raise ValueError("channel_base and channel_max must be positive")
        self.init_kwargs: dict[str, Any] = dict(
            z_dim=z_dim, w_dim=w_dim, resolution=resolution, channels=channels, config=config,
            channel_base=channel_base, channel_max=channel_max, mapping_layers=mapping_layers,
            mapping_lr_multiplier=mapping_lr_multiplier, w_avg_beta=w_avg_beta, num_layers=num_layers,
            num_critical=num_critical, first_cutoff=first_cutoff, first_stopband=first_stopband,
            last_stopband_rel=last_stopband_rel, margin=margin, filter_size=filter_size,
            lrelu_upsampling=lrelu_upsampling, conv_clamp=conv_clamp, magnitude_ema_beta=magnitude_ema_beta,
            output_scale=output_scale, memory_budget=memory_budget,
        )
        self.z_dim, self.w_dim, self.resolution, self.channels, self.config = z_dim, w_dim, resolution, channels, config
        self.synthesis = SynthesisNetwork(
            w_dim, resolution, channels, config, channel_base, channel_max, num_layers, num_critical,
            first_cutoff, first_stopband, last_stopband_rel, margin, filter_size, lrelu_upsampling,
            conv_clamp, magnitude_ema_beta, output_scale, memory_budget,
        )
        self.num_ws = self.synthesis.num_ws
        self.mapping = MappingNetwork(z_dim, w_dim, self.num_ws, mapping_layers, mapping_lr_multiplier, w_avg_beta)

    def set_magnitude_ema_beta(self, beta: float) -> None:
        """Set every synthesis layer's magnitude-EMA decay, e.g. :func:`magnitude_ema_beta_for` of the
        training batch (the constructor's default is the batch-32 value)."""
        if not 0 <= beta < 1:
            raise ValueError(f"magnitude_ema_beta must be in [0, 1), got {beta}")
        for layer in self.synthesis.layers:
            layer.magnitude_ema_beta = float(beta)
        self.init_kwargs["magnitude_ema_beta"] = float(beta)

    def set_speed(self, options: SpeedOptions) -> None:
        """Run-time speed options of the synthesis layers (:mod:`models.stylegan3.speed`)."""
        self.synthesis.set_speed(options)

    @property
    def architecture(self) -> str:
        return f"stylegan3-{self.config}"

    def forward(
        self,
        z: torch.Tensor,
        psi: float = 1.0,
        truncation_cutoff: int | None = None,
        update_emas: bool = False,
        transform: torch.Tensor | None = None,
        clamp: bool = True,
    ) -> torch.Tensor:
        """Images for latents ``z``; ``psi`` < 1 trades variety for typicality (truncation trick).

        ``clamp=False`` returns the raw output that training uses (gradients do not stop at +-1)."""
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(f"z must have shape (N, {self.z_dim}), got {tuple(z.shape)}")
        if not math.isfinite(psi):
            raise ValueError(f"psi must be a finite number, got {psi}")
        ws = self.mapping(z, psi=psi, truncation_cutoff=truncation_cutoff, update_emas=update_emas)
        img = self.synthesis(ws, update_emas=update_emas, transform=transform)
        return img.clamp(-1, 1) if clamp else img
