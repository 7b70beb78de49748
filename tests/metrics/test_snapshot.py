"""Snapshot metrics through the real training runner: the hook's numbers land in metrics.jsonl and the
exported model card; the generator's mode is left alone; missing feature networks are reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from models.dcgan import Generator
from models.metrics.inception import InceptionWeightsError
from models.metrics.snapshot import SnapshotEvaluator
from models.train.runner import TrainOptions, train
from service.cli.evaluate import snapshot_hook
from tests.helpers import make_config
from tests.metrics.conftest import make_dataset


def test_snapshot_metrics_in_a_real_training_run(tmp_path):
    home = tmp_path / "home"
    make_dataset(home / "datasets", "tiny", 16)
    hook = SnapshotEvaluator(metrics="ssim,diversity,memorization,fid", n_samples=8, diversity_pairs=10, skipped={"fid": "skipped: no weights here"})
    opts = TrainOptions(arch="dcgan", dataset="tiny", batch=8, epochs=2, snapshots=[1, 2], grid_size=4, hparams={"g_channels": 8, "d_channels": 4}, device="cpu")
    result = train(opts, home / "datasets", home / "runs", metrics_fn=hook)
    rows = [json.loads(l) for l in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    snaps = [r for r in rows if r.get("event") == "snapshot"]
    assert [r["epoch"] for r in snaps] == [1, 2]
    for r in snaps:
        m = r["metrics"]
        assert 0 <= m["ssim"] <= 1 and m["psnr"] > 0 and 0 < m["diversity"] <= 1 and m["n_samples"] == 8
        assert m["memorization"] >= 0 and isinstance(m["near_copy_seeds"], list)
        assert m["skipped"] == {"fid": "skipped: no weights here"}
    assert hook._inputs is not None and hook._inputs.guard is not None  # built once, reused


def test_generator_mode_and_device_are_left_alone():
    reference = np.stack([np.full((64, 64), v, np.uint8) for v in range(0, 250, 25)])
    G = Generator(z_dim=8, resolution=64, base_channels=4).train()
    hook = SnapshotEvaluator(metrics=("ssim_psnr",), n_samples=4, reference_images=reference)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    record = hook(G)
    assert G.training  # BatchNorm keeps training after the snapshot
    assert all(torch.equal(before[k], v) for k, v in G.state_dict().items())  # running stats untouched
    assert set(record) == {"ssim", "ssim_std", "psnr", "psnr_std", "generation_images_per_s", "n_samples"}
    assert hook(G)["ssim"] == record["ssim"]  # same seeds every snapshot


def test_snapshot_needs_reference_images():
    with pytest.raises(ValueError, match="need reference images"):
        SnapshotEvaluator(metrics="ssim", n_samples=4)(Generator(z_dim=8, resolution=64, base_channels=4))
    with pytest.raises(ValueError, match="unknown metric"):
        SnapshotEvaluator(metrics="ssim,nope")


def test_snapshot_hook_from_configuration(tmp_path):
    assert snapshot_hook(make_config(tmp_path)) is None  # off unless metrics are named
    hook = snapshot_hook(make_config(tmp_path, **{"evaluation.snapshot_metrics": ["fid", "ssim"], "evaluation.snapshot_samples": 50}))
    assert hook.metrics == ("fid", "ssim_psnr") and hook.settings.n == 50
    assert "pt_inception-2015-12-05-6726825d.pth" in hook.skipped["inception"]
    assert [e.name for e in hook.extractors] == ["hog", "radiomics"]  # download-free spaces at every snapshot
    from service.cli.common import CommandError

    with pytest.raises(CommandError, match="evaluation.snapshot_metrics"):
        snapshot_hook(make_config(tmp_path, **{"evaluation.snapshot_metrics": ["bogus"]}))
    with pytest.raises(CommandError, match="snapshot_samples"):
        snapshot_hook(make_config(tmp_path, **{"evaluation.snapshot_metrics": ["ssim"], "evaluation.snapshot_samples": 1}))
    assert issubclass(InceptionWeightsError, RuntimeError)
