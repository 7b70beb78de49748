"""Every ``--json`` command prints data that parses, with its log lines (at the default level) on stderr."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from service.cli import main
from service.config import to_toml
from service.data.phantom import phantom_image
from service.home import Home
from tests.synthetic.conftest import export_tiny_dcgan


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--log-level", "info", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def _parse(text: str, lines: bool) -> object:
    """One JSON document, or (``lines``) one JSON object per non-empty line."""
    if lines:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return json.loads(text)


@pytest.fixture
def populated(tmp_path, home, capsys):
    """A home with a model, a synthetic study, a received image and a dataset, and its config file."""
    export_tiny_dcgan(Home.at(home).models_dir)
    conf = tmp_path / "synthpacs.toml"
    # The tiny model has no near-copy index and its training set is not here: the operator allows it.
    conf.write_text(to_toml({"home": str(home), "deid": {"secret": "test-secret"}, "outbox": {"health_interval_s": 0},
                             "synthetic": {"allow_unchecked": True}}))
    pngs = tmp_path / "pngs"
    pngs.mkdir()
    for i in range(2):
        px, _ = phantom_image(64, 64, bits_stored=8, seed=i)
        Image.fromarray(px).save(pngs / f"r{i}.png")
    assert main(["--config", str(conf), "--log-level", "error", "dataset", "import-images", str(pngs), "--body-part", "HAND",
                 "--view", "AP", "--quiet"]) == 0
    assert main(["--config", str(conf), "--log-level", "error", "dataset", "build", "hands", "--resolution", "32", "--quiet"]) == 0
    capsys.readouterr()
    return conf


def test_synthesize_json_parses_and_its_logs_go_to_stderr(populated, capsys):
    code, out, err = _run(capsys, "--config", str(populated), "synthesize", "--model", "tiny-dcgan", "--count", "2", "--seed", "3",
                          "--no-send", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert [i["seed"] for i in report["instances"]] == [3, 4]
    # The log lines were written (at info), and written to stderr, not into the JSON.
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert events and all("event" in e for e in events)


@pytest.mark.parametrize(
    "argv, lines",
    [
        (("config", "show", "--json"), False),
        (("store", "stats", "--json"), False),
        (("store", "ls", "--json"), True),
        (("store", "verify", "--json"), False),
        (("dataset", "ls", "--json"), False),
        (("dataset", "show", "hands", "--json"), False),
        (("models", "ls", "--json"), True),
        (("outbox", "ls", "--json"), False),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_every_json_command_prints_only_json_on_stdout(populated, capsys, argv, lines):
    assert main(["--config", str(populated), "--log-level", "error", "synthesize", "--model", "tiny-dcgan", "--count", "1",
                 "--no-send", "--json"]) == 0
    capsys.readouterr()
    code, out, err = _run(capsys, "--config", str(populated), *argv)
    assert code == 0, err
    assert out.strip(), f"{' '.join(argv)} printed nothing"
    _parse(out, lines)
