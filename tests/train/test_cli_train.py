"""``synthpacs train`` as a user runs it: a new run, resume, and the messages for bad requests."""

from __future__ import annotations

import json

import pytest

from models.train import checkpoint as ckpt
from service.cli import main

TINY_FLAGS = ["--set", "g_channels=8", "--set", "d_channels=4", "--grid", "4", "--batch", "8", "--quiet"]


def _train(home, *argv):
    return main(["--home", str(home), "--log-level", "error", "train", *argv])


def test_train_then_resume_from_the_command_line(tiny_home, capsys):
    assert _train(tiny_home, "--dataset", "tiny@v1", "--epochs", "1", "--run-id", "cli", *TINY_FLAGS) == 0
    err = capsys.readouterr().err
    assert "finished: run cli at iteration 3 (1 epochs" in err
    info = json.loads((tiny_home / "runs" / "cli" / "run.json").read_text())
    assert info["options"]["hparams"] == {"g_channels": 8, "d_channels": 4}
    assert info["options"]["snapshots"] is None  # defaults stay defaults, so an extended run gets new ones
    assert _train(tiny_home, "--resume", "cli", "--epochs", "2", "--quiet") == 0
    assert "finished: run cli at iteration 6 (2 epochs" in capsys.readouterr().err
    assert ckpt.latest_checkpoint(tiny_home / "runs" / "cli" / "checkpoints").iteration == 6


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "1"], "--dataset NAME[@vN] is required"),
        (["--dataset", "tiny", "--epochs", "1", "--resolution", "100"], "DCGAN supports resolutions 64, 128, 256 px, not 100"),
        (["--dataset", "tiny", "--epochs", "1", "--batch", "64"], "has 24 training images; a batch of 64 needs at least 64"),
        (["--dataset", "tiny@v7", "--epochs", "1"], "dataset 'tiny' has no version 7"),
        (["--dataset", "tiny", "--epochs", "1", "--device", "cuda:0"], "sees no CUDA GPU"),
        (["--dataset", "tiny", "--epochs", "1", "--device", "tpu"], "device 'tpu'"),
        (["--dataset", "tiny", "--epochs", "1", "--from-checkpoint", "x.pt"], "--from-checkpoint only goes with --resume"),
        (["--resume", "nothing"], "no training run 'nothing'"),
        (["--resume", "nothing", "--arch", "dcgan"], "--resume continues a run as it was set up"),
    ],
)
def test_bad_requests_get_a_clear_message(tiny_home, capsys, argv, message):
    if "cuda:0" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    assert _train(tiny_home, *argv, "--quiet") == 2
    assert message in capsys.readouterr().err
    runs = tiny_home / "runs"
    assert not runs.exists() or not any(runs.iterdir())  # nothing was started


def test_malformed_flags_are_refused_by_the_parser(tiny_home, capsys):
    with pytest.raises(SystemExit):
        _train(tiny_home, "--dataset", "tiny", "--epochs", "1", "--set", "novalue")
    assert "is not KEY=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _train(tiny_home, "--dataset", "tiny", "--epochs", "1", "--snapshots", "10,-5")
    assert "give positive numbers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _train(tiny_home, "--dataset", "tiny", "--epochs", "1", "--kimg", "3")
    assert "not allowed with argument" in capsys.readouterr().err
