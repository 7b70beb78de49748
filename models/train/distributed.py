"""Data-parallel training helpers: process group from torchrun's environment, gradient averaging,
batch norm synchronized over processes, and the sampler that makes resume exact.

Gradients are averaged by one flat all-reduce per optimizer step rather than by wrapping the networks
in ``DistributedDataParallel``: a GAN step runs D on reals and fakes, then G through D, with lazy
regularization passes on some steps, and DDP's hook-per-backward model fits that poorly (NVlabs'
stylegan2-ada and stylegan3 training loops average gradients the same way). The arithmetic is the same:
the mean gradient over processes of per-process mean losses is the gradient of the global-batch loss.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DistributedSampler


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank and world size as torchrun sets them (RANK, WORLD_SIZE, LOCAL_RANK); one process otherwise."""
    try:
        return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError as exc:
        raise RuntimeError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({exc})") from None


def init_process_group(device: torch.device, info: DistInfo) -> None:
    """Join torchrun's process group: NCCL between GPUs, gloo on the CPU. A no-op in one process."""
    if not info.enabled or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Make every process's parameters and buffers equal to ``src``'s."""
    if not dist.is_initialized():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src)


def average_gradients(params: Iterable[torch.Tensor], world_size: int) -> None:
    """Replace each gradient by its mean over processes (one flat all-reduce).

    Parameters without a gradient are left alone; every process runs the same step, so the set of
    parameters with gradients is the same on all of them.
    """
    if world_size <= 1 or not dist.is_initialized():
        return
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return
    flat = torch.cat([p.grad.flatten() for p in with_grad])
    dist.all_reduce(flat)
    flat.div_(world_size)
    offset = 0
    for p in with_grad:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    if dist.is_initialized():
        values = values.clone()
        dist.all_reduce(values)
        values /= dist.get_world_size()
    return values


def gather_objects(obj: Any) -> list[Any]:
    """Every process's ``obj`` in rank order (on every process)."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose gradient is the sum over processes of the incoming gradients: every
    process's loss depends on every process's input through the sum."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        dist.all_reduce(y)
        return y

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        g = grad.clone()
        dist.all_reduce(g)
        return g


class CrossProcessBatchNorm2d(nn.BatchNorm2d):
    """Batch norm whose training statistics cover the global batch, on any device.

    ``nn.SyncBatchNorm`` only runs on GPUs; this computes the per-channel sum and sum of squares of the
    local batch, adds them over processes with an autograd-aware all-reduce (so gradients flow through
    the global statistics as they would in one process), and normalizes with the global mean and
    biased variance (Ioffe and Szegedy 2015, Algorithm 1); the running variance is updated with the
    unbiased estimate, as ``nn.BatchNorm2d`` does. Outside training, or in one process, it is
    ``nn.BatchNorm2d``; its state dict is the same, so checkpoints move between both.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(x)
        c = x.shape[1]
        x32 = x.float()
        local = torch.cat([x32.sum(dim=(0, 2, 3)), (x32 * x32).sum(dim=(0, 2, 3)), x32.new_tensor([x.numel() / c])])
        total = _AllReduceSum.apply(local)
        n = total[2 * c]
        mean = total[:c] / n
        var = (total[c : 2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * (n / (n - 1).clamp_min(1))
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        y = (x32 - mean[None, :, None, None]) * torch.rsqrt(var + self.eps)[None, :, None, None]
        if self.affine:
            y = y * self.weight[None, :, None, None] + self.bias[None, :, None, None]
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Batch norm over the global batch under DDP: ``nn.SyncBatchNorm`` on CUDA, our own elsewhere.

    Parameters and buffers are moved over as they are, so optimizers built afterwards see the same
    tensors and state dicts keep their keys.
    """
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in list(module.named_children()):
        if type(child) is nn.BatchNorm2d:
            new = CrossProcessBatchNorm2d(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            if child.affine:
                new.weight, new.bias = child.weight, child.bias
            new.running_mean, new.running_var, new.num_batches_tracked = child.running_mean, child.running_var, child.num_batches_tracked
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_batchnorm(child, device)
    return module


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start part-way through an epoch.

    The order of an epoch depends only on (seed, epoch) and each process takes every K-th index, so the
    union of the K processes' b-th batches is the b-th batch one process would see. ``start`` skips the
    first samples of this process's share, for resuming in the middle of an epoch.
    """

    def __init__(self, dataset: Any, num_replicas: int, rank: int, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start: int) -> None:
        self.start = int(start)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
