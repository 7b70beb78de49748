"""The plug-in interface between the shared training runner and one architecture.

A :class:`Recipe` knows one GAN: how to build its networks, which optimizers it uses, what one training
step does (discriminator and generator updates, lazy regularization, augmentation, the G_ema update) and
which extra state it carries (such as the ADA probability). The runner (:mod:`models.train.runner`) owns
everything else: device, mixed precision, channels_last, seeding, data loading, DDP, checkpoints, resume,
progress, metrics.jsonl, sample grids and export. The interface is described in full in the docstring of
:mod:`models.train`.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterator, Mapping

import torch
from torch import nn

from models.architectures import ARCHITECTURES, trainable

UNITS = ("epoch", "kimg")



class RecipeError(ValueError):
    """A recipe cannot be made or cannot train with these settings; the message says what to change."""


@dataclass
class Networks:
    """The networks of one run. ``G_ema`` is None for recipes that do not keep an average generator.

    ``G`` and ``G_ema`` meet the generator contract of :mod:`models.registry`; ``D`` is the recipe's own.
    """

    G: nn.Module
    D: nn.Module
    G_ema: nn.Module | None = None

    def items(self) -> Iterator[tuple[str, nn.Module]]:
        yield "G", self.G
        yield "D", self.D
        if self.G_ema is not None:
            yield "G_ema", self.G_ema


@dataclass
class StepContext:
    """What the runner hands a recipe for one training step.

    The recipe calls :meth:`backward` for each loss and :meth:`step` for each optimizer update; between
    them the runner scales losses under mixed precision and, under DDP, averages gradients over every
    process before the update, so a recipe's step reads the same on one device or many.
    """

    nets: Networks
    optimizers: dict[str, torch.optim.Optimizer]
    device: torch.device
    iteration: int  # minibatches done before this one (0 for the first); lazy regularization keys on it
    cur_nimg: int  # real images shown before this step, counted over every process
    batch_size: int  # the global batch (all processes)
    batch_gpu: int  # this process's share of it
    rank: int = 0
    world_size: int = 1
    # This process's (batch_gpu, c_dim) one-hot condition vectors of ``reals`` when the run is
    # conditional (models.conditions), else None.
    c: torch.Tensor | None = None
    _backward: Callable[[torch.Tensor, str], None] = field(default=None, repr=False)  # type: ignore[assignment]
    _step: Callable[[str], bool] = field(default=None, repr=False)  # type: ignore[assignment]
    _randn: Callable[..., torch.Tensor] = field(default=None, repr=False)  # type: ignore[assignment]
    _autocast: Callable[[], contextlib.AbstractContextManager] = field(default=None, repr=False)  # type: ignore[assignment]

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for forward passes, when the run uses it (a no-op otherwise)."""
        return self._autocast()

    def backward(self, loss: torch.Tensor, optimizer: str) -> None:
        """Back-propagate ``loss`` for the optimizer named ``optimizer`` (scaled under fp16)."""
        self._backward(loss, optimizer)

    def step(self, optimizer: str) -> bool:
        """Average gradients over processes, apply the update, zero the gradients.

        Returns False when the update was skipped because mixed precision found inf/NaN gradients.
        """
        return self._step(optimizer)

    def randn(self, n: int, *shape: int) -> torch.Tensor:
        """Standard normal numbers for ``n`` of this process's samples, shape ``(n, *shape)``, on the device.

        Drawn for the whole global batch from a generator every process shares (and that checkpoints
        keep), and this process's rows returned: K processes see the same latents as one process would.
        ``n`` is normally ``batch_gpu``.
        """
        return self._randn(n, *shape)


class Recipe:
    """One architecture's training. Subclass, set the class attributes, implement the four methods.

    The constructor takes the image ``resolution`` and ``channels`` and the recipe's own
    hyper-parameters as keyword arguments; it must reject an unsupported resolution with a
    :class:`RecipeError` (it is called before any data is loaded or any network is built). The
    keyword arguments are stored in ``self.hparams`` and must be JSON values: the runner writes them to
    ``run.json`` and checkpoints and rebuilds the recipe from them on resume and export.
    """

    arch: ClassVar[str] = ""  # name in models.architectures.ARCHITECTURES
    unit: ClassVar[str] = "epoch"  # how training length and snapshots are counted by default: "epoch" or "kimg"
    uses_ema: ClassVar[bool] = False  # build() returns a G_ema, and G_ema is what is sampled and exported
    supports_amp: ClassVar[bool] = True  # the runner may autocast this recipe's forward passes on CUDA
    default_batch: ClassVar[int] = 64

    def __init__(self, resolution: int, channels: int = 1, **hparams: Any):
        self.resolution = int(resolution)
        self.channels = int(channels)
        self.hparams: dict[str, Any] = dict(hparams)

    # -- to implement ---------------------------------------------------------------------------------

    def build(self) -> Networks:
        """Make G, D (and G_ema when ``uses_ema``) on the CPU in float32, initialized.

        The runner seeds torch first, so initialization drawn from torch's global generator is
        reproducible. The runner moves them to the device and sets the memory format afterwards.
        """
        raise NotImplementedError

    def make_optimizers(self, nets: Networks) -> dict[str, torch.optim.Optimizer]:
        """The optimizers by name (e.g. ``{"G": ..., "D": ...}``); the names are used with ``ctx.step``."""
        raise NotImplementedError

    def train_step(self, ctx: StepContext, reals: torch.Tensor) -> Mapping[str, float | torch.Tensor]:
        """One minibatch. ``reals``: this process's ``(batch_gpu, channels, R, R)`` images in [-1, 1].

        Returns scalar statistics (losses, mean D outputs, augmentation p ...) for metrics.jsonl; the
        runner averages them over processes and over the logging interval. Return 0-d tensors rather
        than calling ``.item()`` so the device is not synchronized every step.
        """
        raise NotImplementedError

    # -- optional -------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Extra state to checkpoint (tensors, numbers, strings, lists, dicts), e.g. the ADA probability."""
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def inference_generator(self, nets: Networks) -> nn.Module:
        """The generator that is sampled for grids and metrics and exported: G_ema if used, else G."""
        return nets.G_ema if self.uses_ema and nets.G_ema is not None else nets.G

    def default_snapshots(self, unit: str, length: float) -> list[float]:
        """When to save sample grids (and run snapshot metrics), in ``unit``, when the user gives none."""
        step = max(length / 4, 1.0)
        points = []
        p = step
        while p < length:
            points.append(round(p, 3))
            p += step
        return points + [float(length)]

    def card(self) -> dict[str, Any]:
        """Extra fields for the model card of an exported generator."""
        return {"training_hyperparameters": dict(self.hparams)}


def recipe_class(arch: str) -> type[Recipe]:
    """The recipe class registered for ``arch``, imported on demand."""
    entry = ARCHITECTURES.get(arch)
    if entry is None or not entry.recipe:
        raise RecipeError(f"unknown architecture {arch!r}; known: {', '.join(trainable())}")
    module_name, cls_name = entry.recipe.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise RecipeError(f"architecture {arch!r} is not available here: cannot import {module_name} ({exc})") from None
    cls = getattr(module, cls_name, None)
    if cls is None:
        raise RecipeError(f"architecture {arch!r}: {module_name} has no {cls_name}")
    return cls


def make_recipe(arch: str, resolution: int, channels: int = 1, **hparams: Any) -> Recipe:
    cls = recipe_class(arch)
    try:
        return cls(resolution, channels, **hparams)
    except TypeError as exc:
        raise RecipeError(f"architecture {arch!r} does not take these settings: {exc}") from None
