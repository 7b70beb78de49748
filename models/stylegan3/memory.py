"""Memory-lean autograd for the synthesis layers: keep only each layer's input, recompute the rest.

A StyleGAN3 layer evaluates its non-linearity at up to 4x the sampling rate of its output (paper §3.2),
so at 256 px one layer's temporary signal is about 90 M values per image. Plain autograd would keep
several of those per layer for the backward pass; NVIDIA's implementation avoids it with a fused CUDA
kernel that stores one sign bit per value. Here the same effect comes from recomputation (gradient
checkpointing, Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost"): the forward pass
keeps only the layer's inputs, and the backward pass recomputes the layer, one slice of the batch at a
time, so the temporary memory is bounded by a budget rather than by the batch size.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch


class _ChunkedRecompute(torch.autograd.Function):
    """``fn(*batched_slices, *shared)`` over batch slices of ``chunk`` samples; backward recomputes."""

    @staticmethod
    def forward(ctx, fn: Callable[..., torch.Tensor], chunk: int, n_batched: int, *tensors: torch.Tensor) -> torch.Tensor:
        ctx.fn, ctx.chunk, ctx.n_batched = fn, chunk, n_batched
        ctx.autocast = _autocast_state(tensors[0].device.type)
        ctx.save_for_backward(*tensors)
        return _run_chunks(fn, chunk, tensors[:n_batched], tensors[n_batched:])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        tensors = ctx.saved_tensors
        n_batched, chunk = ctx.n_batched, ctx.chunk
        needs = ctx.needs_input_grad[3:]
        batched, shared = tensors[:n_batched], tensors[n_batched:]
        grads: list[torch.Tensor | None] = [torch.zeros_like(t) if need and t is not None else None for t, need in zip(tensors, needs)]
        total = batched[0].shape[0]
        for start in range(0, total, chunk):
            stop = min(start + chunk, total)
            with torch.enable_grad(), _autocast_like(ctx.autocast):
                inputs = [t[start:stop].detach().requires_grad_(need) for t, need in zip(batched, needs[:n_batched])]
                inputs += [None if t is None else t.detach().requires_grad_(need) for t, need in zip(shared, needs[n_batched:])]
                out = ctx.fn(*inputs)
            wanted = [i for i, t in enumerate(inputs) if t is not None and t.requires_grad]
            if not wanted:
                continue
            got = torch.autograd.grad(out, [inputs[i] for i in wanted], grad[start:stop], allow_unused=True)
            for i, g in zip(wanted, got):
                if g is None:
                    continue
                if i < n_batched:
                    grads[i][start:stop] = g
                else:
                    grads[i] += g
        return (None, None, None, *grads)


def _autocast_state(device_type: str) -> tuple[str, bool, torch.dtype] | None:
    """The forward pass's autocast setting, so the recomputation runs in the same precision."""
    try:
        return device_type, torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except RuntimeError:  # a device type autocast does not know (e.g. "meta")
        return None


def _autocast_like(state: tuple[str, bool, torch.dtype] | None):
    if state is None:
        return contextlib.nullcontext()
    device_type, enabled, dtype = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled)


def _run_chunks(fn: Callable[..., torch.Tensor], chunk: int, batched: Sequence[torch.Tensor], shared: Sequence[torch.Tensor]) -> torch.Tensor:
    total = batched[0].shape[0]
    if total <= chunk:
        return fn(*batched, *shared)
    parts = [fn(*[t[i : i + chunk] for t in batched], *shared) for i in range(0, total, chunk)]
    return torch.cat(parts)


def recompute_in_chunks(fn: Callable[..., torch.Tensor], chunk: int, batched: Sequence[torch.Tensor], shared: Sequence[torch.Tensor]) -> torch.Tensor:
    """Apply ``fn`` (pure: no buffer updates, no randomness) to the batch in slices of ``chunk``.

    ``batched`` tensors are sliced along dimension 0; ``shared`` ones (weights, or None) are passed whole. When
    gradients are needed, only the inputs are kept and the backward pass recomputes ``fn`` slice by
    slice. The result equals ``fn(*batched, *shared)``; it does not support a second derivative.
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    tensors = (*batched, *shared)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        return _ChunkedRecompute.apply(fn, chunk, len(batched), *tensors)
    return _run_chunks(fn, chunk, batched, shared)
