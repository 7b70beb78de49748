"""Calibrated forward sizes make an image independent of its batch (service/inference/calibrate.py)."""

from __future__ import annotations

import torch

from models.sampling import latents
from service.inference.calibrate import calibrate_batch_sizes, candidate_sizes, half_is_faithful, pad_to
from tests.inference.nets import TinyGenerator


def _run(net):
    def run(z):
        with torch.inference_mode():
            return net(z)

    return run


def test_candidate_sizes() -> None:
    assert candidate_sizes(1) == [1]
    assert candidate_sizes(8) == [1, 2, 4, 8]
    assert candidate_sizes(24) == [1, 2, 4, 8, 16, 24]
    assert pad_to((4, 8), 1) == 4 and pad_to((4, 8), 5) == 8


def test_calibrated_sizes_give_identical_bits_for_every_batch_size() -> None:
    net = TinyGenerator().eval()
    run = _run(net)
    sizes = calibrate_batch_sizes(run, net.z_dim, 8)
    assert sizes and sizes[-1] <= 8
    seeds = list(range(100, 108))
    z = latents(seeds, net.z_dim)
    # Reference: each seed alone, padded to the smallest calibrated size.
    ref = []
    for i in range(len(seeds)):
        batch = torch.cat([z[i : i + 1], torch.zeros(sizes[0] - 1, net.z_dim)])
        ref.append(run(batch)[0])
    for n in range(1, 9):
        size = pad_to(sizes, n)
        out = run(torch.cat([z[:n], torch.zeros(size - n, net.z_dim)]))
        for i in range(n):
            assert torch.equal(out[i], ref[i]), f"seed {seeds[i]} differs when computed among {n}"


def _rowwise(z: torch.Tensor) -> torch.Tensor:
    """A batch-invariant stand-in for a generator: each row's image depends on that row alone."""
    return torch.tanh(z[:, :16] * 0.5).reshape(-1, 1, 4, 4)


def test_selection_prefers_the_largest_consistent_sizes() -> None:
    """A fake kernel whose result depends on the batch size's parity: odd sizes are dropped."""
    assert calibrate_batch_sizes(_rowwise, 64, 8) == (1, 2, 4, 8)
    assert calibrate_batch_sizes(lambda z: _rowwise(z) + (1e-3 if len(z) % 2 else 0.0), 64, 8) == (2, 4, 8)
    assert calibrate_batch_sizes(lambda z: _rowwise(z) + (1e-3 if len(z) >= 4 else 0.0), 64, 16) == (4, 8, 16)


def test_position_dependent_sizes_are_dropped() -> None:
    def run(z):
        out = _rowwise(z)
        if len(z) == 8:  # the last row is computed differently at this size
            out[-1] += 1e-3
        return out

    assert calibrate_batch_sizes(run, 64, 8) == (1, 2, 4)


def test_half_precision_check() -> None:
    net = TinyGenerator().eval()
    run32 = _run(net)
    assert half_is_faithful(run32, run32, net.z_dim)[0]
    ok, reason = half_is_faithful(run32, lambda z: run32(z) + 0.05, net.z_dim)
    assert not ok and "8-bit levels" in reason
    ok, reason = half_is_faithful(run32, lambda z: run32(z) * float("nan"), net.z_dim)
    assert not ok and "NaN" in reason


def test_batching_only_up_to_the_size_that_pays() -> None:
    from service.inference.calibrate import Calibration

    gpu_like = Calibration((1, 2, 4, 8), {1: 0.010, 2: 0.010, 4: 0.011, 8: 0.012})
    assert gpu_like.sizes == (1, 2, 4, 8)
    flat = Calibration((1, 2, 4, 8), {1: 0.004, 2: 0.010, 4: 0.020, 8: 0.030})  # within 10% at batch 1
    assert flat.sizes == (1,)
    cpu_like = Calibration((1, 2, 4, 8), {1: 0.004, 2: 0.016, 4: 0.040, 8: 0.100})  # batch 1 is 3x cheaper
    assert cpu_like.sizes == (1,)
    middle = Calibration((2, 4, 8, 16), {2: 0.010, 4: 0.012, 8: 0.040, 16: 0.160})
    assert middle.sizes == (2, 4)


def test_calibration_times_every_consistent_size() -> None:
    from service.inference.calibrate import calibrate

    cal = calibrate(_rowwise, 64, 8)
    assert cal.consistent == (1, 2, 4, 8) and set(cal.seconds) == {1, 2, 4, 8}
    assert all(t >= 0 for t in cal.seconds.values()) and set(cal.sizes) <= set(cal.consistent) and cal.sizes[0] == 1
