"""The prepared GPU run (bench/bench_gpu.py) in its tiny CPU configuration, end to end, so it cannot rot
between the sessions that have a GPU; and its inputs: image folders (JPEG/PNG and DICOM), the phantom
fallback, bad folders, packing for the device machine's file limits."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pydicom.data import get_testdata_file

from bench import bench_gpu
from models.registry import Registry
from tests.helpers import REPO


def _image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(bench_gpu.phantoms(3, 96, seed=5)):
        Image.fromarray(im).save(folder / f"p{i}.png")
    rgb = np.stack([bench_gpu.phantoms(1, 80, seed=6)[0]] * 3, axis=-1)  # a 3-channel file of gray content
    Image.fromarray(rgb).save(folder / "sub" / "rgb.jpg", quality=95)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "sub" / "ct")  # DICOM found by its preamble
    (folder / "broken.dcm").write_bytes(b"not a DICOM file")
    (folder / "notes.txt").write_text("ignored")
    return folder


def test_image_folders_are_read_and_bad_files_counted(tmp_path):
    images, info = bench_gpu.load_images(_image_folder(tmp_path), 64)
    assert images.shape == (5, 64, 64) and images.dtype == np.uint8
    assert info["kinds"] == {"jpeg/png": 4, "dicom": 1}
    assert info["skipped_count"] == 1 and info["skipped"] == ["broken.dcm: InvalidDicomError"]


@pytest.mark.parametrize("make, message", [(lambda p: p / "missing", "not a folder"), (lambda p: p, "no readable JPEG, PNG or DICOM")])
def test_bad_image_folders_are_refused_with_a_clear_message(tmp_path, make, message, capsys):
    code = bench_gpu.main(["--tiny", "--images", str(make(tmp_path)), "--out", str(tmp_path / "out")])
    assert code == 2 and message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_without_a_gpu_the_full_run_refuses_to_start(tmp_path, capsys):
    assert bench_gpu.main(["--out", str(tmp_path / "out")]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_phantoms_and_prepared_images(tmp_path):
    a, b = bench_gpu.phantoms(4, 64), bench_gpu.phantoms(4, 64)
    assert a.dtype == np.uint8 and np.array_equal(a, b) and not np.array_equal(a[0], a[1])
    assert 20 < a.mean() < 200
    dst = tmp_path / "prepared"
    assert bench_gpu.main(["--images", str(_image_folder(tmp_path)), "--prepare-images", str(dst)]) == 0
    assert len(list(dst.glob("*.png"))) == 5
    again, _ = bench_gpu.load_images(dst, 256)
    assert again.shape == (5, 256, 256)


def test_packing_cuts_large_archives_into_parts(tmp_path):
    folder = tmp_path / "pkg"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(np.random.default_rng(0).bytes(300_000))
    parts = bench_gpu.pack(folder, tmp_path / "model.tar", part_mb=0.1)
    assert parts == ["model.tar.00", "model.tar.01", "model.tar.02"]
    joined = tmp_path / "joined.tar"
    joined.write_bytes(b"".join((tmp_path / p).read_bytes() for p in parts))
    with tarfile.open(joined) as tar:
        assert tar.extractfile("./weights.bin").read() == (folder / "weights.bin").read_bytes()


@pytest.mark.slow
def test_tiny_run_end_to_end_through_the_command_line(tmp_path):
    """`python -m bench gpu --tiny` as the Makefile target runs it: every part, one output folder that
    fits what a device machine sends back (at most 8 files, 2 folders deep, 16 MiB each)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "bench", "gpu", "--tiny", "--images", str(_image_folder(tmp_path)), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert results["failed"] == [] and results["tiny"] is True and results["data"]["count"] == 5
    parts = results["parts"]
    assert parts["dcgan_speed"]["images_per_s"] > 0 and parts["dcgan_speed"]["projected_minutes_1000_epochs_476"] > 0
    assert {(r["config"], r["batch"]) for r in parts["stylegan3"]["rows"]} == {("t", 2), ("r", 2)}
    assert all(r["s_per_kimg"] > 0 for r in parts["stylegan3"]["rows"])
    assert parts["inference"]["raw"]["b"]["img_s"] > 0 and parts["inference"]["raw"]["c"]["img_s"] > 0
    final = parts["train_and_export"]
    assert final["epochs"] >= 1 and "ssim" in final["evaluation"]
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert files == sorted(["evaluation.json", "grid.png", "log.txt", "model.tar", "progression.png", "results.json", "results.md"])
    assert all((out / f).stat().st_size <= 16 * 2**20 for f in files)
    md = (out / "results.md").read_text()
    assert "tiny CPU configuration" in md and "StyleGAN3 at 32 px" in md and "(b) gRPC" in md
    with tarfile.open(out / "model.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    G, mv = Registry([tmp_path / "unpacked" / "models"]).load("gpu-dcgan-64")
    assert mv.card["architecture"] == "dcgan" and G(torch.zeros(1, G.z_dim)).shape == (1, 1, 64, 64)
    assert (tmp_path / "unpacked" / "samples" / "reals.png").exists()
