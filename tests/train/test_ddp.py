"""DDP: `synthpacs train` under torchrun with two gloo processes on the CPU against one process.

Both runs see the same global minibatches (the DistributedSampler order depends only on seed and
epoch, and each process takes every second index) and the same latents (drawn for the global batch
from a shared generator). Gradients are averaged over the processes and batch norm uses statistics
of the global batch, so the two runs compute the same function; they differ only in the order of
floating-point sums. Stated tolerance: after 6 optimizer steps every parameter of G and D agrees
with the one-process run to 1e-3 of the largest magnitude in its tensor (measured: about 2e-5).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from models.train import checkpoint as ckpt
from tests.helpers import free_port

TOLERANCE = 1e-3
BIN = Path(sys.executable).parent
FLAGS = ["--dataset", "tiny", "--epochs", "2", "--batch", "8", "--set", "g_channels=8", "--set", "d_channels=4", "--grid", "4", "--quiet", "--log-level", "error"]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SYNTHPACS_", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_"))}
    env["OMP_NUM_THREADS"] = "1"
    return env


def _final(run: Path) -> dict:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run / "checkpoints").path)


@pytest.mark.integration
@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tiny_home):
    torchrun = BIN / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed beside this Python")
    port = free_port()
    two = subprocess.run(
        [str(torchrun), "--nnodes=1", "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={port}", "--no-python",
         str(BIN / "synthpacs"), "--home", str(tiny_home), "train", "--run-id", "ddp", *FLAGS],
        env=_env(), capture_output=True, text=True, timeout=300,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([str(BIN / "synthpacs"), "--home", str(tiny_home), "train", "--run-id", "one", *FLAGS], env=_env(), capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]

    runs = tiny_home / "runs"
    assert sorted(p.name for p in runs.iterdir()) == ["ddp", "one"]  # rank 1 made no run folder of its own
    info = json.loads((runs / "ddp" / "run.json").read_text())
    assert info["world_size"] == 2
    sessions = [json.loads(line) for line in (runs / "ddp" / "metrics.jsonl").read_text().splitlines() if '"session"' in line]
    assert len(sessions) == 1 and sessions[0]["world_size"] == 2  # only rank 0 writes

    a, b = _final(runs / "ddp"), _final(runs / "one")
    assert a["progress"] == b["progress"] == {"iteration": 6, "cur_nimg": 48, "epoch": 2, "batch_in_epoch": 0}
    assert len(a["rng"]["per_process"]) == 2
    for net in ("G", "D"):
        for key, va in a["nets"][net].items():
            vb = b["nets"][net][key]
            if not va.is_floating_point():
                assert torch.equal(va, vb), f"{net}.{key}"
                continue
            scale = float(vb.abs().max()) or 1.0
            assert float((va - vb).abs().max()) <= TOLERANCE * scale, f"{net}.{key} differs beyond the tolerance"
