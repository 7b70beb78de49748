"""Evaluating a conditional generator: conditions drawn with the training labels' frequencies (per seed),
snapshot metrics of a conditional run, ``synthpacs evaluate`` with TSTR through the conditional generator
and per-class recognition rates. The model is a real conditional DCGAN trained for two steps on labelled
phantoms (a leg is a phantom upright, a hand the same phantom transposed)."""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
import torch

from models import registry
from models.conditions import ConditionError, ConditionSpace
from models.datasets import write_dataset
from models.dcgan import Generator
from models.metrics.conditional import ConditionSampler, sampler_for
from models.metrics.evaluate import generate_images
from models.metrics.features import HOGFeatures
from models.metrics.snapshot import SnapshotEvaluator
from models.train.export import export_run
from models.train.runner import TrainOptions, train
from service.cli import main
from tests.metrics.conftest import labelled_phantoms

CONDS = {"body_part": ["HAND", "LEG"], "view": ["AP", "LATERAL"]}


def _rows(labels, offset=0):
    # Every 7th image has no body part (a mixed label): left out of training and of the condition draws.
    return [{"body_part": "" if (i + offset) % 7 == 6 else lab, "view": ["AP", "LATERAL", "AP"][(i + offset) % 3]} for i, lab in enumerate(labels)]


@pytest.fixture(scope="module")
def conditional_home(tmp_path_factory):
    """Datasets 'lab' (training, 24) and 'lab-heldout' (12), and model 'cond' trained for two steps on 'lab'
    with snapshot metrics; returns (home, training result)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    home = tmp_path_factory.mktemp("cond") / "home"
    images, labels = labelled_phantoms(range(24))
    write_dataset(home / "datasets", "lab", images, _rows(labels))
    held, held_labels = labelled_phantoms(range(1000, 1012))
    write_dataset(home / "datasets", "lab-heldout", held, _rows(held_labels, offset=1))
    hook = SnapshotEvaluator(metrics="fid,kid,memorization,diversity", n_samples=8, diversity_pairs=8, extractors=[HOGFeatures()])
    opts = TrainOptions(arch="dcgan", dataset="lab", batch=12, epochs=1, snapshots=[1], grid_size=4, conditions=["body_part", "view"],
                        hparams={"g_channels": 8, "d_channels": 4, "embed_dim": 4}, device="cpu")
    result = train(opts, home / "datasets", home / "runs", metrics_fn=hook)
    export_run(result.run_dir, registry.Registry([home / "models"]), "cond")
    yield home, result
    torch.set_num_threads(threads)


def evaluate(home, *argv):
    return main(["evaluate", "--home", str(home), "--log-level", "error", *argv])


def test_conditions_are_drawn_per_seed_with_the_training_frequencies():
    space = ConditionSpace.from_json(CONDS)
    rows = [{"body_part": "HAND", "view": "AP"}] * 60 + [{"body_part": "LEG", "view": "LATERAL"}] * 30 + [{"body_part": "leg", "view": "AP"}] * 10
    rows += [{"body_part": "", "view": "AP"}] * 50 + [{"body_part": "SKULL", "view": "AP"}] * 50  # not conditions this model knows
    sampler = ConditionSampler.from_rows(space, rows)
    assert sampler.frequencies == {"HAND AP": 0.6, "LEG AP": 0.1, "LEG LATERAL": 0.3}
    seeds = list(range(3000))
    drawn = sampler.conditions(seeds)
    freq = collections.Counter(" ".join(c.values()) for c in drawn)
    assert abs(freq["HAND AP"] / 3000 - 0.6) < 0.03 and abs(freq["LEG LATERAL"] / 3000 - 0.3) < 0.03 and "HAND LATERAL" not in freq
    # A seed's condition depends on the seed alone: not on n, the batch, or the other seeds.
    assert sampler.conditions(seeds[100:110]) == drawn[100:110] and sampler.conditions([5, 5]) == [drawn[5]] * 2
    # Given a body part (a TSTR request), the view follows the training images of that body part.
    given = sampler.conditions_given("body_part", ["leg"] * 500, seeds[:500])
    assert {c["body_part"] for c in given} == {"LEG"} and 0.6 < sum(c["view"] == "LATERAL" for c in given) / 500 < 0.9
    assert sampler.conditions_given("body_part", ["HAND"] * 20, seeds[:20]) == [{"body_part": "HAND", "view": "AP"}] * 20
    with pytest.raises(ConditionError, match="known: HAND, LEG"):
        sampler.conditions_given("body_part", ["SKULL"], [0])
    with pytest.raises(ConditionError, match="no condition 'finding'"):
        sampler.conditions_given("finding", ["NONE"], [0])
    with pytest.raises(ConditionError, match="cannot draw conditions"):
        ConditionSampler.from_rows(space, [{"body_part": "SKULL", "view": "AP"}])
    card = {"conditions": {"images_per_combination": {"HAND AP": 60, "LEG AP": 10, "LEG LATERAL": 30}}}
    assert ConditionSampler.from_card(space, card).conditions(seeds[:50]) == drawn[:50]


def test_generation_refuses_a_mismatch_between_generator_and_conditions():
    cond_G = Generator(z_dim=8, base_channels=4, conditions=CONDS, embed_dim=4)
    plain_G = Generator(z_dim=8, base_channels=4)
    with pytest.raises(ValueError, match="needs one condition per seed"):
        generate_images(cond_G, [0, 1])
    with pytest.raises(ValueError, match="unconditional"):
        generate_images(plain_G, [0], conditions=[{"body_part": "HAND", "view": "AP"}])
    with pytest.raises(ConditionError, match="needs the training set's labels"):
        sampler_for(cond_G)
    assert sampler_for(plain_G) is None
    images, _ = generate_images(cond_G, [0, 1, 2], conditions=[{"body_part": "HAND", "view": "AP"}] * 3, batch_size=2)
    alone, _ = generate_images(cond_G, [1], conditions=[{"body_part": "HAND", "view": "AP"}])
    assert images.shape == (3, 64, 64) and np.array_equal(images[1], alone[0])


def test_snapshot_metrics_of_a_conditional_run(conditional_home):
    _, result = conditional_home
    rows = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    (snap,) = [r for r in rows if r.get("event") == "snapshot"]
    m = snap["metrics"]
    assert m["hog_fd"] > 0 and m["hog_kid"] > -1 and 0 <= m["memorization"] <= 1 and 0 < m["diversity"] <= 1 and m["n_samples"] == 8


def test_evaluate_a_conditional_model_with_tstr_and_recognition_rates(conditional_home, capsys):
    home, _ = conditional_home
    mv = registry.Registry([home / "models"]).resolve("cond")
    card_counts = mv.card["conditions"]["images_per_combination"]
    argv = ["cond", "--dataset", "lab@v1", "--real", "lab-heldout@v1", "--n", "24", "--tstr-epochs", "2", "--metrics", "kid,memorization,tstr"]
    assert evaluate(home, *argv, "--json") == 0
    data = json.loads(capsys.readouterr().out)
    cond = data["conditions"]
    assert cond["fields"] == ["body_part", "view"] and cond["source"] == "the training dataset's manifest"
    assert sum(cond["generated_per_condition"].values()) == 24 and set(cond["generated_per_condition"]) <= set(card_counts)
    u = data["utility"]["body_part"]
    assert u["mode"].startswith("conditional: images generated") and u["classes"] == ["HAND", "LEG"] and u["n_generated"] == 24
    rates = data["recognition_rates"]["body_part"]
    assert set(rates) == {"HAND", "LEG"} and all(0 <= r <= 1 for r in rates.values())
    assert data["metrics"]["body_part_recognition_rate_min"] == min(rates.values()) and "tstr_trtr_ratio" in data["metrics"]
    assert data["utility"]["view"]["mode"].startswith("conditional") and set(data["recognition_rates"]["view"]) == {"AP", "LATERAL"}
    # Deterministic for the seeds: the same command gives the same numbers, and the table shows them.
    assert evaluate(home, *argv) == 0
    out = capsys.readouterr().out
    assert "Recognized as requested [body-part classifier]" in out and "drawn per seed with the frequencies of the training dataset's manifest" in out
    again = json.loads((home / "models" / "cond" / "v1" / "evaluation.json").read_text())
    assert again["recognition_rates"] == data["recognition_rates"] and again["metrics"]["tstr_accuracy"] == data["metrics"]["tstr_accuracy"]
    # A training set without labels: the conditions come from the model card's counts.
    images = np.load(home / "datasets" / "lab" / "v1" / "images.npy")
    write_dataset(home / "datasets", "nolabels", images)
    assert evaluate(home, "cond", "--dataset", "nolabels@v1", "--n", "8", "--metrics", "memorization", "--json") == 0
    assert json.loads(capsys.readouterr().out)["conditions"]["source"] == "the model card's images per condition"
