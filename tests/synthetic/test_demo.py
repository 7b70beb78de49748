"""`make demo` end to end (python -m service.demo), on free ports in a temporary folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from service.demo import DemoError, main, prepare_home

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_demo_closes_the_loop(tmp_path, capsys):
    home = tmp_path / "demo"
    code = main(["--home", str(home), "--count", "3", "--any-ports"])
    out = capsys.readouterr().out
    assert code == 0, out
    for step in ("[1/7]", "[3/7]", "[4/7]", "[5/7]", "[6/7]", "findscu in synthpacs: 1 study"):
        assert step in out, out
    if "Orthanc is the hospital PACS" in out:
        assert "3/3 instances delivered by the outbox; findscu in Orthanc: 1 study" in out
    sheet = Image.open(home / "synthetic_series.png")
    assert sheet.width > 3 * 256 and np.asarray(sheet).max() == 255  # the burned-in SYNTHETIC label shows
    # A second run replaces the previous demo's folder.
    assert main(["--home", str(home), "--count", "1", "--any-ports"]) == 0


def test_the_demo_never_deletes_a_folder_it_did_not_make(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "notes.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a previous demo"):
        prepare_home(precious)
    assert (precious / "notes.txt").read_text() == "keep me"


def test_the_demo_serves_demo_dcgan_when_it_exists(tmp_path):
    """The demo switches to the bundled demo-dcgan by itself: a demo-dcgan in the registry is chosen over the
    untrained placeholder (here exported into the home's registry, which the bundled folder backs)."""
    from service.demo import FALLBACK_MODEL, demo_model
    from tests.synthetic.conftest import export_tiny_dcgan

    home = prepare_home(tmp_path / "demo")
    (home / "models").mkdir()
    ref, bundled = demo_model(home, "demo-radiographs@v1")
    assert (ref, bundled) == (f"{FALLBACK_MODEL}:v1", False) or ref.startswith("demo-dcgan:")
    export_tiny_dcgan(home / "models", name="demo-dcgan")
    ref, bundled = demo_model(home, "demo-radiographs@v1")
    assert ref == "demo-dcgan:v1" and bundled
