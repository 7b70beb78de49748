"""Checkpoints: atomic files with a verifying sidecar; every damaged or unsafe file is refused by name."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from models.train import checkpoint as ckpt


def _state():
    return {"nets": {"G": {"w": torch.arange(1000, dtype=torch.float32)}}, "progress": {"iteration": 7}, "rng": {"python": (3, tuple(range(625)), None)}}


def test_round_trip_and_listing(tmp_path):
    for it in (3, 7, 12):
        ckpt.save_checkpoint(tmp_path, it, _state(), {"epoch": it})
    found = ckpt.list_checkpoints(tmp_path)
    assert [c.iteration for c in found] == [3, 7, 12]
    assert found[-1].meta["epoch"] == 12 and found[-1].meta["sha256"]
    state = ckpt.load_checkpoint(found[-1].path)
    assert torch.equal(state["nets"]["G"]["w"], torch.arange(1000, dtype=torch.float32))
    assert state["rng"]["python"][1][624] == 624
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]  # no temporary files left behind


def test_truncated_file_is_named(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, _state(), {})
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ckpt.CheckpointError, match=f"{path}.*truncated or damaged"):
        ckpt.load_checkpoint(path)


def test_truncated_file_without_sidecar_is_named(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, _state(), {})
    path.with_suffix(".json").unlink()
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(ckpt.CheckpointError, match=f"{path}.*truncated or damaged"):
        ckpt.load_checkpoint(path)


def test_flipped_bytes_are_caught_by_the_sidecar_hash(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, _state(), {})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the tensor data: torch's reader would not notice
    path.write_bytes(bytes(data))
    with pytest.raises(ckpt.CheckpointError, match=f"{path} is damaged: its sha256 differs"):
        ckpt.load_checkpoint(path)


def test_garbage_and_foreign_files_are_refused(tmp_path):
    junk = tmp_path / "ckpt-000000001.pt"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ckpt.CheckpointError, match=str(junk)):
        ckpt.load_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"just": torch.zeros(2)}, foreign)
    with pytest.raises(ckpt.CheckpointError, match="not a synthpacs training checkpoint"):
        ckpt.load_checkpoint(foreign)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.load_checkpoint(tmp_path / "missing.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_a_checkpoint_that_would_run_code_is_not_loaded(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": ckpt.FORMAT, "x": _Payload()}, path, pickle_module=pickle)
    with pytest.raises(ckpt.CheckpointError, match=f"{path} holds objects other than tensors"):
        ckpt.load_checkpoint(path)


def test_unreadable_sidecar_is_named(tmp_path):
    path = ckpt.save_checkpoint(tmp_path, 1, _state(), {})
    path.with_suffix(".json").write_text("{")
    with pytest.raises(ckpt.CheckpointError, match="sidecar .*ckpt-000000001.json is not readable JSON"):
        ckpt.load_checkpoint(path)


def test_prune_keeps_the_newest_and_protected(tmp_path):
    for it in range(1, 7):
        ckpt.save_checkpoint(tmp_path, it, _state(), {})
    ckpt.prune_checkpoints(tmp_path, keep=2, protect={2})
    assert [c.iteration for c in ckpt.list_checkpoints(tmp_path)] == [2, 5, 6]
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["ckpt-000000002.json", "ckpt-000000005.json", "ckpt-000000006.json"]
    meta = json.loads((tmp_path / "ckpt-000000006.json").read_text())
    assert meta["iteration"] == 6 and meta["size"] == (tmp_path / "ckpt-000000006.pt").stat().st_size
