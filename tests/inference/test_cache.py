"""The model cache over a real registry folder: on-demand loads, the memory bound, broken files, and new
versions picked up without a restart."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.registry import CorruptModel, ModelNotFound, Registry, RegistryError
from service.inference.cache import AVAILABLE, FAILED, READY, ModelCache, ModelUnavailable, load_model


@pytest.fixture
def cache(models_root: Path):
    changes = []
    c = ModelCache(Registry([models_root]), torch.device("cpu"), max_loaded=2, max_batch=8, on_change=lambda: changes.append(1))
    c.changes = changes
    return c


def test_loads_on_demand_and_reports_state(cache, export) -> None:
    export("alpha")
    assert cache.statuses()[0].state == AVAILABLE
    model = cache.get("alpha")
    assert model.ref == "alpha:v1" and model.resolution == 16 and model.channels == 1 and model.z_dim == 64
    assert cache.get("alpha:v1") is model and cache.get("alpha:1") is model
    status = cache.status("alpha")
    assert status.state == READY and status.latest and status.loaded is model
    assert cache.readiness() == {"alpha:v1": True, "alpha": True}
    assert cache.changes


def test_unknown_and_malformed_references(cache, export) -> None:
    export("alpha")
    with pytest.raises(ModelNotFound, match="no model named 'beta'"):
        cache.get("beta")
    with pytest.raises(ModelNotFound, match="no version 7"):
        cache.get("alpha:v7")
    with pytest.raises(RegistryError):
        cache.get("alpha:latest")
    with pytest.raises(RegistryError):
        cache.get("../etc")


def test_least_recently_used_model_is_dropped(cache, export) -> None:
    for name in ("a", "b", "c"):
        export(name)
    cache.get("a")
    cache.get("b")
    cache.get("a")  # b is now the least recently used
    cache.get("c")
    assert sorted(m.ref for m in cache.loaded()) == ["a:v1", "c:v1"]
    assert cache.status("b").state == AVAILABLE
    assert cache.readiness()["b"] is False


def test_corrupt_weights_name_the_file_and_recover_when_fixed(cache, export) -> None:
    good = export("good")
    bad = export("bad")
    weights = bad.path / "generator.safetensors"
    original = weights.read_bytes()
    weights.write_bytes(original[: len(original) // 2])
    with pytest.raises(ModelUnavailable, match=str(weights)):
        cache.get("bad")
    assert cache.status("bad").state == FAILED and str(weights) in cache.status("bad").error
    assert cache.get("good").ref == good.ref  # the others are served
    with pytest.raises(ModelUnavailable):  # not retried while the files are unchanged
        cache.get("bad")
    weights.write_bytes(original)
    assert cache.get("bad").ref == "bad:v1"


def test_card_that_does_not_match_the_network(cache, export, models_root) -> None:
    mv = export("liar")
    card = json.loads((mv.path / "model.json").read_text())
    card["resolution"] = 32
    (mv.path / "model.json").write_text(json.dumps(card))
    with pytest.raises(ModelUnavailable, match=r"model.json.*resolution|model.json describes images"):
        cache.get("liar")


def test_unreadable_card(cache, export) -> None:
    mv = export("garbled")
    (mv.path / "model.json").write_text("{not json")
    with pytest.raises(ModelUnavailable, match="model.json is not valid JSON"):
        cache.get("garbled")


def test_new_version_takes_over_warm(cache, export) -> None:
    export("m")
    assert cache.get("m").ref == "m:v1"
    export("m", seed=1)
    assert cache.resolve("m").version == 1  # nothing changes until a rescan
    cache.rescan()
    assert cache.resolve("m").version == 2
    assert cache.status("m:v2").state == READY  # loaded before it took over


def test_broken_new_version_leaves_the_old_one_serving(cache, export) -> None:
    export("m")
    cache.get("m")
    v2 = export("m", seed=1)
    (v2.path / "generator.safetensors").write_bytes(b"garbage")
    cache.rescan()
    assert cache.resolve("m").version == 1
    assert cache.status("m:v2").state == FAILED
    assert "generator.safetensors" in cache.status("m:v2").error


def test_preload_skips_missing_and_broken_models(cache, export) -> None:
    export("fine")
    broken = export("broken")
    (broken.path / "generator.safetensors").unlink()
    cache.preload(["missing", "broken", "fine"])
    readiness = cache.readiness()
    assert readiness["fine"] is True
    assert readiness["broken"] is False and readiness["missing"] is False


def test_load_model_rejects_a_generator_that_cannot_run(export) -> None:
    mv = export("x", kind="crashing")
    with pytest.raises(CorruptModel, match="fails on a probe latent: RuntimeError"):
        load_model(mv, torch.device("cpu"), 8, False)
