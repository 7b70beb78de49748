"""TSTR / TRTR (train on synthetic, test on real) and the per-class recognition check, on labelled phantoms."""

from __future__ import annotations

import numpy as np
import pytest

from models.metrics.utility import Labelled, class_draws, recognition_rates, train_classifier, tstr
from tests.metrics.conftest import labelled_phantom, labelled_phantoms

EPOCHS = 15
N_GENERATED = 40


@pytest.fixture(scope="module")
def real():
    train = Labelled(*labelled_phantoms(range(40)))
    test = Labelled(*labelled_phantoms(range(1000, 1024)))
    return train, test


def conditional(labels, seeds):
    """A conditional 'generator' that draws what it is asked for."""
    return np.stack([labelled_phantom(5000 + s, lab) for s, lab in zip(seeds, labels)])


def ignores_labels(labels, seeds):
    """A conditional 'generator' that ignores its condition: always a leg."""
    return np.stack([labelled_phantom(5000 + s, "LEG") for s in seeds])


def test_conditional_generator_tstr_against_trtr(real):
    train, test = real
    baseline: dict = {}
    good = tstr(train, test, generate=conditional, n=N_GENERATED, epochs=EPOCHS, baseline=baseline)
    assert good["trtr"]["accuracy"] >= 0.9 and good["mode"].startswith("conditional")
    assert good["ratio"] >= 0.9 and good["classes"] == ["HAND", "LEG"]
    assert good["generated_label_counts"] == dict(zip(["HAND", "LEG"], np.unique(class_draws(train.labels, ["HAND", "LEG"], N_GENERATED, 0), return_counts=True)[1].tolist()))
    bad = tstr(train, test, generate=ignores_labels, n=N_GENERATED, epochs=EPOCHS, baseline=baseline)
    assert bad["trtr"] == good["trtr"]  # the TRTR classifier is trained once and reused
    assert bad["tstr"]["balanced_accuracy"] <= 0.6 and bad["ratio"] < good["ratio"]


def test_deterministic_for_a_seed_and_unconditional_labels_come_from_the_real_classifier(real):
    train, test = real
    images, _ = labelled_phantoms(range(3000, 3030))
    a = tstr(train, test, generated=images, epochs=EPOCHS)
    b = tstr(train, test, generated=images, epochs=EPOCHS)
    assert a == b
    assert a["mode"].startswith("unconditional") and sum(a["generated_label_counts"].values()) == 30
    assert a["ratio"] >= 0.9


def test_recognition_rates_per_requested_class(real):
    train, _ = real
    clf = train_classifier(train.images, train.labels, ["HAND", "LEG"], epochs=EPOCHS)
    labels = ["HAND", "LEG"] * 10
    seeds = list(range(20))
    rates = recognition_rates(clf, conditional(labels, seeds), labels)
    assert set(rates) == {"HAND", "LEG"} and all(r >= 0.7 for r in rates.values())
    collapsed = recognition_rates(clf, ignores_labels(labels, seeds), [lab.lower() for lab in labels])  # labels case-insensitive
    assert collapsed["HAND"] <= 0.1 and collapsed["LEG"] >= 0.9
    with pytest.raises(ValueError, match="not \\['SKULL'\\]"):
        recognition_rates(clf, conditional(labels, seeds)[:1], ["skull"])
    with pytest.raises(ValueError, match="1 images but 2 requested labels"):
        recognition_rates(clf, conditional(labels, seeds)[:1], ["HAND", "LEG"])


def test_tasks_that_cannot_run_say_why(real):
    train, test = real
    one_class = Labelled(train.images, ["LEG"] * len(train.labels))
    with pytest.raises(ValueError, match="fewer than two classes"):
        tstr(one_class, test, generated=train.images)
    with pytest.raises(ValueError, match="no generated images"):
        tstr(train, test)
    with pytest.raises(ValueError, match="not among the classes"):
        train_classifier(train.images, ["ARM"] * len(train.labels), ["HAND", "LEG"])
