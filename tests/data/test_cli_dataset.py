"""`synthpacs dataset ...` as a user runs it: in-process through the CLI entry point, and once as the
installed console script; plus a study that arrives by C-STORE from dcmtk's storescu."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.datasets import resolve_dataset
from service.cli import main
from service.data.phantom import phantom_image
from tests.data.conftest import rg
from tests.helpers import REPO, make_config, require_tool


def _images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        px, _ = phantom_image(100 + 10 * i, 80, bits_stored=8, seed=i)
        Image.fromarray(px).save(folder / f"r{i}.png")
    return folder


def _run(home: Path, *args: str) -> int:
    return main(["--home", str(home), "--log-level", "warning", *args])


def test_import_build_ls_show_export(tmp_path, capsys):
    home = tmp_path / "home"
    src = _images(tmp_path / "pngs")
    assert _run(home, "dataset", "import-images", str(src), "--body-part", "HAND", "--view", "AP", "--quiet") == 0
    assert "4 stored" in capsys.readouterr().out
    assert _run(home, "dataset", "build", "hands", "--resolution", "64", "--quiet") == 0
    out = capsys.readouterr().out
    assert "built hands@v1: 4 images 64x64 uint8" in out and "content hash" in out
    assert _run(home, "dataset", "build", "hands", "--resolution", "64", "--dtype", "uint16", "--fit", "crop",
                "--window", "percentile", "--percentiles", "1,99", "--resample", "lanczos", "--workers", "2", "--quiet") == 0
    capsys.readouterr()

    assert _run(home, "dataset", "ls") == 0
    out = capsys.readouterr().out
    assert "hands@v1" in out and "hands@v2" in out and "64x64" in out
    assert _run(home, "dataset", "ls", "--json") == 0
    listed = json.loads(capsys.readouterr().out)
    assert [d["ref"] for d in listed] == ["hands@v1", "hands@v2"] and listed[1]["dtype"] == "uint16"

    sheet = tmp_path / "sheet.png"
    assert _run(home, "dataset", "show", "hands@v1", "--sheet", str(sheet), "--tiles", "4", "--columns", "2") == 0
    out = capsys.readouterr().out
    assert "4 images, 64x64 uint8" in out and "HAND" in out and "#" in out and "contact sheet" in out
    assert Image.open(sheet).size[0] == 2 * (128 + 2) + 2
    assert _run(home, "dataset", "show", "hands", "--json") == 0
    assert json.loads(capsys.readouterr().out)["parameters"]["fit"] == "crop"

    out_dir = tmp_path / "export"
    assert _run(home, "dataset", "export", "hands@1", "--out", str(out_dir), "--quiet") == 0
    assert "exported 4 PNG files (lossless)" in capsys.readouterr().out
    dv = resolve_dataset(home / "datasets", "hands@v1")
    from models.datasets import load_images

    np.testing.assert_array_equal(np.asarray(Image.open(out_dir / "000002.png")), load_images(dv)[2])
    assert _run(home, "dataset", "export", "hands", "--format", "jpg", "--out", str(tmp_path / "jpg"), "--quiet") == 0
    assert len(list((tmp_path / "jpg").glob("*.jpg"))) == 4


def test_errors_are_clear_and_exit_2(tmp_path, capsys):
    home = tmp_path / "home"
    assert _run(home, "dataset", "show", "nothing") == 2
    assert "no dataset named 'nothing'" in capsys.readouterr().err
    assert _run(home, "dataset", "build", "x") == 2
    assert "the store is empty" in capsys.readouterr().err
    assert _run(home, "dataset", "build", "bad/name") == 2
    assert "not valid" in capsys.readouterr().err
    assert _run(home, "dataset", "build", "x", "--resolution", "3") == 2
    assert "resolution" in capsys.readouterr().err
    assert _run(home, "dataset", "import-images", str(tmp_path / "nope")) == 2
    assert "is not a folder" in capsys.readouterr().err
    _run(home, "dataset", "import-images", str(_images(tmp_path / "p", 1)), "--quiet")
    assert _run(home, "dataset", "build", "x", "--body-part", "SKULL") == 2
    assert "no trainable instance matches" in capsys.readouterr().err
    _run(home, "dataset", "build", "x", "--quiet")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert _run(home, "dataset", "export", "x", "--out", str(tmp_path / "full")) == 2
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert _run(home, "dataset", "show", "x@v9") == 2
    assert "no version 9" in capsys.readouterr().err


@pytest.mark.slow
def test_console_script_builds_with_worker_processes(tmp_path):
    """The installed `synthpacs` entry point, as a separate process, with a pool of two workers."""
    home = tmp_path / "home"
    src = _images(tmp_path / "pngs", 3)
    exe = Path(sys.executable).with_name("synthpacs")
    if not exe.exists():
        pytest.skip("the synthpacs console script is not installed in this environment")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPACS_")}
    env["SYNTHPACS_HOME"] = str(home)
    for args in (["dataset", "import-images", str(src), "--quiet"], ["dataset", "build", "demo", "--workers", "2", "--resolution", "32"]):
        done = subprocess.run([str(exe), "--log-level", "warning", *args], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr
    assert "built demo@v1: 3 images 32x32" in done.stdout
    assert "demo: 3/3" in done.stderr and "img/s" in done.stderr  # progress with its rate


@pytest.mark.integration
def test_studies_sent_by_storescu_become_a_dataset(tmp_path):
    """RG3 (JPEG 2000 lossless) and RG1 sent by dcmtk's storescu to our SCP, then a build."""
    from tests.peers import RunningSCP

    storescu = require_tool("storescu", "dcmtk")
    j2k, plain = rg("RG3_J2KR.dcm"), rg("RG1_UNCR.dcm")
    files = []
    for name, ds in (("rg3.dcm", j2k), ("rg1.dcm", plain)):
        ds.save_as(tmp_path / name, enforce_file_format=True)
        files.append(str(tmp_path / name))
    cfg = make_config(tmp_path / "home")
    scp = RunningSCP(cfg)
    try:
        done = subprocess.run([storescu, "-xv", "-aec", scp.ae_title, scp.host, str(scp.port), *files],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert {r.transfer_syntax_uid for r in scp.store.index.instances()} == {"1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.1"}
    finally:
        scp.stop()
    assert main(["--home", str(cfg.home_path), "--log-level", "warning", "dataset", "build", "cr", "--workers", "1", "--quiet"]) == 0
    dv = resolve_dataset(cfg.home_path / "datasets", "cr")
    assert dv.count == 2 and dv.info["counts"]["body_part"] == {"CHEST": 1, "EXTREMITY": 1}
    rows = {r["body_part"]: r for r in dv.manifest()}
    assert rows["EXTREMITY"]["transfer_syntax_uid"] == "1.2.840.10008.1.2.4.90"
    assert rows["EXTREMITY"]["preprocessing"]["inverted"] is True
