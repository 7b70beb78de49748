"""The synthesis input: Fourier features read through the learned transform (Karras et al. 2021,
Appendix F), checked against transforms and feature values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from models.stylegan3.synthesis import SynthesisInput, content_transform, learned_input_transform

C = 4  # channels
SIZE, RATE, BANDWIDTH = 12, 16.0, 2.0


def _input_with(affine_out: tuple[float, float, float, float]) -> SynthesisInput:
    """An input layer whose affine returns ``affine_out`` for every w and whose channel mix is the
    identity (weight = sqrt(C) I), so the output is the Fourier features themselves."""
    inp = SynthesisInput(w_dim=3, channels=C, size=SIZE, rate=RATE, bandwidth=BANDWIDTH)
    with torch.no_grad():
        inp.affine.weight.zero_()
        inp.affine.bias.copy_(torch.tensor(affine_out))
        inp.weight.copy_(torch.eye(C) * math.sqrt(C))
        inp.freqs.copy_(torch.tensor([[1.5, 0.0], [0.0, -1.0], [0.7, 0.9], [-1.2, 0.4]]))
        inp.phases.copy_(torch.tensor([0.1, -0.3, 0.25, 0.0]))
    return inp


def _features_at(points_xy: torch.Tensor, inp: SynthesisInput) -> torch.Tensor:
    """sin(2 pi (f . q + phase)) at grid points q, (C, SIZE, SIZE), in float64."""
    f = inp.freqs.double()
    ph = inp.phases.double()
    return torch.sin(2 * math.pi * (torch.einsum("hwk,ck->chw", points_xy, f) + ph.view(-1, 1, 1)))


def _grid() -> torch.Tensor:
    """(SIZE, SIZE, 2) positions (x, y) of the samples: centred, in image widths."""
    pos = (torch.arange(SIZE, dtype=torch.float64) + 0.5 - SIZE / 2) / RATE
    gy, gx = torch.meshgrid(pos, pos, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def test_transform_from_affine_output_worked_by_hand():
    # (r_c, r_s, t_x, t_y) = (3, 4, 0.5, -0.25): the norm of (3, 4) is 5, so the normalized vector is
    # (0.6, 0.8, 0.1, -0.05). Translate by -(0.1, -0.05), then rotate by [[0.6, -0.8], [0.8, 0.6]]:
    #   translation column = R (-0.1, 0.05) = (0.6 * -0.1 - 0.8 * 0.05, 0.8 * -0.1 + 0.6 * 0.05)
    #                      = (-0.10, -0.05).
    expected = torch.tensor([[0.6, -0.8, -0.10], [0.8, 0.6, -0.05], [0.0, 0.0, 1.0]])
    got = learned_input_transform(torch.tensor([[3.0, 4.0, 0.5, -0.25]]))
    torch.testing.assert_close(got[0], expected, rtol=0, atol=1e-7)
    # The identity at initialization, and a scale of (r_c, r_s) that does not change the rotation.
    torch.testing.assert_close(learned_input_transform(torch.tensor([[1.0, 0.0, 0.0, 0.0]]))[0], torch.eye(3))
    torch.testing.assert_close(learned_input_transform(torch.tensor([[6.0, 8.0, 1.0, -0.5]]))[0], expected, rtol=0, atol=1e-7)


def test_features_are_read_at_the_hand_computed_positions():
    """Rotation and translation together, where translating the grid before or after rotating it, or
    not dividing t by |(r_c, r_s)|, reads the features elsewhere."""
    inp = _input_with((3.0, 4.0, 0.5, -0.25))
    with torch.no_grad():
        out = inp(torch.zeros(1, 3))[0].double()
    grid = _grid()
    # p -> (0.6 x - 0.8 y - 0.10, 0.8 x + 0.6 y - 0.05), the matrix of the test above.
    x, y = grid[..., 0], grid[..., 1]
    read_at = torch.stack([0.6 * x - 0.8 * y - 0.10, 0.8 * x + 0.6 * y - 0.05], dim=-1)
    expected = _features_at(read_at, inp)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)

    # The two mistakes this replaces. Translation not rotated: column (-0.1, 0.05). Translation not
    # divided by 5: column R (-0.5, 0.25) = (-0.3 - 0.2, -0.4 + 0.15) = (-0.5, -0.25).
    unrotated = torch.stack([0.6 * x - 0.8 * y - 0.1, 0.8 * x + 0.6 * y + 0.05], dim=-1)
    unnormalized = torch.stack([0.6 * x - 0.8 * y - 0.5, 0.8 * x + 0.6 * y - 0.25], dim=-1)
    for wrong in (unrotated, unnormalized):
        assert (out - _features_at(wrong, inp)).abs().max() > 0.1


def test_user_transform_is_applied_after_the_learned_one():
    """M = learned @ user: a user translation of the content by (0.25, 0) under a learned 90-degree
    rotation (r_c, r_s) = (0, 2) and no learned translation reads at R (p - (0.25, 0)) with
    R = [[0, -1], [1, 0]], i.e. at (-y, x - 0.25)."""
    inp = _input_with((0.0, 2.0, 0.0, 0.0))
    with torch.no_grad():
        out = inp(torch.zeros(1, 3), content_transform(translate=(0.25, 0.0)))[0].double()
    grid = _grid()
    x, y = grid[..., 0], grid[..., 1]
    expected = _features_at(torch.stack([-y, x - 0.25], dim=-1), inp)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)


def test_channel_mix_weight_is_stored_in_by_out():
    """Output feature o = sum_i x_i weight[i, o] / sqrt(C): NVlabs keeps the transpose."""
    inp = _input_with((1.0, 0.0, 0.0, 0.0))
    with torch.no_grad():
        plain = inp(torch.zeros(1, 3))[0]
        mix = torch.zeros(C, C)
        mix[0, 2] = math.sqrt(C)  # input channel 0 -> output channel 2
        inp.weight.copy_(mix)
        mixed = inp(torch.zeros(1, 3))[0]
    torch.testing.assert_close(mixed[2], plain[0])
    assert mixed[[0, 1, 3]].abs().max() == 0


@pytest.mark.parametrize("batch", [1, 3])
def test_identity_at_initialization(batch):
    inp = SynthesisInput(w_dim=3, channels=C, size=SIZE, rate=RATE, bandwidth=BANDWIDTH)
    w = torch.randn(batch, 3)
    t = inp.affine(w)
    torch.testing.assert_close(learned_input_transform(t), torch.eye(3).expand(batch, 3, 3))
