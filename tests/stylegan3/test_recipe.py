"""The StyleGAN3 recipe in the shared runner, on the CPU at 64 px with networks a few channels wide:
a short run, exact resume (ADA probability and kimg included), export and load, the command line,
and the settings it refuses."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models import registry
from models.datasets import write_dataset
from models.sampling import latents
from models.train import checkpoint as ckpt
from models.train.export import export_run
from models.train.recipe import RecipeError, make_recipe
from models.train.runner import TrainOptions, resume, train
from models.stylegan3.speed import SpeedOptions
from tests.helpers import REPO

# 8 channels in G and D: every code path of the real networks at a small fraction of the cost.
TINY = dict(z_dim=16, w_dim=16, channel_base=512, channel_max=8, d_channel_base=128, d_channel_max=8)
# Augmentation on from the first step (p starts at 0.3) and ADA reacting fast (p moves 0.02 per step
# of 4 images, so it stays inside (0, 1) for these short runs); R1 every 4 steps, so it runs in both
# halves of a resumed run.
P0 = 0.3
FAST = dict(augment_p=P0, ada_interval=1, ada_kimg=0.2, r1_interval=4)


def blobs(n: int, res: int, seed: int = 0) -> np.ndarray:
    """Bright ellipses (bone-like) on a dark noisy field, uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:res, 0:res] / res
    out = np.empty((n, res, res), np.uint8)
    for i in range(n):
        cy, cx, ry, rx = rng.uniform(0.3, 0.7, 2).tolist() + [rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.15)]
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        out[i] = np.clip(20 + 200 * inside + rng.normal(0, 8, (res, res)), 0, 255).astype(np.uint8)
    return out


@pytest.fixture
def data(home: Path) -> Path:
    write_dataset(home / "datasets", "tiny", blobs(16, 64))
    return home


def _options(**kw) -> TrainOptions:
    base = dict(arch="stylegan3-t", dataset="tiny", batch=4, kimg=0.024, seed=3, device="cpu", hparams={**TINY, **FAST}, grid_size=4, log_every=1)
    base.update(kw)
    return TrainOptions(**base)


def _last(run_dir: Path) -> dict:
    return ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints").path)


def test_short_cpu_run_stays_finite_changes_the_weights_and_adapts_p(data):
    r = train(_options(run_id="short", snapshots=[0.012]), data / "datasets", data / "runs")
    assert (r.iteration, r.cur_nimg) == (6, 24)
    rows = [json.loads(line) for line in (r.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row for row in rows if row["event"] == "train"]
    assert [row["kimg"] for row in steps] == [0.004, 0.008, 0.012, 0.016, 0.02, 0.024]
    for row in steps:
        for key in ("loss_G", "loss_D", "D_real", "augment_p"):
            assert math.isfinite(row[key]), (key, row)
    assert [("r1_penalty" in row) for row in steps] == [True, False, False, False, True, False]
    ps = [row["augment_p"] for row in steps]
    assert all(abs(b - a) == pytest.approx(0.02) for a, b in zip([P0] + ps, ps))  # adjusted every step
    grids = sorted(p.name for p in (r.run_dir / "samples").glob("kimg-*.png"))
    assert grids == ["kimg-000000.012.png", "kimg-000000.024.png"]

    state = _last(r.run_dir)
    recipe = make_recipe("stylegan3-t", 64, 1, **state["hparams"])
    torch.manual_seed(3)  # the runner seeds torch with the run's seed before building
    initial = recipe.build()
    for name in ("G", "D", "G_ema"):
        before = dict(getattr(initial, name).state_dict())
        after = state["nets"][name]
        for k, v in after.items():
            assert torch.isfinite(v).all(), f"{name}.{k}"
        changed = [k for k in after if after[k].is_floating_point() and not torch.equal(after[k], before[k])]
        assert len(changed) > len(after) // 2, f"{name}: only {changed} changed"
    assert state["recipe"]["augment_p"] == pytest.approx(steps[-1]["augment_p"], abs=1e-6)
    assert state["recipe"]["ada"]["steps"] == 6


def test_resume_is_exact_including_the_ada_probability_and_kimg(data):
    ds, runs = data / "datasets", data / "runs"
    full = train(_options(run_id="full", kimg=0.032), ds, runs)
    part = train(_options(run_id="part", kimg=0.016, snapshots=[0.008]), ds, runs)
    half = _last(part.run_dir)
    assert half["progress"]["cur_nimg"] == 16 and half["recipe"]["ada"]["steps"] == 4
    assert 0 < half["recipe"]["augment_p"] < 1  # augmentation ran in both halves
    resumed = resume("part", ds, runs, kimg=0.032)
    a, b = _last(full.run_dir), _last(resumed.run_dir)
    assert a["progress"] == b["progress"] == {"iteration": 8, "cur_nimg": 32, "epoch": 2, "batch_in_epoch": 0}
    assert a["recipe"] == b["recipe"] and a["recipe"]["ada"]["steps"] == 8
    for net in a["nets"]:
        for k, v in a["nets"][net].items():
            assert torch.equal(v, b["nets"][net][k]), f"{net}.{k} differs after resume"
    for name in a["optimizers"]:
        for i, st in a["optimizers"][name]["state"].items():
            for k, v in st.items():
                assert torch.equal(torch.as_tensor(v), torch.as_tensor(b["optimizers"][name]["state"][i][k])), f"{name} {i}.{k}"


def test_export_to_the_registry_loads_the_same_generator(data, tmp_path):
    r = train(_options(run_id="exp", kimg=0.008), data / "datasets", data / "runs")
    reg = registry.Registry([tmp_path / "models"])
    mv = export_run(r.run_dir, reg, "bones-sg3t")
    card = json.loads((mv.path / "model.json").read_text())
    assert card["architecture"] == "stylegan3-t" and card["resolution"] == 64 and card["channels"] == 1
    assert card["training"]["kimg"] == 0.008 and card["training_hyperparameters"]["gamma"] == pytest.approx(0.125)
    assert any("Alias-Free" in ref for ref in card["references"])
    loaded, _ = reg.load("bones-sg3t")
    # The exported weights are G_ema's.
    state = _last(r.run_dir)
    G = make_recipe("stylegan3-t", 64, 1, **state["hparams"]).build().G_ema
    G.load_state_dict(state["nets"]["G_ema"])
    z = latents([0, 1, 2, 3], 16)
    with torch.no_grad():
        assert torch.equal(G.eval()(z), loaded(z))
        assert torch.equal(G(z, psi=0.7), loaded(z, psi=0.7))


@pytest.mark.parametrize("batch, beta", [(4, 0.99986138), (32, 0.99889158), (64, 0.99778439)])
def test_magnitude_ema_beta_follows_the_training_batch(batch, beta):
    """beta = 0.5 ** (batch / 20000), i.e. exp(-batch ln 2 / 20000): 4 -> 1 - 1.3862e-4,
    32 -> 1 - 1.1084e-3, 64 -> 1 - 2.2156e-3 (worked out to 8 digits)."""
    recipe = make_recipe("stylegan3-t", 64, 1, **TINY)
    nets = recipe.build()
    recipe._loss_for(nets, torch.device("cpu"), batch)
    for G in (nets.G, nets.G_ema):
        assert all(layer.magnitude_ema_beta == pytest.approx(beta, abs=1e-8) for layer in G.synthesis.layers)
        assert G.init_kwargs["magnitude_ema_beta"] == pytest.approx(beta, abs=1e-8)
    # One EMA step on an input of mean square 4 from the initial 1: 4 + beta (1 - 4).
    layer = nets.G.synthesis.layers[0]
    x = torch.full((1, layer.in_channels, layer.in_size, layer.in_size), 2.0)
    with torch.no_grad():
        layer(x, torch.zeros(1, 16), update_emas=True)
    assert layer.magnitude_ema.item() == pytest.approx(4 - 3 * beta, abs=1e-6)


def test_speed_options_by_device_and_by_setting():
    recipe = make_recipe("stylegan3-t", 64, 1, **TINY)
    assert recipe.speed_options(torch.device("cpu")) == SpeedOptions()
    assert recipe.speed_options(torch.device("cuda")) == SpeedOptions(sign_mask_lrelu=True, channels_last=True)
    compiled = make_recipe("stylegan3-t", 64, 1, compile=True, **TINY)
    assert compiled.speed_options(torch.device("cuda")) == SpeedOptions(channels_last=True)
    chosen = make_recipe("stylegan3-t", 64, 1, speed={"sign_mask_lrelu": True, "conv_dtype": "bfloat16"}, **TINY)
    assert chosen.speed_options(torch.device("cpu")) == SpeedOptions(sign_mask_lrelu=True, conv_dtype=torch.bfloat16)
    nets = chosen.build()
    chosen._loss_for(nets, torch.device("cpu"), 4)
    assert all(layer.speed.sign_mask_lrelu for layer in nets.G.synthesis.layers)


def test_short_cpu_run_with_the_sign_mask_and_bf16_convolutions(data):
    r = train(_options(run_id="fast", kimg=0.008, hparams={**TINY, **FAST, "speed": {"sign_mask_lrelu": True, "conv_dtype": "bfloat16"}}), data / "datasets", data / "runs")
    state = _last(r.run_dir)
    for name, net in state["nets"].items():
        assert all(torch.isfinite(v).all() for v in net.values()), name


@pytest.mark.slow
def test_command_line_trains_config_r_and_resumes(data):
    """`synthpacs train --arch stylegan3-r` as a user runs it, then `--resume` to a longer length."""
    env = {**os.environ, "SYNTHPACS_HOME": str(data), "OMP_NUM_THREADS": "1"}
    sets = [a for k, v in {**TINY, "blur_fade_kimg": 0.016}.items() for a in ("--set", f"{k}={v}")]
    exe = str(Path(sys.executable).parent / "synthpacs")
    first = subprocess.run(
        [exe, "train", "--arch", "stylegan3-r", "--dataset", "tiny", "--kimg", "0.008", "--batch", "4", "--device", "cpu", "--grid", "4", "--run-id", "cli-r", "--quiet", *sets],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert first.returncode == 0, first.stderr[-2000:]
    assert "finished: run cli-r" in first.stderr
    second = subprocess.run([exe, "train", "--resume", "cli-r", "--kimg", "0.016", "--quiet"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert second.returncode == 0, second.stderr[-2000:]
    state = _last(data / "runs" / "cli-r")
    assert state["progress"]["cur_nimg"] == 16 and state["hparams"]["blur_sigma"] == 10.0
    rows = [json.loads(line) for line in (data / "runs" / "cli-r" / "metrics.jsonl").read_text().splitlines()]
    assert [row["resumed"] for row in rows if row["event"] == "session"] == [False, True]
    bad = subprocess.run([exe, "train", "--arch", "stylegan3-r", "--dataset", "tiny", "--kimg", "1", "--set", "gamma=-1"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert bad.returncode != 0 and "gamma must be at least 0" in bad.stderr


def test_default_snapshots_are_the_seeds_10_40_80_100_kimg():
    r = make_recipe("stylegan3-t", 256)
    assert r.default_snapshots("kimg", 100) == [10.0, 40.0, 80.0, 100.0]
    assert r.default_snapshots("kimg", 250) == [10.0, 40.0, 80.0, 100.0, 200.0, 250.0]
    assert r.default_snapshots("kimg", 60) == [10.0, 40.0, 60.0]
    assert r.default_snapshots("kimg", 4) == [1.0, 2.0, 3.0, 4.0]
    assert r.unit == "kimg" and r.default_batch == 32 and r.uses_ema


def test_published_defaults_at_256px():
    t = make_recipe("stylegan3-t", 256).hparams
    assert (t["channel_base"], t["channel_max"], t["gamma"], t["glr"], t["dlr"], t["betas"], t["r1_interval"], t["blur_sigma"]) == (32768, 512, 2.0, 0.0025, 0.002, [0.0, 0.99], 16, 0.0)
    r = make_recipe("stylegan3-r", 256).hparams
    assert (r["channel_base"], r["channel_max"], r["blur_sigma"]) == (65536, 1024, 10.0)
    assert make_recipe("stylegan3-t", 1024).hparams["gamma"] == 32.0  # gamma grows with the image area
    G = make_recipe("stylegan3-t", 256).build().G
    assert sum(p.numel() for p in G.parameters()) > 10_000_000
    assert make_recipe("stylegan3-t", 256).augment_pipe.spec.xflip is False
    assert make_recipe("stylegan3-t", 256, 1, augment={"xflip": True}).augment_pipe.spec.xflip is True


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"resolution": 48}, "power-of-two resolution"),
        ({"gamma": -1.0}, "gamma must be at least 0"),
        ({"glr": 0}, "glr must be positive"),
        ({"ada_target": 1.5}, "ada_target must be between 0 and 1"),
        ({"augment": {"hue": True}}, "unknown augmentation setting"),
        ({"augment_p": 2.0}, "augment_p must be in"),
        ({"betas": [0.0]}, "betas must be two numbers"),
        ({"style_mixing": 0.9}, "does not take these settings"),
        ({"speed": {"fused": True}}, "unknown speed option"),
        ({"speed": {"conv_dtype": "int8"}}, "conv_dtype must be one of"),
        ({"speed": {"sign_mask_lrelu": True, "compile_filters": True}}, "alternatives"),
    ],
)
def test_bad_settings_are_refused_with_a_clear_message(kw, message):
    res = kw.pop("resolution", 64)
    with pytest.raises(RecipeError, match=message):
        make_recipe("stylegan3-t", res, 1, **kw)


def _free_port() -> int:
    from tests.helpers import free_port

    return free_port()


@pytest.mark.slow
@pytest.mark.integration
def test_two_processes_under_torchrun_train_what_one_process_trains(data, tmp_path):
    """DDP on the CPU (gloo over loopback): with augmentation off and minibatch-stddev groups of one,
    nothing depends on how the batch is split, so 2 processes must reach the weights 1 process reaches
    (up to the order of floating-point sums). The tracked buffers are equal on both ranks."""
    hp = {**TINY, "ada": False, "mbstd_group": 1, "r1_interval": 2}
    script = tmp_path / "run.py"
    script.write_text(
        "import json, sys, torch\n"
        "from models.train.runner import TrainOptions, train\n"
        "torch.set_num_threads(1)\n"
        f"opts = TrainOptions(arch='stylegan3-t', dataset='tiny', batch=4, kimg=0.012, seed=5, device='cpu', grid_size=4, hparams={hp!r}, run_id=sys.argv[1])\n"
        f"train(opts, {str(data / 'datasets')!r}, {str(data / 'runs')!r})\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "MASTER_ADDR": "127.0.0.1"}
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run(
        [torchrun, "--nproc_per_node=2", "--master_addr=127.0.0.1", f"--master_port={_free_port()}", str(script), "ddp"],
        env=env, capture_output=True, text=True, timeout=600, cwd=REPO,
    )
    assert two.returncode == 0, two.stderr[-3000:]
    one = subprocess.run([sys.executable, str(script), "single"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _last(data / "runs" / "ddp"), _last(data / "runs" / "single")
    assert a["progress"] == b["progress"] and a["world_size"] == 2
    for net in ("G", "D", "G_ema"):
        for k, v in a["nets"][net].items():
            torch.testing.assert_close(v, b["nets"][net][k], rtol=1e-3, atol=1e-4, msg=f"{net}.{k}")
    per_rank = a["rng"]["per_process"]
    assert len(per_rank) == 2
