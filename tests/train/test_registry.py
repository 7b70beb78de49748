"""The model registry: numbered versions, references, and every damaged model refused by file name."""

from __future__ import annotations

import json

import pytest
import torch

from models import registry
from models.dcgan import Generator, init_weights
from models.sampling import latents


def _net() -> Generator:
    torch.manual_seed(0)
    G = Generator(base_channels=4)
    init_weights(G)
    return G.eval()


def _card() -> dict:
    return {"architecture": "dcgan", "dataset": {"name": "d", "version": 1, "content_hash": "x"}}


@pytest.fixture
def reg(tmp_path):
    return registry.Registry([tmp_path / "models"])


def test_versions_are_numbered_and_resolved(reg):
    G = _net()
    assert [reg.export(G, _card(), "m").version for _ in range(3)] == [1, 2, 3]
    assert reg.resolve("m").version == 3
    assert reg.resolve("m:2").ref == reg.resolve("m:v2").ref == "m:v2"
    assert reg.names() == ["m"]
    with pytest.raises(registry.ModelNotFound, match="has no version 9"):
        reg.resolve("m:v9")
    with pytest.raises(registry.ModelNotFound, match="no model named 'x'.*known: m"):
        reg.resolve("x")
    with pytest.raises(registry.RegistryError, match="positive number"):
        registry.parse_ref("m:vx")
    with pytest.raises(registry.RegistryError, match="model name"):
        registry.parse_ref("../etc")
    # No staging folders are left beside the versions.
    assert sorted(p.name for p in (reg.roots[0] / "m").iterdir()) == ["v1", "v2", "v3"]


def test_load_gives_the_saved_network(reg):
    G = _net()
    mv = reg.export(G, _card(), "m")
    H, loaded = reg.load("m")
    assert loaded.ref == mv.ref and not H.training and not any(p.requires_grad for p in H.parameters())
    z = latents([0, 1], 100)
    with torch.no_grad():
        assert torch.equal(G(z), H(z))
    card = json.loads((mv.path / "model.json").read_text())
    assert card["init_kwargs"] == G.init_kwargs and card["z_dim"] == 100 and card["files"]["generator.safetensors"]


def test_damaged_weights_are_named(reg):
    mv = reg.export(_net(), _card(), "m")
    weights = mv.path / "generator.safetensors"
    data = bytearray(weights.read_bytes())
    data[-10] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(registry.CorruptModel, match=f"{weights} does not match the sha256"):
        reg.load("m")
    weights.write_bytes(b"\x00" * 8)
    with pytest.raises(registry.CorruptModel, match=str(weights)):
        registry.load_generator(mv.path, verify=False)
    weights.unlink()
    with pytest.raises(registry.CorruptModel, match=f"{weights} is missing"):
        reg.load("m")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c.update(architecture="gan9000"), "unknown architecture 'gan9000'"),
        (lambda c: c["init_kwargs"].update(bogus=1), "init_kwargs do not fit dcgan"),
        (lambda c: c["init_kwargs"].update(base_channels=8), "does not fit the architecture"),
        (lambda c: c.update(z_dim=64), "says z_dim 64"),
        (lambda c: c.update(format="other/1"), "not a synthpacs model card"),
    ],
)
def test_cards_that_do_not_fit_are_named(reg, change, message):
    mv = reg.export(_net(), _card(), "m")
    path = mv.path / "model.json"
    card = json.loads(path.read_text())
    change(card)
    path.write_text(json.dumps(card))
    with pytest.raises(registry.CorruptModel, match=message):
        reg.load("m")


def test_unreadable_card_is_named_and_listed_as_unusable(reg):
    mv = reg.export(_net(), _card(), "m")
    (mv.path / "model.json").write_text("{not json")
    with pytest.raises(registry.CorruptModel, match=f"{mv.path / 'model.json'} is not valid JSON"):
        registry.load_generator(mv.path)
    rows = registry.describe(reg.versions("m"))
    assert rows[0]["model"] == "m:v1" and "not valid JSON" in rows[0]["error"]


def test_weights_are_never_unpickled(reg):
    """A pickle planted in place of the weights is rejected by safetensors, never executed."""
    import pickle

    mv = reg.export(_net(), _card(), "m")
    weights = mv.path / "generator.safetensors"
    weights.write_bytes(pickle.dumps({"x": 1}))
    with pytest.raises(registry.CorruptModel, match="cannot be read as safetensors"):
        registry.load_generator(mv.path, verify=False)


def test_home_models_hide_bundled_ones(tmp_path):
    bundled = tmp_path / "bundled"
    home = tmp_path / "home"
    registry.Registry([bundled]).export(_net(), _card(), "demo")
    reg = registry.Registry([home, bundled])
    assert reg.resolve("demo").path.parent.parent == bundled
    reg.export(_net(), _card(), "demo")
    assert reg.resolve("demo").path.parent.parent == home

