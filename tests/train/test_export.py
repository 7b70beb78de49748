"""From a run to the registry and back: export, load and generate give the training G_ema's pixels."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from models import registry
from models.dcgan import Generator
from models.sampling import latents, to_uint
from models.train import checkpoint as ckpt
from models.train.grids import PAD
from models.train.runner import train
from service.cli import main
from tests.train.conftest import options

SEEDS = list(range(6))


@pytest.fixture
def ema_run(tiny_home):
    """Two epochs with an exponential moving average of G, so G_ema differs from G."""
    r = train(options(run_id="ema", epochs=2, hparams={"g_channels": 8, "d_channels": 4, "ema_beta": 0.9}), tiny_home / "datasets", tiny_home / "runs")
    return tiny_home, r


def _training_g_ema(run_dir) -> Generator:
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(run_dir / "checkpoints").path)
    assert "G_ema" in state["nets"]
    G = Generator(**{"z_dim": 100, "resolution": 64, "channels": 1, "base_channels": 8, "max_channels": 512})
    G.load_state_dict(state["nets"]["G_ema"])
    different = any(not torch.equal(state["nets"]["G"][k], v) for k, v in state["nets"]["G_ema"].items() if v.is_floating_point())
    assert different, "G_ema should differ from G after training with ema_beta"
    return G.eval()


def test_export_load_and_generate_give_the_training_pixels(ema_run, tmp_path, capsys):
    home, r = ema_run
    with torch.no_grad():
        expected = _training_g_ema(r.run_dir)(latents(SEEDS, 100))
    assert main(["--home", str(home), "--log-level", "error", "models", "export", "ema", "--name", "tiny-gan", "--description", "test model"]) == 0
    assert "exported tiny-gan:v1" in capsys.readouterr().out

    G, mv = registry.Registry([home / "models"]).load("tiny-gan")
    with torch.no_grad():
        assert torch.equal(G(latents(SEEDS, 100)), expected)

    out = tmp_path / "png"
    for bits in (8, 16):
        assert main(["--home", str(home), "--log-level", "error", "generate", "tiny-gan:v1", "--count", "6", "--seed", "0", "--out", str(out / str(bits)), "--bits", str(bits), "--batch", "4"]) == 0
        want = to_uint(expected, bits)[:, 0]
        for seed in SEEDS:
            got = np.asarray(Image.open(out / str(bits) / f"tiny-gan_v1_seed{seed:010d}.png"))
            assert got.dtype == want.dtype and np.array_equal(got, want[seed]), f"{bits}-bit seed {seed}"
        rows = [json.loads(line) for line in (out / str(bits) / "manifest.jsonl").read_text().splitlines()]
        assert [row["seed"] for row in rows] == SEEDS and all(row["model"] == "tiny-gan:v1" for row in rows)

    # The last snapshot grid shows exactly those pixels too (seeds 0..3, 2x2).
    grid = np.asarray(Image.open(r.run_dir / "samples" / "epoch-00002.png"))
    want8 = to_uint(expected, 8)[:, 0]
    for i in range(4):
        y, x = PAD + (i // 2) * (64 + PAD), PAD + (i % 2) * (64 + PAD)
        assert np.array_equal(grid[y : y + 64, x : x + 64], want8[i])

    card = mv.card
    assert card["architecture"] == "dcgan" and card["init_kwargs"]["base_channels"] == 8
    assert (card["resolution"], card["channels"], card["z_dim"]) == (64, 1, 100)
    dataset = json.loads((home / "datasets" / "tiny" / "v1" / "dataset.json").read_text())
    assert card["dataset"] == {"name": "tiny", "version": 1, "content_hash": dataset["content_hash"], "count": 24, "resolution": 64}
    assert card["training"]["epochs"] == 2 and card["training"]["iterations"] == 6 and card["training"]["wall_time_s"] > 0
    assert card["training"]["hardware"] and card["training_hyperparameters"]["ema_beta"] == 0.9
    assert card["description"] == "test model" and card["weights_dtype"] == "float32"


def test_fp16_export_loads_as_float32_and_stays_close(ema_run):
    home, r = ema_run
    reg = registry.Registry([home / "models"])
    from models.train.export import export_run

    full = export_run(r.run_dir, reg, "m")
    half = export_run(r.run_dir, reg, "m", half=True)
    assert (full.version, half.version) == (1, 2) and half.card["weights_dtype"] == "float16"
    assert (half.path / "generator.safetensors").stat().st_size < 0.6 * (full.path / "generator.safetensors").stat().st_size
    G32, _ = reg.load("m:v1")
    G16, _ = reg.load("m:v2")
    assert next(G16.parameters()).dtype == torch.float32
    with torch.no_grad():
        z = latents(SEEDS, 100)
        assert (G32(z) - G16(z)).abs().max() < 0.05


def test_export_errors(ema_run, capsys):
    home, r = ema_run
    args = ["--home", str(home), "--log-level", "error", "models", "export"]
    assert main(args + ["nope", "--name", "x"]) == 2
    assert "no training run 'nope'" in capsys.readouterr().err
    assert main(args + ["ema", "--name", "bad name"]) == 2
    assert "model name 'bad name'" in capsys.readouterr().err
    assert main(args + ["ema", "--name", "x", "--checkpoint", "ckpt-000000999.pt"]) == 2
    assert "ckpt-000000999.pt does not exist" in capsys.readouterr().err
    card = home / "card.json"
    card.write_text('{"architecture": "other"}')
    assert main(args + ["ema", "--name", "x", "--card", str(card)]) == 2
    assert "'architecture' is written by the export" in capsys.readouterr().err
    card.write_text("[1")
    assert main(args + ["ema", "--name", "x", "--card", str(card)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert not (home / "models" / "x").exists() or not any((home / "models" / "x").iterdir())


def test_generate_errors(ema_run, tmp_path, capsys):
    home, _ = ema_run
    base = ["--home", str(home), "--log-level", "error", "generate"]
    cases = [
        (["tiny-gan", "--out", str(tmp_path)], "no model named 'tiny-gan'"),
        (["demo:v0", "--out", str(tmp_path)], "must be a positive number"),
        (["m", "--count", "0", "--out", str(tmp_path)], "--count must be at least 1"),
        (["m", "--seed", "4294967295", "--count", "2", "--out", str(tmp_path)], "must lie in 0..4294967295"),
        (["m", "--psi", "-1", "--out", str(tmp_path)], "--psi must be a finite number >= 0"),
        (["m", "--psi", "nan", "--out", str(tmp_path)], "--psi must be a finite number >= 0"),
    ]
    for argv, message in cases:
        assert main(base + argv) == 2, argv
        assert message in capsys.readouterr().err
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(base + ["m", "--out", str(afile)]) == 2
    assert "is not a folder" in capsys.readouterr().err
