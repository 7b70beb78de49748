"""Generator and discriminator: shapes and dtypes, the generator contract, truncation, batch
invariance, registry round trips, memory-lean gradients, and clear errors for bad arguments."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models import registry
from models.sampling import latents, to_uint
from models.stylegan3 import Discriminator, Generator
from models.stylegan3.discriminator import minibatch_stddev
from tests.stylegan3.conftest import Z, tiny_discriminator, tiny_generator


@pytest.mark.parametrize("resolution", [64, 128, 256])
@pytest.mark.parametrize("config", ["t", "r"])
def test_shapes_and_dtypes(resolution, config):
    G = tiny_generator(resolution, config).eval()
    D = tiny_discriminator(resolution)
    z = torch.randn(2, Z)
    with torch.no_grad():
        img = G(z)
        raw = G(z, clamp=False)
        logits = D(img)
    assert img.shape == (2, 1, resolution, resolution) and img.dtype == torch.float32
    assert torch.isfinite(raw).all() and img.min() >= -1 and img.max() <= 1
    assert logits.shape == (2, 1) and logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert (G.z_dim, G.resolution, G.channels, G.num_ws) == (Z, resolution, 1, 16)
    assert G.architecture == f"stylegan3-{config}"
    kernels = {layer.kernel for layer in G.synthesis.layers[:-1]}
    assert kernels == ({3} if config == "t" else {1})
    assert all(layer.radial == (config == "r" and not layer.is_critical) for layer in G.synthesis.layers)


def test_three_channels_on_request_and_one_by_default():
    G = tiny_generator(64, channels=3).eval()
    with torch.no_grad():
        assert G(torch.randn(2, Z)).shape == (2, 3, 64, 64)
    assert Generator.__init__.__defaults__ is not None and tiny_generator(64).channels == 1
    D = tiny_discriminator(64, channels=3)
    assert D(torch.zeros(4, 3, 64, 64)).shape == (4, 1)


def test_psi_zero_gives_the_image_of_w_avg_for_every_seed():
    G = tiny_generator(64).eval()
    G.mapping.w_avg.copy_(torch.randn(Z))  # as after training: a non-trivial average
    z = latents(list(range(5)), Z)
    with torch.no_grad():
        imgs = G(z, psi=0.0)
        ws_avg = G.mapping.w_avg.view(1, 1, -1).expand(1, G.num_ws, -1)
        expected = G.synthesis(ws_avg).clamp(-1, 1)
    for i in range(5):
        assert torch.equal(imgs[i], imgs[0])
    torch.testing.assert_close(imgs[:1], expected, rtol=0, atol=1e-6)
    with torch.no_grad():
        assert not torch.equal(G(z, psi=1.0)[0], G(z, psi=1.0)[1])


def test_truncation_cutoff_limits_which_layers_are_truncated():
    G = tiny_generator(64)
    G.mapping.w_avg.copy_(torch.randn(Z))
    z = torch.randn(3, Z)
    with torch.no_grad():
        ws = G.mapping(z, psi=0.0, truncation_cutoff=4)
        free = G.mapping(z)
    assert torch.equal(ws[:, :4], G.mapping.w_avg.expand(3, 4, -1))
    assert torch.equal(ws[:, 4:], free[:, 4:])


def test_w_avg_tracks_the_mapping_output_only_when_asked():
    G = tiny_generator(64)
    z = torch.randn(8, Z)
    before = G.mapping.w_avg.clone()
    G.mapping(z)
    assert torch.equal(G.mapping.w_avg, before)
    w = G.mapping(z, update_emas=True)[:, 0]
    torch.testing.assert_close(G.mapping.w_avg, before.lerp(w.mean(0), 1 - 0.998))


@pytest.mark.parametrize("config", ["t", "r"])
def test_inference_is_batch_invariant_on_the_cpu(config):
    """The same seed gives the same pixels alone, in a batch of 7, or in slices of 3."""
    G = tiny_generator(64, config).eval()
    seeds = [0, 1, 2, 3, 17, 2**32 - 1, 5]
    z = latents(seeds, Z)
    with torch.no_grad():
        together = G(z)
        alone = torch.cat([G(z[i : i + 1]) for i in range(len(seeds))])
        sliced = torch.cat([G(z[i : i + 3]) for i in range(0, len(seeds), 3)])
    assert np.array_equal(to_uint(together), to_uint(alone))
    assert np.array_equal(to_uint(together), to_uint(sliced))
    assert torch.equal(together, alone)


def test_memory_lean_gradients_equal_plain_autograd():
    """Recomputing each layer in slices of the batch gives the gradients plain autograd gives."""
    torch.manual_seed(3)
    lean = tiny_generator(64, memory_budget=40_000)  # forces slices of 1-2 images in most layers
    plain = tiny_generator(64, memory_budget=None)
    plain.load_state_dict(lean.state_dict())
    z = torch.randn(4, Z)
    chunks = {max(1, 40_000 // layer.temp_values_per_sample()) for layer in lean.synthesis.layers}
    assert min(chunks) < 4  # the test really slices
    target = torch.randn(4, 1, 64, 64)
    for G in (lean, plain):
        ((G(z, clamp=False) - target).square().mean()).backward()
    for (name, a), (_n, b) in zip(lean.named_parameters(), plain.named_parameters()):
        assert a.grad is not None, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_registry_save_and_load_give_identical_images(tmp_path):
    G = tiny_generator(64, "r").eval()
    G.mapping.w_avg.copy_(torch.randn(Z))
    reg = registry.Registry([tmp_path / "models"])
    mv = reg.export(G, {"architecture": "stylegan3-r"}, "sg3-test")
    card = json.loads((mv.path / registry.CARD_FILE).read_text())
    assert card["init_kwargs"]["config"] == "r" and card["resolution"] == 64 and card["channels"] == 1 and card["z_dim"] == Z
    loaded, _mv = reg.load("sg3-test")
    z = latents([0, 1, 2], Z)
    with torch.no_grad():
        assert torch.equal(G(z), loaded(z))
        assert torch.equal(G(z, psi=0.5), loaded(z, psi=0.5))
    # The filters are rebuilt from the constructor arguments, not stored with the weights.
    assert not any("filter" in k for k in G.state_dict())


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"config": "x"}, "config must be"),
        ({"resolution": 100}, "power of two"),
        ({"resolution": 8}, "power of two"),
        ({"channels": 2}, "channels must be 1"),
        ({"channel_base": 0}, "positive"),
        ({"num_layers": 2, "num_critical": 2}, "num_critical"),
    ],
)
def test_generator_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tiny_generator(**{"resolution": 64, **kwargs})


def test_generator_and_discriminator_reject_bad_inputs():
    G = tiny_generator(64)
    with pytest.raises(ValueError, match=r"z must have shape \(N, 16\)"):
        G(torch.randn(2, Z + 1))
    with pytest.raises(ValueError, match="psi must be a finite number"):
        G(torch.randn(2, Z), psi=float("nan"))
    with pytest.raises(ValueError, match="ws must have shape"):
        G.synthesis(torch.randn(2, 3, Z))
    D = tiny_discriminator(64)
    with pytest.raises(ValueError, match=r"images must have shape \(N, 1, 64, 64\)"):
        D(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="power of two"):
        Discriminator(resolution=96)


def test_minibatch_stddev_handles_batches_not_divisible_by_the_group():
    x = torch.randn(6, 3, 4, 4)
    y = minibatch_stddev(x, group_size=4)  # 6 is not divisible by 4: groups of 3
    assert y.shape == (6, 4, 4, 4)
    groups = x.reshape(3, 2, 3, 4, 4)
    expected = (groups.var(dim=0, unbiased=False) + 1e-8).sqrt().mean(dim=[1, 2, 3])
    torch.testing.assert_close(y[:2, 3, 0, 0], expected)
    assert minibatch_stddev(torch.randn(1, 3, 4, 4)).shape == (1, 4, 4, 4)


def test_discriminator_channels_follow_the_resolution_rule():
    D = Discriminator(resolution=256, channels=1)  # the published 256 px discriminator
    widths = [D.from_image.weight.shape[0]] + [b.conv1.weight.shape[0] for b in D.blocks]
    assert widths == [128, 256, 512, 512, 512, 512, 512]
    assert sum(p.numel() for p in D.parameters()) > 20_000_000


@pytest.mark.parametrize("dtype,levels", [(torch.float16, 1.0), (torch.bfloat16, 6.0)])
def test_reduced_precision_inference_stays_close_to_float32(dtype, levels):
    """What the inference service does on a GPU (``net.half()``, half-precision latents): the layers
    compute in the weights' precision, the Fourier features and mapping in float32."""
    import copy

    G32 = tiny_generator(64).eval()
    G32.mapping.w_avg.normal_()
    z = latents([0, 1, 2], Z)
    G = copy.deepcopy(G32).to(dtype=dtype)
    with torch.no_grad():
        ref = G32(z, psi=0.7)
        out = G(z.to(dtype), psi=0.7)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (out.float() - ref).abs().max() * 127.5 <= levels  # in 8-bit levels
