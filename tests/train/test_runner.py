"""The shared runner on a tiny dataset on the CPU: outputs, exact resume, interruption, and the errors
that must come before training starts."""

from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest
import torch
from PIL import Image

from models.train import checkpoint as ckpt
from models.train.runner import TrainError, resume, train
from tests.train.conftest import make_dataset, options


def _final_state(run_dir):
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints").path)


def _assert_same_training_state(a, b):
    assert a["progress"] == b["progress"]
    for net in a["nets"]:
        for k, v in a["nets"][net].items():
            assert torch.equal(v, b["nets"][net][k]), f"{net}.{k} differs"
    for name in a["optimizers"]:
        sa, sb = a["optimizers"][name]["state"], b["optimizers"][name]["state"]
        for i in sa:
            for k in sa[i]:
                assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), f"optimizer {name} state {i}.{k} differs"
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])


def test_a_few_iterations_write_the_run_folder(tiny_home):
    r = train(options(run_id="r1", log_every=1), tiny_home / "datasets", tiny_home / "runs")
    run = r.run_dir
    assert (r.iteration, r.epoch, r.cur_nimg) == (6, 2, 48)
    info = json.loads((run / "run.json").read_text())
    assert info["options"]["arch"] == "dcgan" and info["dataset"]["name"] == "tiny" and info["steps_per_epoch"] == 3
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["event"] == "train"]
    assert [row["iteration"] for row in train_rows] == [1, 2, 3, 4, 5, 6]
    for key in ("loss_D", "loss_G", "D_real", "D_fake", "images_per_s", "mem_rss_mb", "epoch", "kimg"):
        assert all(np.isfinite(row[key]) for row in train_rows), key
    assert [row["event"] for row in rows][0] == "session" and rows[-1]["event"] == "end"
    # Default snapshots for 2 epochs: quarters of the length, rounded to whole epochs by the tick.
    grids = sorted(p.name for p in (run / "samples").glob("epoch-*.png"))
    assert grids == ["epoch-00001.png", "epoch-00002.png"]
    with Image.open(run / "samples" / "epoch-00002.png") as im:
        assert im.mode == "L" and im.size == (2 + 2 * 66, 2 + 2 * 66)  # 4 images of 64 px, 2 px apart
    assert (run / "samples" / "progression.png").is_file() and (run / "samples" / "reals.png").is_file()
    assert [c.iteration for c in ckpt.list_checkpoints(run / "checkpoints")] == [3, 6]
    assert not (run / "run.lock").read_text().strip() == ""


def test_resume_is_bit_identical_to_an_uninterrupted_run(tiny_home):
    ds, runs = tiny_home / "datasets", tiny_home / "runs"
    full = train(options(run_id="full", epochs=4), ds, runs)
    # Different snapshot points in the two halves: snapshots must not disturb the training RNG.
    train(options(run_id="part", epochs=2, snapshots=[1.0]), ds, runs)
    resumed = resume("part", ds, runs, epochs=4)
    assert resumed.iteration == full.iteration == 12
    _assert_same_training_state(_final_state(full.run_dir), _final_state(resumed.run_dir))
    sessions = [json.loads(line) for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines() if '"session"' in line]
    assert [s["resumed"] for s in sessions] == [False, True]


def test_resume_in_the_middle_of_an_epoch_is_bit_identical(tiny_home):
    """kimg runs stop mid-epoch: the sampler restarts at the same position of the same order."""
    ds, runs = tiny_home / "datasets", tiny_home / "runs"
    full = train(options(run_id="k-full", epochs=None, kimg=0.08), ds, runs)  # 10 minibatches of 8
    part = train(options(run_id="k-part", epochs=None, kimg=0.04), ds, runs)  # 5: epoch 1, minibatch 2 of 3
    assert _final_state(part.run_dir)["progress"] == {"iteration": 5, "cur_nimg": 40, "epoch": 1, "batch_in_epoch": 2}
    resumed = resume("k-part", ds, runs, kimg=0.08)
    _assert_same_training_state(_final_state(full.run_dir), _final_state(resumed.run_dir))


def test_sigterm_stops_with_a_checkpoint_and_resume_continues_exactly(tiny_home):
    """SIGTERM (a pod being evicted, Ctrl-C) finishes the minibatch, checkpoints and stops."""
    ds, runs = tiny_home / "datasets", tiny_home / "runs"
    full = train(options(run_id="s-full", epochs=3), ds, runs)

    def send_sigterm(G, info):  # runs in the training thread at the epoch-1 snapshot
        if info.value == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return {}

    stopped = train(options(run_id="s-part", epochs=3, snapshots=[1.0]), ds, runs, metrics_fn=send_sigterm)
    assert stopped.interrupted and stopped.iteration == 4  # one more minibatch after the snapshot
    assert stopped.checkpoint is not None and stopped.checkpoint.name == "ckpt-000000004.pt"
    resumed = resume("s-part", ds, runs)
    assert not resumed.interrupted
    _assert_same_training_state(_final_state(full.run_dir), _final_state(resumed.run_dir))
    # The rows of the interrupted minibatches are not duplicated by the resumed session.
    its = [json.loads(line)["iteration"] for line in (resumed.run_dir / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    assert its == sorted(set(its))


def test_metrics_hook_is_called_at_snapshots_and_recorded(tiny_home):
    seen = []

    def hook(G, info):
        assert not G.training and info.dataset.name == "tiny"
        seen.append((info.unit, info.value, info.iteration))
        return {"score": float(info.iteration)}

    r = train(options(run_id="m", epochs=2, snapshots=[1.0, 2.0]), tiny_home / "datasets", tiny_home / "runs", metrics_fn=hook)
    assert seen == [("epoch", 1.0, 3), ("epoch", 2.0, 6)]
    snaps = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines() if '"snapshot"' in line]
    assert [s["metrics"] for s in snaps] == [{"score": 3.0}, {"score": 6.0}]
    assert _final_state(r.run_dir)["snapshot_metrics"]["score"] == 6.0


def test_dataset_smaller_than_the_batch_is_refused_before_training(tiny_home):
    with pytest.raises(TrainError, match=r"24 training images; a batch of 32 needs at least 32"):
        train(options(run_id="big", batch=32), tiny_home / "datasets", tiny_home / "runs")
    assert not (tiny_home / "runs" / "big").exists()


def test_unsupported_resolution_is_refused_before_reading_data(home):
    # No dataset exists: the resolution is checked first.
    with pytest.raises(TrainError, match="64, 128, 256 px, not 96"):
        train(options(resolution=96), home / "datasets", home / "runs")


def test_dataset_at_a_resolution_the_net_does_not_support(home):
    make_dataset(home, "odd", n=8, res=48)
    with pytest.raises(TrainError, match="not 48"):
        train(options(dataset="odd"), home / "datasets", home / "runs")


def test_resolution_that_differs_from_the_dataset(tiny_home):
    with pytest.raises(TrainError, match="holds 64 px images, but --resolution is 128"):
        train(options(resolution=128), tiny_home / "datasets", tiny_home / "runs")


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(epochs=None), "exactly one of --epochs N or --kimg N"),
        (dict(kimg=1.0), "exactly one of --epochs N or --kimg N"),
        (dict(epochs=0), "at least 1"),
        (dict(batch=0), "--batch must be at least 1"),
        (dict(dataset="missing"), "no dataset named 'missing'"),
        (dict(arch="nope"), "unknown architecture 'nope'"),
        (dict(hparams={"bogus": 1}), "does not take these settings"),
    ],
)
def test_bad_options_are_refused_before_a_run_folder_exists(tiny_home, kw, message):
    with pytest.raises(TrainError, match=message):
        train(options(run_id="bad", **kw), tiny_home / "datasets", tiny_home / "runs")
    assert not (tiny_home / "runs" / "bad").exists()


def test_existing_run_id_is_refused(tiny_home):
    train(options(run_id="same", epochs=1), tiny_home / "datasets", tiny_home / "runs")
    from models.train.rundir import RunError

    with pytest.raises(RunError, match="already exists.*--resume same"):
        train(options(run_id="same", epochs=1), tiny_home / "datasets", tiny_home / "runs")


def test_resume_refuses_a_changed_dataset(tiny_home):
    ds, runs = tiny_home / "datasets", tiny_home / "runs"
    train(options(run_id="d", epochs=1, dataset=str(ds / "tiny" / "v1")), ds, runs)
    # Replace the dataset the run points at by different pixels under the same folder name.
    import shutil

    shutil.rmtree(ds / "tiny" / "v1")
    make_dataset(tiny_home, "other", n=24, seed=1)
    shutil.move(str(ds / "other" / "v1"), str(ds / "tiny" / "v1"))
    with pytest.raises(TrainError, match="was trained on dataset tiny@v1"):
        resume("d", ds, runs, epochs=2)


def test_resume_refuses_changing_what_is_trained(tiny_home):
    train(options(run_id="c", epochs=1), tiny_home / "datasets", tiny_home / "runs")
    with pytest.raises(TrainError, match="batch cannot change"):
        resume("c", tiny_home / "datasets", tiny_home / "runs", overrides={"batch": 16})
    with pytest.raises(TrainError, match="counts in epochs"):
        resume("c", tiny_home / "datasets", tiny_home / "runs", kimg=1.0)


def test_resume_from_a_damaged_newest_checkpoint_names_the_file(tiny_home):
    ds, runs = tiny_home / "datasets", tiny_home / "runs"
    r = train(options(run_id="t", epochs=2), ds, runs)
    newest = ckpt.latest_checkpoint(r.run_dir / "checkpoints").path
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 2])
    with pytest.raises(ckpt.CheckpointError, match=f"{newest}.*truncated"):
        resume("t", ds, runs, epochs=3)
    # An earlier checkpoint still works when named.
    earlier = ckpt.list_checkpoints(r.run_dir / "checkpoints")[0].path
    assert resume("t", ds, runs, epochs=3, from_checkpoint=earlier).iteration == 9


def test_divergence_stops_with_a_message(tiny_home):
    with pytest.raises(TrainError, match="training diverged: .* became NaN or infinite by iteration 1; start again with a lower learning rate"):
        train(options(run_id="nan", log_every=1, hparams={"g_channels": 8, "d_channels": 4, "lr": 1e30}), tiny_home / "datasets", tiny_home / "runs")
