"""Forward-pass sizes that give bit-identical images, and whether half precision keeps images right.

Why: CPU and GPU kernel libraries (oneDNN, MKL, cuDNN, cuBLAS) choose their algorithm from the tensor
shapes, and different algorithms sum in different orders. Measured on the 2-core CPU here with torch
2.13: a DCGAN's transposed convolutions give different float bits at batch 3 and 7 than at batch 1, 2, 4
and 8 (about 5e-7), and a Linear layer gives different bits at batch 1 (matrix-vector) than at batch 2-8,
and again at 16 and more. After quantization to 16 bits such a difference can change a pixel, so an image
would depend on how many other requests happened to share its batch.

The fix: the batcher only ever runs a forward pass at one of a few fixed sizes, padding the batch with
zero latents up to the next one, and those sizes are chosen here per model and device by running two
probe latents at each candidate size (first and last row, then swapped) and keeping the sizes whose
outputs are bitwise equal to those at the largest size, in every position. Kernels that see the same
shapes run the same algorithm, so what holds for the probes holds for every latent; a different
algorithm changes the bits of thousands of output values and the probes see it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from models.sampling import latents

# Seeds of the probe latents (any two distinct seeds work; fixed so calibration is repeatable).
PROBE_SEEDS = (0xC0FFEE, 0xBADC0DE)

# Timed passes per consistent size after the bit checks, while calibration has run less than the budget.
TIMING_PASSES = 3
TIMING_BUDGET_S = 10.0
# Batches grow until their time per image is within this factor of the best size's.
EFFICIENCY_TOLERANCE = 1.1

# Half precision must keep every pixel within this many 8-bit levels of the float32 image.
HALF_TOLERANCE_LEVELS = 1.0

Run = Callable[[torch.Tensor], torch.Tensor]


def candidate_sizes(max_batch: int) -> list[int]:
    """1, 2, 4, ... below ``max_batch``, and ``max_batch`` itself."""
    if max_batch < 1:
        raise ValueError("max_batch must be at least 1")
    sizes = [1 << i for i in range(int(math.log2(max_batch)) + 1) if (1 << i) < max_batch]
    return sizes + [max_batch]


@dataclass(frozen=True)
class Calibration:
    """What calibration found for one model on one device.

    ``consistent``: the forward sizes whose images are bit-identical. ``seconds``: the fastest of several
    timed passes at each of them. :attr:`sizes`: the ones the batcher uses.
    """

    consistent: tuple[int, ...]
    seconds: dict[int, float]

    @property
    def sizes(self) -> tuple[int, ...]:
        """The consistent sizes up to the smallest one whose time per image comes within
        :data:`EFFICIENCY_TOLERANCE` of the best: batches grow only as far as they make images cheaper.

        On a GPU the time per image keeps falling with the batch, so that is every size. On a CPU it is
        often flat: measured on the shared 2-core machine with the DCGAN's batch-invariant transposed
        convolutions, 4.5 to 6 ms per image at every size with one thread, and there merging requests
        only makes clients wait for each other and arrive in bursts (bench/RESULTS.md). Any consistent
        size gives the same pixels, so this choice never changes an image.
        """
        per_image = {s: self.seconds[s] / s for s in self.consistent if s in self.seconds}
        if not per_image:
            return self.consistent
        best = min(per_image.values())
        cap = min(s for s, t in per_image.items() if t <= best * EFFICIENCY_TOLERANCE)
        return tuple(s for s in self.consistent if s <= cap)


def calibrate(run: Run, z_dim: int, max_batch: int) -> Calibration:
    """Find the forward sizes (ascending) at which ``run`` gives the same bits for a latent wherever it
    sits, and time them.

    ``run`` maps float32 CPU latents (N, z_dim) to images (it moves them to the model's device and
    dtype); it is called about ``(2 + TIMING_PASSES) * sum(candidate_sizes(max_batch))`` rows' worth (the
    timing passes stop after :data:`TIMING_BUDGET_S`). The consistent sizes always contain 1 or the
    largest size that is consistent with itself, so there is always a way to serve.
    """
    started = time.perf_counter()
    a, b = latents(list(PROBE_SEEDS), z_dim)
    results: dict[int, tuple[bytes, bytes]] = {}
    seconds: dict[int, float] = {}
    for size in candidate_sizes(max_batch):
        if size == 1:
            (out_a, t1), (out_b, t2) = _timed(run, a[None]), _timed(run, b[None])
            results[size], seconds[size] = (_bits(out_a[0]), _bits(out_b[0])), min(t1, t2)
            continue
        out1, t1 = _timed(run, _probe_batch(size, z_dim, a, b))
        out2, t2 = _timed(run, _probe_batch(size, z_dim, b, a))
        seconds[size] = min(t1, t2)
        a1, b1, b2, a2 = _bits(out1[0]), _bits(out1[-1]), _bits(out2[0]), _bits(out2[-1])
        if a1 == a2 and b1 == b2:  # position-invariant at this size
            results[size] = (a1, b1)
    groups: dict[tuple[bytes, bytes], list[int]] = {}
    for size, key in results.items():
        groups.setdefault(key, []).append(size)
    # Prefer the sizes that agree with the largest one: that is where batching can pay.
    consistent = sorted(max(groups.values(), key=lambda sizes: (max(sizes), len(sizes))))
    # Other work on the machine only ever slows a pass down, so the fastest of several passes, taken in
    # interleaved rounds, is the fairest figure for each size.
    for _round in range(TIMING_PASSES):
        for size in consistent:
            if time.perf_counter() - started > TIMING_BUDGET_S:
                break
            seconds[size] = min(seconds[size], _timed(run, _probe_batch(size, z_dim, a, b))[1])
    return Calibration(tuple(consistent), {s: seconds[s] for s in consistent})


def calibrate_batch_sizes(run: Run, z_dim: int, max_batch: int) -> tuple[int, ...]:
    """The sizes that give bit-identical images (:attr:`Calibration.consistent`)."""
    return calibrate(run, z_dim, max_batch).consistent


def _probe_batch(size: int, z_dim: int, first: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    z = torch.zeros(size, z_dim)
    z[0], z[-1] = first, last
    return z


def _timed(run: Run, z: torch.Tensor) -> tuple[torch.Tensor, float]:
    started = time.perf_counter()
    out = run(z)  # run returns CPU tensors, so a GPU pass has finished when it returns
    return out, time.perf_counter() - started


def half_is_faithful(run32: Run, run16: Run, z_dim: int) -> tuple[bool, str]:
    """Whether half precision reproduces the float32 images of the probe latents to within
    :data:`HALF_TOLERANCE_LEVELS` 8-bit levels with no NaN or infinity; and a reason for the log."""
    z = latents(list(PROBE_SEEDS), z_dim)
    ref = run32(z).detach().float().cpu()
    half = run16(z).detach().float().cpu()
    if not torch.isfinite(half).all():
        return False, "float16 output has NaN or infinite values"
    worst = float((half - ref).abs().max()) * 255 / 2  # [-1, 1] spans 255 levels of 8 bits
    if worst > HALF_TOLERANCE_LEVELS:
        return False, f"float16 output differs from float32 by up to {worst:.2f} 8-bit levels"
    return True, f"float16 output within {worst:.2f} 8-bit levels of float32"


def _bits(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().numpy().tobytes()


def pad_to(sizes: Sequence[int], n: int) -> int:
    """The smallest calibrated size that holds ``n`` rows (``n`` never exceeds the largest)."""
    for size in sizes:
        if size >= n:
            return size
    raise ValueError(f"{n} rows exceed the largest calibrated forward size {max(sizes)}")
