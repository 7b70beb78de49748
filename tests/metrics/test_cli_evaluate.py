"""``synthpacs evaluate`` and ``--compare`` end to end on real files: a dataset version, registered
generators, evaluation.json, PNG files; and every bad input with its message."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from PIL import Image

from models import registry
from models.metrics import inception as inc
from service.cli import main
from service.cli import evaluate as ev
from tests.metrics.conftest import export_dcgan, golden_weights_file, make_dataset

# TorchScript is what hospitals export today; torch 2.13 marks it deprecated in favour of torch.export.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.*deprecated:DeprecationWarning")

FAST = ["--metrics", "ssim_psnr,diversity,memorization", "--n", "8", "--diversity-pairs", "24"]


def run(home: Path, *argv: str) -> int:
    return main(["evaluate", "--home", str(home), "--log-level", "error", *argv])


def test_evaluate_writes_evaluation_json_and_prints_a_table(world, capsys):
    home, dv, m1, _ = world
    assert run(home, "m1", "--n", "12", "--diversity-pairs", "30") == 0
    out, err = capsys.readouterr()
    path = m1.path / "evaluation.json"
    assert f"written: {path}" in out
    for label in ("Frechet distance [HOG]", "KID [HOG]", "FRD [radiomics]", "Precision / Recall [radiomics]", "SSIM", "PSNR (dB)",
                  "Diversity (MS-SSIM)", "Near-copies", "similarity to nearest reference, not a quality ranking"):
        assert label in out
    # Quality figures come first, with the reference set named; SSIM/PSNR only after them.
    assert out.index("Quality") < out.index("[HOG]") < out.index("SSIM") and "vs phantoms@v1" in out
    data = json.loads(path.read_text())
    assert data["format"] == "synthpacs-evaluation/1"
    assert data["model"]["ref"] == "m1:v1" and data["training_dataset"]["ref"] == "phantoms@v1"
    assert data["reference"]["role"].startswith("training set") and data["generated"]["count"] == 12
    assert data["generated"]["seeds"] == [0, 11]
    m = data["metrics"]
    assert 0 <= m["ssim"] <= 1 and m["psnr"] > 0 and 0 < m["diversity"] <= 1 and 0 < m["diversity_real"] < 1
    assert m["memorization"] == 0.0 and data["memorization"]["checked"] == 12 and data["memorization"]["offending_seeds"] == []
    # Without the weights file: skipped, with the file, its sha256 and the setting, never another network.
    assert inc.WEIGHTS_FILE in data["skipped"]["inception"] and inc.WEIGHTS_SHA256 in data["skipped"]["inception"]
    assert "fid" not in m and set(data["feature_spaces"]) == {"hog", "radiomics"}
    assert "evaluation.inception_weights" in err and "HOG and radiomics need no weights" in err
    # The download-free spaces are there without any file.
    assert m["hog_fd"] > 0 and m["hog_kid"] == data["feature_spaces"]["hog"]["kid"] and 0 <= m["hog_recall"] <= 1
    rad = data["feature_spaces"]["radiomics"]
    assert m["radiomics_frd"] == rad["log_frechet_distance"] and rad["standardization"]["z_clip"] == 5.0
    # TSTR needs a held-out reference: said, not guessed.
    assert "held-out" in data["skipped"]["tstr"]
    # The model card's section: quality figures first, with the reference set named.
    card = data["card_section"]
    assert card[0]["section"].startswith("quality figures") and card[0]["reference"].startswith("phantoms@v1")
    assert set(card[0]["metrics"]) == {"hog_fd", "hog_kid"} and "ssim" in card[1]["metrics"]
    assert "not a quality ranking" in card[1]["metrics"]["ssim"]["measures"] and card[2]["section"] == "memorization"
    assert "ssim" in data["definitions"] and "nearest in MSE" in data["definitions"]["ssim"]
    with Image.open(m1.path / "evaluation_samples.png") as grid:
        assert grid.size == (4 * 66 + 2, 3 * 66 + 2)  # 12 images of 64 px, 4 columns, 2 px apart


def test_held_out_reference_and_json_output(world, capsys):
    home, _, m1, _ = world
    held = make_dataset(home / "datasets", "heldout", 10, seed0=500)
    assert main(["evaluate", "--home", str(home), "m1", "--real", "heldout", "--json", *FAST]) == 0  # default log level: stdout stays JSON
    data = json.loads(capsys.readouterr().out)
    assert data["reference"]["ref"] == held.ref and data["reference"]["role"] == "held-out (--real)"
    assert data["memorization"]["guard"]["training_images"] == 40  # memorization is against training data
    assert data["diversity"]["reference"]["pairs"] == 24


def test_feature_network_distances(world, feature_net, capsys):
    home, _, m1, _ = world
    assert run(home, "m1", "--feature-network", str(feature_net), "--metrics", "fid,kid,pr", "--n", "10") == 0
    data = json.loads((m1.path / "evaluation.json").read_text())
    space = data["feature_spaces"]["torchscript:feat.pt"]
    assert space["dim"] == 8 and space["n_reference"] == 40 and space["n_generated"] == 10
    assert space["frechet_distance"] > 0 and "kid" in space and 0 <= space["precision"] <= 1 and 0 <= space["recall"] <= 1
    assert "inception" in data["skipped"] and "fid" not in data["metrics"]  # the FID column stays Inception-only
    assert "FD [torchscript:feat.pt]" in capsys.readouterr().out
    # Reference features are cached by dataset hash and network content.
    assert len(list((home / "evaluations" / "feature-cache").glob("*torchscript-*.npy"))) == 1


@pytest.mark.slow
def test_fid_kid_precision_recall_with_an_inception_weights_file(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home"
    dv = make_dataset(home / "datasets", "small", 4)
    export_dcgan(home / "models", "m", dv)
    weights = golden_weights_file(tmp_path / inc.WEIGHTS_FILE)
    monkeypatch.setattr(inc, "WEIGHTS_SHA256", hashlib.sha256(weights.read_bytes()).hexdigest())
    monkeypatch.setenv("SYNTHPACS_EVALUATION_INCEPTION_WEIGHTS", str(weights))
    assert run(home, "m", "--metrics", "fid,kid,pr", "--n", "4", "--batch", "8") == 0
    data = json.loads((home / "models" / "m" / "v1" / "evaluation.json").read_text())
    m = data["metrics"]
    assert m["fid"] > 0 and "kid" in m and 0 <= m["precision"] <= 1 and 0 <= m["recall"] <= 1
    assert data["skipped"] == {} and data["feature_spaces"]["inception"]["dim"] == 2048
    assert "fewer images than feature dimensions" in data["feature_spaces"]["inception"]["note"]


def test_bundled_model_evaluation_goes_to_the_home_folder(tmp_path, monkeypatch, capsys):
    bundled = tmp_path / "package" / "bundled"
    home = tmp_path / "home"
    dv = make_dataset(home / "datasets", "phantoms", 12)
    mv = export_dcgan(bundled, "demo", dv)
    monkeypatch.setattr(registry, "BUNDLED_ROOT", bundled)
    assert run(home, "demo", *FAST) == 0
    assert not (mv.path / "evaluation.json").exists()
    assert (home / "evaluations" / "demo" / "v1" / "evaluation.json").is_file()
    # No <home>/models/demo folder: it would hide the bundled model from the registry.
    assert not (home / "models" / "demo").exists()
    assert registry.Registry.with_bundled(home / "models").resolve("demo").path == mv.path


def test_unwritable_version_folder_falls_back_to_the_home_folder(world, monkeypatch, capsys):
    home, _, m1, _ = world
    real_write = ev._write_atomic

    def refuse_registry(path: Path, data: bytes) -> None:
        if path.parent == m1.path:
            raise PermissionError(13, "Read-only file system", str(path))
        real_write(path, data)

    monkeypatch.setattr(ev, "_write_atomic", refuse_registry)
    assert run(home, "m1", *FAST) == 0
    assert (home / "evaluations" / "m1" / "v1" / "evaluation.json").is_file()
    assert ev.read_evaluation(home, m1)[1] == home / "evaluations" / "m1" / "v1" / "evaluation.json"


def test_compare_prints_the_table_and_saves_chart_and_grids(world, tmp_path, capsys):
    home, _, _, _ = world
    assert run(home, "m1", "--metrics", "fid,ssim_psnr,diversity,memorization", "--n", "8", "--diversity-pairs", "24") == 0
    assert run(home, "m2", *FAST) == 0
    capsys.readouterr()
    out_dir = tmp_path / "report"
    assert run(home, "--compare", "m1", "m2:v1", "--out", str(out_dir)) == 0
    out = capsys.readouterr().out
    lines = [l for l in out.splitlines() if l.startswith("|")]
    assert "FID" in lines[0] and "SSIM" in lines[0] and "Train time h" in lines[0] and "Near-copies %" in lines[0]
    assert lines[2].startswith("| m1:v1") and lines[3].startswith("| m2:v1")
    assert " 0.50 " in lines[2] and " 1.00 " in lines[3]  # training time from the model cards
    assert "note: m1:v1: inception skipped: FID, KID and precision/recall need the FID Inception weights" in out
    assert "HOG FD" in lines[0] and lines[0].index("HOG FD") < lines[0].index("| FID ") < lines[0].index("SSIM")  # quality first
    assert lines[2].split("|")[2].strip() != "-" and lines[3].split("|")[2].strip() == "-"  # m2 was not asked for distances
    with Image.open(out_dir / "comparison.png") as chart, Image.open(out_dir / "samples.png") as samples:
        assert chart.width > 400 and samples.width > 2 * samples.height * 0.9
    rows = json.loads((out_dir / "comparison.json").read_text())["rows"]
    assert [r["model"] for r in rows] == ["m1:v1", "m2:v1"]
    assert (out_dir / "comparison.md").read_text().startswith("| Model")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["nosuch"], "no model named 'nosuch'"),
        (["m1:v7"], "has no version 7"),
        (["m1", "--dataset", "nothere"], "no dataset named 'nothere'"),
        (["m1", "--real", "nothere@v2"], "--real dataset 'nothere@v2'"),
        (["m1", "--metrics", "fid,bogus"], "unknown metric 'bogus'"),
        (["m1", "--n", "1"], "at least 2 generated images"),
        (["m1", "--psi", "-1"], "psi must be"),
        (["m1", "--batch", "0"], "batch_size must be at least 1"),
        (["m1", "--diversity-pairs", "0"], "diversity_pairs"),
        (["m1", "--device", "tpu"], "evaluation.device"),
        ([], "name a model to evaluate"),
        (["m1", "--compare", "m1", "m2"], "either MODEL or --compare"),
        (["--compare", "m1", "m2"], "m1:v1 has not been evaluated yet"),
        (["--compare", "m1", "m1:v1"], "two different model versions"),
    ],
)
def test_bad_input(world, capsys, argv, message):
    home, *_ = world
    assert run(home, *argv) == 2
    assert message in capsys.readouterr().err


def test_model_without_dataset_and_broken_files(world, tmp_path, capsys):
    home, dv, m1, _ = world
    export_dcgan(home / "models", "nodata", None)
    assert run(home, "nodata", *FAST) == 2
    assert "names no training dataset: give --dataset" in capsys.readouterr().err
    assert run(home, "nodata", "--dataset", "phantoms", *FAST) == 0  # --dataset fills the gap
    bad_net = tmp_path / "bad.pt"
    bad_net.write_bytes(b"not torchscript")
    assert run(home, "m1", "--feature-network", str(bad_net), "--metrics", "fid", "--n", "4") == 2
    assert "bad.pt is not a TorchScript file" in capsys.readouterr().err
    wrong = tmp_path / "weights.pth"
    wrong.write_bytes(b"some other inception")
    assert run(home, "m1", "--inception-weights", str(wrong), "--metrics", "fid,ssim", "--n", "4") == 0
    data = json.loads((m1.path / "evaluation.json").read_text())
    assert "its sha256 is" in data["skipped"]["inception"] and "ssim" in data["metrics"] and "hog_fd" in data["metrics"]
    (m1.path / "evaluation.json").write_text("{broken")
    assert run(home, "--compare", "m1", "nodata") == 2
    assert "is not valid JSON" in capsys.readouterr().err


def _labelled_dataset(root: Path, name: str, seeds) -> None:
    from models.datasets import write_dataset
    from tests.metrics.conftest import labelled_phantoms

    images, labels = labelled_phantoms(seeds)
    write_dataset(root, name, images, [{"body_part": lab, "view": "AP"} for lab in labels])


def test_tstr_trtr_against_a_held_out_labelled_set(tmp_path, capsys):
    home = tmp_path / "home"
    _labelled_dataset(home / "datasets", "parts", range(40))
    _labelled_dataset(home / "datasets", "parts-heldout", range(500, 530))
    export_dcgan(home / "models", "g", None)
    assert run(home, "g", "--dataset", "parts", "--real", "parts-heldout", "--metrics", "tstr,memorization", "--n", "16", "--tstr-epochs", "8") == 0
    out = capsys.readouterr().out
    data = json.loads((home / "models" / "g" / "v1" / "evaluation.json").read_text())
    u = data["utility"]["body_part"]
    assert u["classes"] == ["HAND", "LEG"] and u["n_test_real"] == 30 and u["n_generated"] == 16 and u["mode"].startswith("unconditional")
    m = data["metrics"]
    assert m["tstr_trtr_ratio"] == pytest.approx(m["tstr_balanced_accuracy"] / m["trtr_balanced_accuracy"])
    # One view only: that task cannot run, and says why.
    assert "fewer than two classes" in " ".join(data["utility"]["not_run"])
    assert "TSTR / TRTR balanced accuracy [body-part classifier]" in out and "on parts-heldout@v1" in out


def test_a_run_that_measured_nothing_keeps_the_earlier_evaluation(world, capsys):
    home, _, m1, _ = world
    assert run(home, "m1", *FAST) == 0
    path = m1.path / "evaluation.json"
    before = path.read_bytes()
    capsys.readouterr()
    # TSTR needs a held-out set; without one nothing is measured: an error, and the earlier file stays.
    assert run(home, "m1", "--metrics", "tstr", "--n", "4") == 2
    err = capsys.readouterr().err
    assert "nothing was measured for m1:v1" in err and "held-out" in err and f"the earlier evaluation {path} is kept" in err
    assert path.read_bytes() == before


def test_the_note_on_another_dataset_says_what_differs(world, capsys):
    home, dv, _, _ = world
    same_shape = {"name": dv.name, "version": dv.version, "count": dv.count, "resolution": 64, "content_hash": "0" * 64}
    export_dcgan(home / "models", "old", None, card_extra={"dataset": same_shape})
    assert run(home, "old", *FAST) == 0
    err = capsys.readouterr().err
    assert "phantoms@v1 is not the dataset old:v1 was trained on (phantoms@v1)" in err
    assert "the same number of images at the same resolution, but other pixels or labels" in err and "000000000000 in the card" in err
    export_dcgan(home / "models", "bigger", None, card_extra={"dataset": {**same_shape, "count": 476}})
    assert run(home, "bigger", *FAST) == 0
    assert "476 images in the card, 40 here" in capsys.readouterr().err
    # A card that recorded the store-dependent hash as well as the content hash matches on either.
    export_dcgan(home / "models", "both", None, card_extra={"dataset": {**same_shape, "content_hash_v1": dv.content_hash}})
    assert run(home, "both", *FAST) == 0
    assert "is not the dataset" not in capsys.readouterr().err
