"""StyleGAN3 training recipe for the shared runner (``synthpacs train --arch stylegan3-t|stylegan3-r``).

One step follows the published training loop (Karras et al. 2021, Appendix D; StyleGAN2-ADA's loop):

1. G: non-saturating loss on fresh latents through D (whose weights are frozen for this update);
2. D: non-saturating loss on reals and on fakes from other fresh latents (the fakes also advance G's
   w_avg and magnitude EMAs);
3. every ``r1_interval`` minibatches, R1 on reals, multiplied by the interval, as its own D update
   (lazy regularization; D's Adam learning rate and betas are scaled by interval / (interval + 1));
4. G_ema: weights averaged with a half-life of ``ema_kimg`` thousand images, ramped up over the first
   images (half-life at most ``ema_rampup`` times the images seen); buffers copied;
5. ADA: p adjusted every ``ada_interval`` steps toward E[sign D(real)] = ``ada_target``.

Defaults for 256 px, and where they come from
---------------------------------------------
===================  ===========================  =================================================
setting              default                      source
===================  ===========================  =================================================
batch                32                           paper Table 7 / NVlabs docs/configs.md (256 px)
gamma (R1)           2 * (resolution / 256)^2     docs/configs.md: 2 at 256 px, 32 at 1024 px
channel base / max   T 32768 / 512, R 65536/1024  paper Appendix F (R doubles the channels);
                                                  16384 for T is faster with little loss at 256 px
D channel base/max   32768 / 512                  StyleGAN2 (the discriminator is unchanged)
learning rates       G 0.0025, D 0.002            NVlabs train.py defaults for StyleGAN3
Adam                 betas (0, 0.99), eps 1e-8    StyleGAN2 / StyleGAN3 Appendix D
lazy R1 interval     16                           StyleGAN2 §3.1
mapping              2 layers, lr multiplier 0.01 paper Appendix F
G EMA                10 kimg at batch 32 (scaled  StyleGAN2-ADA; ramp-up 0.05
                     with the batch), ramp-up 0.05
ADA                  target 0.6, every 4 steps,   ADA paper §3 (Karras et al. 2020)
                     500 kimg for p 0 -> 1
R's blur of D input  sigma 10 fading over 200   paper Appendix D ("blur ... during the first
                     kimg at batch 32; kernel     200k images"); kernel as NVlabs' loss.py
                     exp2(-(x/sigma)^2), i.e. a
                     Gaussian of std 8.5 px
===================  ===========================  =================================================

Every setting is a keyword of :class:`StyleGAN3Recipe` (``synthpacs train --set key=value``, JSON
values), e.g. ``--set channel_base=16384``, ``--set 'augment={"xflip": true}'`` (ADA transforms, see
:class:`models.stylegan3.ada.AugmentSpec`; x-flips are off by default because anatomy has laterality),
``--set ada=false --set augment_p=0`` (no augmentation), ``--set gamma=1``.

Memory and speed: ``memory_budget`` (values per temporary signal, default 2**27) makes each synthesis
layer keep only its input for the backward pass and recompute the rest in slices of the batch
(:mod:`models.stylegan3.memory`); ``null`` gives plain autograd. ``compile=true`` wraps G and D in
``torch.compile`` on CUDA; the recomputed layers are opaque to the compiler (one graph per layer), so
with memory to spare ``memory_budget=null`` lets it see the whole network. ``speed`` sets G's run-time
options (:mod:`models.stylegan3.speed`), e.g. ``--set 'speed={"sign_mask_lrelu": true, "conv_dtype":
"bfloat16"}'``; by default none on the CPU, and on CUDA the sign-mask leaky ReLU (one byte per
temporary value kept for the backward pass, no recomputation) with channels_last.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch
from torch import nn

from models.stylegan3.ada import AdaController, AugmentPipe, AugmentSpec
from models.stylegan3.discriminator import Discriminator
from models.stylegan3.generator import DEFAULT_CHANNELS, Generator, magnitude_ema_beta_for
from models.stylegan3.losses import StyleGAN3Loss, lazy_adam_params
from models.stylegan3.speed import SpeedOptions
from models.train.recipe import Networks, Recipe, RecipeError, StepContext

SEED_SNAPSHOTS_KIMG = (10.0, 40.0, 80.0, 100.0)  # the seed's published snapshots


def _positive(name: str, value: float | None, allow_zero: bool = False) -> None:
    if value is None:
        return
    ok = value >= 0 if allow_zero else value > 0
    if not ok:
        raise RecipeError(f"{name} must be {'at least 0' if allow_zero else 'positive'}, not {value}")


class StyleGAN3Recipe(Recipe):
    """Shared by configs T and R; the subclasses fix ``config``."""

    config = "t"
    unit = "kimg"
    uses_ema = True
    supports_amp = True
    default_batch = 32

    def __init__(
        self,
        resolution: int,
        channels: int = 1,
        z_dim: int = 512,
        w_dim: int = 512,
        channel_base: int | None = None,
        channel_max: int | None = None,
        mapping_layers: int = 2,
        d_channel_base: int = 32768,
        d_channel_max: int = 512,
        mbstd_group: int = 4,
        glr: float = 0.0025,
        dlr: float = 0.002,
        betas: list[float] | tuple[float, float] = (0.0, 0.99),
        gamma: float | None = None,
        r1_interval: int = 16,
        ema_kimg: float | None = None,
        ema_rampup: float | None = 0.05,
        ada: bool = True,
        ada_target: float = 0.6,
        ada_interval: int = 4,
        ada_kimg: float = 500.0,
        augment_p: float = 0.0,
        augment: Mapping[str, Any] | None = None,
        blur_sigma: float | None = None,
        blur_fade_kimg: float | None = None,
        memory_budget: int | None = 1 << 27,
        compile: bool = False,
        speed: Mapping[str, Any] | None = None,
    ):
        resolution, channels = int(resolution), int(channels)
        if resolution < 16 or resolution > 1024 or resolution & (resolution - 1):
            raise RecipeError(f"StyleGAN3 trains at a power-of-two resolution from 16 to 1024 px, not {resolution}; build the dataset at e.g. 256 px")
        if channels not in (1, 3):
            raise RecipeError(f"StyleGAN3 makes 1- or 3-channel images, not {channels}")
        for name, value in (("z_dim", z_dim), ("w_dim", w_dim), ("mapping_layers", mapping_layers), ("d_channel_base", d_channel_base), ("d_channel_max", d_channel_max), ("mbstd_group", mbstd_group), ("glr", glr), ("dlr", dlr), ("ada_interval", ada_interval), ("ada_kimg", ada_kimg), ("channel_base", channel_base), ("channel_max", channel_max), ("ema_kimg", ema_kimg), ("memory_budget", memory_budget)):
            _positive(name, value)
        for name, value in (("gamma", gamma), ("r1_interval", r1_interval), ("ema_rampup", ema_rampup), ("blur_sigma", blur_sigma), ("blur_fade_kimg", blur_fade_kimg)):
            _positive(name, value, allow_zero=True)
        betas = [float(b) for b in betas]
        if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
            raise RecipeError(f"betas must be two numbers in [0, 1), not {betas}")
        if not 0 < ada_target < 1:
            raise RecipeError(f"ada_target must be between 0 and 1 (0.6 in the ADA paper), not {ada_target}")
        if not 0 <= augment_p <= 1:
            raise RecipeError(f"augment_p must be in [0, 1], not {augment_p}")
        try:
            spec = AugmentSpec.from_dict(dict(augment or {}))
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"augment: {exc}") from None
        try:
            speed = None if speed is None else dict(speed)
            if speed is not None:
                SpeedOptions.from_dict(speed)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"speed: {exc}") from None
        base, cmax = DEFAULT_CHANNELS[self.config]
        super().__init__(
            resolution, channels, z_dim=int(z_dim), w_dim=int(w_dim),
            channel_base=int(channel_base or base), channel_max=int(channel_max or cmax),
            mapping_layers=int(mapping_layers), d_channel_base=int(d_channel_base), d_channel_max=int(d_channel_max),
            mbstd_group=int(mbstd_group), glr=float(glr), dlr=float(dlr), betas=betas,
            gamma=float(gamma) if gamma is not None else 2.0 * (resolution / 256) ** 2,
            r1_interval=int(r1_interval), ema_kimg=None if ema_kimg is None else float(ema_kimg),
            ema_rampup=None if ema_rampup is None else float(ema_rampup), ada=bool(ada), ada_target=float(ada_target),
            ada_interval=int(ada_interval), ada_kimg=float(ada_kimg), augment_p=float(augment_p), augment=spec.to_dict(),
            blur_sigma=float(blur_sigma) if blur_sigma is not None else (10.0 if self.config == "r" else 0.0),
            blur_fade_kimg=None if blur_fade_kimg is None else float(blur_fade_kimg),
            memory_budget=None if memory_budget is None else int(memory_budget), compile=bool(compile), speed=speed,
        )
        self.augment_pipe = AugmentPipe(spec, p=float(augment_p)) if (ada or augment_p > 0) else None
        self.ada = AdaController(self.augment_pipe, ada_target, int(ada_interval), float(ada_kimg)) if (ada and self.augment_pipe is not None) else None
        self._loss: StyleGAN3Loss | None = None

    # -- networks and optimizers ----------------------------------------------------------------------

    def build(self) -> Networks:
        h = self.hparams
        G = Generator(
            z_dim=h["z_dim"], w_dim=h["w_dim"], resolution=self.resolution, channels=self.channels, config=self.config,
            channel_base=h["channel_base"], channel_max=h["channel_max"], mapping_layers=h["mapping_layers"],
            memory_budget=h["memory_budget"],
        )
        D = Discriminator(self.resolution, self.channels, h["d_channel_base"], h["d_channel_max"], h["mbstd_group"])
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        return Networks(G=G, D=D, G_ema=G_ema)

    def make_optimizers(self, nets: Networks) -> dict[str, torch.optim.Optimizer]:
        h = self.hparams
        betas = tuple(h["betas"])
        d_lr, d_betas = lazy_adam_params(h["dlr"], betas, h["r1_interval"] if h["gamma"] > 0 else None)
        return {
            "G": torch.optim.Adam(nets.G.parameters(), lr=h["glr"], betas=betas, eps=1e-8),
            "D": torch.optim.Adam(nets.D.parameters(), lr=d_lr, betas=d_betas, eps=1e-8),
        }

    # -- one step -------------------------------------------------------------------------------------

    def _loss_for(self, nets: Networks, device: torch.device, batch_size: int) -> StyleGAN3Loss:
        if self._loss is None:
            h = self.hparams
            G, D = nets.G, nets.D
            nets.G.set_speed(self.speed_options(device))
            if h["compile"] and device.type == "cuda":
                G, D = torch.compile(G), torch.compile(D)
            if self.augment_pipe is not None:
                self.augment_pipe.to(device)
            # The magnitude EMAs have a half-life of 20k images whatever the batch (Appendix F).
            beta = magnitude_ema_beta_for(batch_size)
            for net in (nets.G, nets.G_ema):
                if net is not None:
                    net.set_magnitude_ema_beta(beta)
            fade = h["blur_fade_kimg"] if h["blur_fade_kimg"] is not None else batch_size * 200 / 32
            self._loss = StyleGAN3Loss(G, D, self.augment_pipe, h["gamma"], h["blur_sigma"], fade)
        return self._loss

    def speed_options(self, device: torch.device) -> SpeedOptions:
        """G's speed options in training: the ``speed`` setting, else the device's defaults (none on
        the CPU; on CUDA the sign-mask leaky ReLU and channels_last, or only channels_last when
        ``compile`` traces the whole network)."""
        h = self.hparams
        if h.get("speed") is not None:
            return SpeedOptions.from_dict(h["speed"])
        if h["compile"] and device.type == "cuda":
            return SpeedOptions(channels_last=True)
        return SpeedOptions.for_device(device)

    def train_step(self, ctx: StepContext, reals: torch.Tensor) -> Mapping[str, Any]:
        h = self.hparams
        nets = ctx.nets
        loss = self._loss_for(nets, ctx.device, ctx.batch_size)
        n = reals.shape[0]
        stats: dict[str, Any] = {}

        # 1. G update; D's weights are constants here.
        nets.D.requires_grad_(False)
        z = ctx.randn(n, h["z_dim"])
        with ctx.autocast():
            loss_G = loss.generator_loss(z, ctx.cur_nimg)
        ctx.backward(loss_G, "G")
        ctx.step("G")
        nets.D.requires_grad_(True)

        # 2. D update on reals and fresh fakes.
        z = ctx.randn(n, h["z_dim"])
        with ctx.autocast():
            loss_D, real_logits = loss.discriminator_loss(reals, z, ctx.cur_nimg)
        ctx.backward(loss_D, "D")
        ctx.step("D")
        if ctx.world_size > 1:
            sync_tracked_buffers(nets.G)

        # 3. Lazy R1, in full precision: a second derivative in bf16 is too coarse to regularize with.
        if h["gamma"] > 0 and h["r1_interval"] > 0 and ctx.iteration % h["r1_interval"] == 0:
            loss_r1, penalty = loss.r1_loss(reals, ctx.cur_nimg)
            ctx.backward(loss_r1 * h["r1_interval"], "D")
            ctx.step("D")
            stats["r1_penalty"] = penalty.mean()

        # 4. G_ema.
        if nets.G_ema is not None:
            ema_update(nets.G_ema, nets.G, self.ema_beta(ctx.batch_size, ctx.cur_nimg))

        # 5. ADA.
        if self.ada is not None:
            self.ada.observe(real_logits)
            self.ada.step(ctx.batch_size, _mean_over_processes if ctx.world_size > 1 else None)
        stats.update(
            loss_G=loss_G.detach().float(),
            loss_D=loss_D.detach().float(),
            D_real=real_logits.float().mean(),
            D_real_sign=real_logits.float().sign().mean(),
            augment_p=torch.tensor(self.augment_pipe.probability if self.augment_pipe is not None else 0.0),
        )
        return stats

    def ema_beta(self, batch_size: int, cur_nimg: int) -> float:
        """Per-step decay of G_ema: half-life ``ema_kimg`` thousand images (10 at batch 32, scaled with
        the batch), limited to ``ema_rampup`` times the images seen so far."""
        h = self.hparams
        ema_nimg = (h["ema_kimg"] if h["ema_kimg"] is not None else batch_size * 10 / 32) * 1000
        if h["ema_rampup"]:
            ema_nimg = min(ema_nimg, cur_nimg * h["ema_rampup"])
        return 0.5 ** (batch_size / max(ema_nimg, 1e-8))

    # -- state, snapshots, card -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"augment_p": self.augment_pipe.probability if self.augment_pipe is not None else 0.0}
        if self.ada is not None:
            state["ada"] = self.ada.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.augment_pipe is not None and "augment_p" in state:
            self.augment_pipe.set_probability(float(state["augment_p"]))
        if self.ada is not None and state.get("ada"):
            self.ada.load_state_dict(dict(state["ada"]))

    def default_snapshots(self, unit: str, length: float) -> list[float]:
        """10, 40, 80 and 100 kimg like the seed, then every 100 kimg, and the end."""
        if unit != "kimg" or length < SEED_SNAPSHOTS_KIMG[0]:
            return super().default_snapshots(unit, length)
        points = [p for p in SEED_SNAPSHOTS_KIMG if p < length]
        p = SEED_SNAPSHOTS_KIMG[-1] + 100
        while p < length:
            points.append(p)
            p += 100
        return points + [float(length)]

    def card(self) -> dict[str, Any]:
        return {
            "training_hyperparameters": dict(self.hparams),
            "truncation": "psi moves w toward the tracked average w_avg: w' = w_avg + psi (w - w_avg); psi = 0 gives the average image",
            "references": [
                "Karras, Aittala, Laine, Harkonen, Hellsten, Lehtinen, Aila. Alias-Free Generative Adversarial Networks. NeurIPS 2021, arXiv:2106.12423",
                "Karras, Aittala, Hellsten, Laine, Lehtinen, Aila. Training Generative Adversarial Networks with Limited Data. NeurIPS 2020, arXiv:2006.06676",
            ],
            "implementation": "synthpacs clean-room PyTorch (models/stylegan3), no custom CUDA extensions",
        }


class StyleGAN3TRecipe(StyleGAN3Recipe):
    """Config T: translation equivariant, 3x3 convolutions."""

    arch = "stylegan3-t"
    config = "t"


class StyleGAN3RRecipe(StyleGAN3Recipe):
    """Config R: also rotation equivariant: 1x1 convolutions, radial filters, doubled channels, and
    D's input blurred at the start of training."""

    arch = "stylegan3-r"
    config = "r"


@torch.no_grad()
def ema_update(ema: nn.Module, net: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * net for parameters; buffers (w_avg, magnitude EMAs) copied."""
    for pe, p in zip(ema.parameters(), net.parameters()):
        pe.lerp_(p.detach().to(pe.dtype), 1.0 - beta)
    for be, b in zip(ema.buffers(), net.buffers()):
        be.copy_(b)


@torch.no_grad()
def sync_tracked_buffers(G: nn.Module) -> None:
    """Average w_avg and the magnitude EMAs over processes. Each process updated them from its own
    share of the batch; both are linear in the batch statistics, so the mean over processes is what
    one process would have computed from the whole batch, and every process keeps the same generator."""
    tracked = [b for name, b in G.named_buffers() if name.endswith(("w_avg", "magnitude_ema"))]
    if not tracked:
        return
    flat = _mean_over_processes(torch.cat([b.flatten() for b in tracked]))
    offset = 0
    for b in tracked:
        b.copy_(flat[offset : offset + b.numel()].view_as(b))
        offset += b.numel()


def _mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    from models.train.distributed import mean_over_processes

    return mean_over_processes(t)
