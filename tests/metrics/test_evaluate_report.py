"""evaluate_images on known image sets, a TorchScript feature network's contract, and the report pieces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from models.metrics.evaluate import EvaluationSettings, Inputs, evaluate_images, parse_metrics
from models.metrics.features import FeatureNetworkError, TorchScriptFeatures, extract_features
from models.metrics.report import COLUMNS, draw_chart, format_table, image_grid, side_by_side, summary_row
from service.data.phantom import phantom_image

# TorchScript is what hospitals export today; torch 2.13 marks it deprecated in favour of torch.export.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")


def _phantoms(seeds, size=64):
    return np.stack([phantom_image(size, size, bits_stored=8, seed=s, noise=0.03)[0] for s in seeds])


def test_a_generator_that_copies_training_images_is_caught():
    training = _phantoms(range(30))
    fake = np.concatenate([training[[3, 8]], _phantoms(range(900, 902))[:, ::-1, :]])  # two copies, two upside-down
    settings = EvaluationSettings(metrics=("memorization", "ssim_psnr"), n=4)
    out = evaluate_images(fake, Inputs(reference=training, training=training), settings, seeds=[10, 11, 12, 13])
    assert out["memorization"]["offending_seeds"] == [10, 11]
    assert out["metrics"]["memorization"] == 0.5 and out["metrics"]["near_copies"] == 2
    assert out["metrics"]["psnr"] > 50  # half the images are exact copies (100 dB each)


def test_reference_of_another_resolution_is_resized_for_ssim_psnr():
    ref = _phantoms(range(6), size=128)
    out = evaluate_images(_phantoms(range(2)), Inputs(reference=ref), EvaluationSettings(metrics=("ssim_psnr",), n=2))
    assert out["reference_resized_to"] == 64 and out["metrics"]["ssim"] > 0.6  # the same phantoms (own noise), smaller


def test_missing_inputs_are_reported_not_guessed():
    out = evaluate_images(_phantoms(range(4)), Inputs(reference=_phantoms(range(4, 8))), EvaluationSettings(metrics=("fid", "memorization"), n=4))
    assert out["skipped"] == {"fid": "no feature network is available", "memorization": "no training images were given"}
    assert out["metrics"] == {}


def test_parse_metrics_and_settings():
    assert parse_metrics("all") == ("fid", "kid", "precision_recall", "ssim_psnr", "diversity", "memorization", "tstr")
    assert parse_metrics("utility,cas") == ("tstr",)
    assert parse_metrics("pr, ssim,psnr,fid") == ("precision_recall", "ssim_psnr", "fid")
    for bad in ("", "fid,xyz"):
        with pytest.raises(ValueError):
            parse_metrics(bad)
    with pytest.raises(ValueError, match="seeds"):
        EvaluationSettings(n=10, seed_start=2**32 - 5)
    with pytest.raises(ValueError, match="psi"):
        EvaluationSettings(psi=float("nan"))
    assert EvaluationSettings(n=3, seed_start=7).seeds == [7, 8, 9]


class _Bad(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x  # (N, C, H, W): not a feature vector


class _Gray(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([x.mean(dim=(1, 2, 3)), x.amax(dim=(1, 2, 3)), torch.tensor(float(x.shape[1])).expand(x.shape[0]), torch.tensor(float(x.shape[-1])).expand(x.shape[0])], 1)


def test_torchscript_contract(tmp_path):
    path = tmp_path / "gray.pt"
    torch.jit.script(_Gray()).save(str(path))
    images = _phantoms(range(3))
    f = extract_features(TorchScriptFeatures(path, input_size=32, input_channels=1), images, batch_size=2)
    assert f.shape == (3, 4) and (f[:, 2] == 1).all() and (f[:, 3] == 32).all()  # channels and size as configured
    np.testing.assert_allclose(f[:, 0], images.reshape(3, -1).mean(1) / 255, atol=0.01)  # resizing keeps the mean
    f3 = extract_features(TorchScriptFeatures(path), images)
    assert (f3[:, 2] == 3).all() and (f3[:, 3] == 64).all()
    np.testing.assert_allclose(f3[:, 1], images.reshape(3, -1).max(1) / 255, rtol=1e-6)  # inputs in [0, 1]
    bad = tmp_path / "bad.pt"
    torch.jit.script(_Bad()).save(str(bad))
    with pytest.raises(FeatureNetworkError, match=r"bad.pt returned shape \(3, 3, 64, 64\)"):
        extract_features(TorchScriptFeatures(bad), images)
    with pytest.raises(FeatureNetworkError, match="does not exist"):
        TorchScriptFeatures(tmp_path / "none.pt")
    with pytest.raises(FeatureNetworkError, match="channels must be 1 or 3"):
        TorchScriptFeatures(path, input_channels=2)


def test_summary_row_and_table():
    ev = {"metrics": {"fid": 12.3, "kid": 0.0042, "ssim": 0.85, "psnr": 28.4, "memorization": 0.01, "generation_images_per_s": 200.0}}
    card = {"training": {"wall_time_s": 6 * 3600, "peak_memory_bytes": 18 * 2**30, "images_per_s": 12.5}}
    row = summary_row("stylegan3:v1", ev, card)
    assert row["fid"] == 12.3 and row["kid"] == pytest.approx(4.2) and row["memorization"] == pytest.approx(1.0)
    assert row["training_time_h"] == 6 and row["peak_memory_gb"] == 18 and row["train_images_per_s"] == 12.5
    assert row["precision"] is None
    other = summary_row("dcgan:v2", {"metrics": {"fid": float("nan")}}, {"training": {"peak_memory_mb": 512}})
    assert other["fid"] is None and other["peak_memory_gb"] == 0.5
    table = format_table([row, other]).splitlines()
    assert len(table) == 4 and table[0].startswith("| Model") and len(table[0]) == len(table[2]) == len(table[3])
    assert "12.30" in table[2] and "28.40" in table[2] and " - " in table[3]
    assert len(COLUMNS) == 16 and [c.key for c in COLUMNS[:3]] == ["hog_fd", "hog_kid", "tstr_trtr_ratio"]  # quality first
    free = summary_row("m", {"metrics": {"hog_fd": 3.5, "hog_kid": 0.002, "tstr_trtr_ratio": 0.8, "radiomics_frd": 4.1}})
    assert free["hog_kid"] == pytest.approx(2.0) and free["tstr_trtr_ratio"] == 0.8 and free["radiomics_frd"] == 4.1


def test_chart_and_grids_are_drawn():
    rows = [{"model": "a", "fid": 10.0, "ssim": 0.8}, {"model": "b", "fid": 20.0, "ssim": None}]
    chart = draw_chart(rows)
    assert chart.size == (4 * 220, 28 + 170) and chart.mode == "RGB"
    arr = np.asarray(chart)
    assert (arr != 255).any(axis=2).sum() > 1000  # bars and text were drawn
    grid = image_grid(np.stack([np.full((8, 8), i * 20, np.uint16) << 8 for i in range(5)]), columns=3, pad=1)
    assert grid.size == (3 * 9 + 1, 2 * 9 + 1) and grid.getpixel((1 + 9 * 2, 1)) == 40
    both = side_by_side([grid, grid], ["x", "y"], height=60)
    assert both.height == 60 + 24 + 16
    with pytest.raises(ValueError, match="non-empty"):
        image_grid(np.zeros((0, 4, 4), np.uint8))
    assert isinstance(both, Image.Image)


def test_generated_images_take_the_reference_bit_depth():
    from models.dcgan import Generator
    from models.metrics.evaluate import evaluate_generator

    ref16 = np.stack([phantom_image(64, 64, bits_stored=12, seed=s)[0] for s in range(4)]).astype(np.uint16) << 4
    G = Generator(z_dim=8, resolution=64, base_channels=4)
    out, images = evaluate_generator(G, Inputs(reference=ref16), EvaluationSettings(metrics=("ssim_psnr",), n=3, seed_start=5))
    assert images.dtype == np.uint16 and images.shape == (3, 64, 64)
    assert out["generated"]["dtype"] == "uint16" and out["generated"]["seeds"] == [5, 7]
