"""Utility of synthetic images: train on synthetic, test on real (TSTR) next to train on real (TRTR).

Esteban, Hyland, Rätsch 2017, "Real-valued (Medical) Time Series Generation with Recurrent Conditional
GANs", §3.2 (TSTR), and Ravuri and Vinyals 2019, "Classification Accuracy Score for Conditional
Generative Models", §3 (CAS): a classifier trained only on generated images is tested on real images
it never saw; its accuracy, divided by that of the same classifier trained on real images (TRTR), says
how much of the real data's usefulness the generator delivers.

Here the task is the body part (and the view, where the datasets carry view labels) of a radiograph:

* a conditional generator is given as ``generate(labels, seeds) -> images``; labels are drawn with the
  real training set's class frequencies (deterministic for the seed), or a labelled generated set is
  given directly;
* an unconditional generator's images are labelled by the TRTR classifier (trained on the real
  training set), the only labels such a generator offers; the TSTR classifier is then trained on them
  (Ravuri and Vinyals' §3 note that this measures how well the generator covers the classes).

The classifier (:class:`SmallCNN`) is four 3x3 convolution blocks at 64 x 64 px, trained with Adam for a
fixed number of epochs on the CPU in seconds to minutes; everything (initialization, shuffling) comes
from ``seed``, so the same inputs give the same numbers. :func:`recognition_rates` is the check a
conditional generator needs: of the images generated for each requested label, the fraction the
classifier recognizes as that label.
"""

from __future__ import annotations

import collections
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.metrics.images import batches, check_images, to_unit
from models.metrics.progress import Progress, Reporter

SIZE = 64
MIN_PER_CLASS = 5
NO_LABEL = ("", "(NONE)", "NONE", "UNKNOWN")

Generate = Callable[[Sequence[str], Sequence[int]], np.ndarray]


class SmallCNN(nn.Module):
    """(N, 1, 64, 64) in [0, 1] -> (N, classes) logits: 4 x (conv 3x3, batch norm, ReLU, 2x2 max pool), 8-64 channels."""

    def __init__(self, classes: int, width: int = 8):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for k in range(4):
            c_out = width * 2**k
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x * 2 - 1).mean(dim=(2, 3)))


@dataclass
class Classifier:
    """A trained :class:`SmallCNN` and the label of each of its outputs."""

    net: SmallCNN
    classes: list[str]

    def predict(self, images, batch_size: int = 256) -> list[str]:
        return [self.classes[i] for i in self.predict_indices(images, batch_size)]

    def predict_indices(self, images, batch_size: int = 256) -> np.ndarray:
        x = _prepare(images)
        self.net.eval()
        out = []
        with torch.inference_mode():
            for start, stop in batches(x.shape[0], batch_size):
                out.append(self.net(x[start:stop]).argmax(1).numpy())
        return np.concatenate(out)


def normalize_label(value: Any) -> str:
    return str(value or "").strip().upper()


def _prepare(images) -> torch.Tensor:
    images = check_images(images)
    x = torch.cat([to_unit(images[s:e]) for s, e in batches(images.shape[0], 512)])
    if tuple(x.shape[-2:]) != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False, antialias=True)
    return x


# The fewest optimizer steps any classifier is trained for (see train_classifier).
MIN_STEPS = 60


def train_classifier(images, labels: Sequence[str], classes: Sequence[str], seed: int = 0, epochs: int = 30, batch_size: int = 32,
                     lr: float = 2e-3, progress: Reporter | None = None, label: str = "classifier") -> Classifier:
    """Train a :class:`SmallCNN` on ``images`` with ``labels`` (members of ``classes``); deterministic for ``seed``.

    Augmentation is a random shift of up to 4 px (reflect padding), drawn from the same seeded generator:
    enough to keep a few hundred images from being memorized in 30 epochs, too little to change anatomy.

    Small sets train for more epochs, so that every classifier takes at least :data:`MIN_STEPS` optimizer
    steps: TSTR compares two classifiers, and one trained on 30 generated images for 15 epochs (15 steps)
    against one trained on 40 real images (30 steps) measured the step count, not the images (0.5 vs 1.0).
    """
    classes = list(classes)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({lab for lab in labels if lab not in index})
    if unknown:
        raise ValueError(f"labels {unknown} are not among the classes {classes}")
    x = _prepare(images)
    y = torch.tensor([index[lab] for lab in labels], dtype=torch.long)
    if x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"{x.shape[0]} images and {y.shape[0]} labels: need the same number, at least 2")
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        net = SmallCNN(len(classes))
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # Class-balanced loss: the body parts of a PACS are far from uniform, and a classifier that learns
    # only the common ones would look useful on accuracy alone.
    counts = torch.bincount(y, minlength=len(classes)).clamp_min(1).to(torch.float32)
    weight = (counts.sum() / (len(classes) * counts))
    steps_per_epoch = max(1, sum(1 for a, b in batches(x.shape[0], batch_size) if b - a >= 2))
    epochs = max(int(epochs), math.ceil(MIN_STEPS / steps_per_epoch))
    p = Progress(f"training {label}", epochs, progress, unit="epochs")
    net.train()
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=gen)
        for start, stop in batches(x.shape[0], batch_size):
            idx = order[start:stop]
            if idx.numel() < 2:
                continue  # batch norm needs two samples
            xb = _shift(x[idx], gen)
            loss = F.cross_entropy(net(xb), y[idx], weight=weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        p.update(1)
    net.eval()
    return Classifier(net, classes)


def _shift(x: torch.Tensor, gen: torch.Generator, max_shift: int = 4) -> torch.Tensor:
    dy, dx = (int(v) for v in torch.randint(-max_shift, max_shift + 1, (2,), generator=gen))
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    return padded[..., max_shift + dy : max_shift + dy + x.shape[-2], max_shift + dx : max_shift + dx + x.shape[-1]]


def scores(clf: Classifier, images, labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, balanced accuracy (mean per-class recall) and per-class recall on labelled real images."""
    pred = clf.predict(images)
    per_class = recognition_rates_from(pred, labels)
    correct = sum(p == t for p, t in zip(pred, labels))
    return {
        "accuracy": correct / len(labels),
        "balanced_accuracy": float(np.mean(list(per_class.values()))) if per_class else 0.0,
        "per_class_recall": per_class,
        "n": len(labels),
    }


def recognition_rates_from(predicted: Sequence[str], requested: Sequence[str]) -> dict[str, float]:
    by: dict[str, list[bool]] = collections.defaultdict(list)
    for p, r in zip(predicted, requested):
        by[r].append(p == r)
    return {k: float(np.mean(v)) for k, v in sorted(by.items())}


def recognition_rates(clf: Classifier, images, requested: Sequence[str]) -> dict[str, float]:
    """For each requested label, the fraction of the images generated for it that ``clf`` recognizes as it.

    E.g. "the classifier recognizes the requested body part in >= 70 % of generated images":
    ``all(r >= 0.7 for r in recognition_rates(clf, images, labels).values())``. Labels the classifier
    does not know are an error (it cannot recognize them).
    """
    requested = [normalize_label(r) for r in requested]
    unknown = sorted(set(requested) - set(clf.classes))
    if unknown:
        raise ValueError(f"the classifier knows {clf.classes}, not {unknown}")
    if len(requested) != check_images(images).shape[0]:
        raise ValueError(f"{check_images(images).shape[0]} images but {len(requested)} requested labels")
    return recognition_rates_from(clf.predict(images), requested)


@dataclass
class Labelled:
    """Images with one label per image (``""`` where unknown)."""

    images: Any
    labels: list[str] = field(default_factory=list)

    def known(self, classes: Sequence[str]) -> "Labelled":
        keep = [i for i, lab in enumerate(self.labels) if lab in set(classes)]
        return Labelled(np.asarray(self.images)[keep], [self.labels[i] for i in keep])


def usable_classes(labels: Sequence[str], min_per_class: int = MIN_PER_CLASS) -> list[str]:
    """Classes with at least ``min_per_class`` examples (sorted), ignoring empty/unknown labels."""
    counts = collections.Counter(lab for lab in labels if lab not in NO_LABEL)
    return sorted(c for c, n in counts.items() if n >= min_per_class)


def class_draws(train_labels: Sequence[str], classes: Sequence[str], n: int, seed: int) -> list[str]:
    """``n`` labels with the training set's class frequencies, deterministic for ``seed``."""
    counts = collections.Counter(lab for lab in train_labels if lab in set(classes))
    p = np.array([counts[c] for c in classes], np.float64)
    rs = np.random.RandomState(seed)
    return [classes[i] for i in rs.choice(len(classes), size=n, p=p / p.sum())]


def tstr(train: Labelled, test: Labelled, generated=None, generated_labels: Sequence[str] | None = None, generate: Generate | None = None,
         n: int = 0, seeds: Sequence[int] | None = None, seed: int = 0, epochs: int = 30, min_per_class: int = MIN_PER_CLASS,
         task: str = "body_part", progress: Reporter | None = None, baseline: dict[str, Any] | None = None) -> dict[str, Any]:
    """TSTR and TRTR for one labelling task; returns a JSON-ready dict (``ratio`` = TSTR / TRTR accuracy).

    Exactly one source of generated images: ``generate`` (a conditional generator, called with ``n``
    labels drawn from the training frequencies and ``seeds``), ``generated`` with ``generated_labels``
    (a conditional model's images and the labels they were asked for), or ``generated`` alone (an
    unconditional model: labelled by the TRTR classifier). Raises ``ValueError`` with the reason when
    the task cannot run (fewer than two classes with ``min_per_class`` images in both real sets).

    ``baseline``: a dict that keeps the TRTR classifier and its scores between calls with the same real
    sets (snapshots, control sets), so only the TSTR classifier is trained again.
    """
    if baseline is not None and baseline.get("key") == (task, seed, epochs, min_per_class):
        classes, real_clf, trtr = baseline["classes"], baseline["classifier"], baseline["trtr"]
        train_k, test_k = train.known(classes), test.known(classes)
    else:
        classes, real_clf, trtr, train_k, test_k = _baseline(train, test, seed, epochs, min_per_class, task, progress)
        if baseline is not None:
            baseline.update(key=(task, seed, epochs, min_per_class), classes=classes, classifier=real_clf, trtr=trtr)
    return _tstr_against(real_clf, trtr, classes, train_k, test_k, generated, generated_labels, generate, n, seeds, seed, epochs, task, progress)


def _baseline(train: Labelled, test: Labelled, seed: int, epochs: int, min_per_class: int, task: str, progress: Reporter | None):
    classes = [c for c in usable_classes(train.labels, min_per_class) if c in set(test.labels)]
    if len(classes) < 2:
        raise ValueError(
            f"{task}: fewer than two classes have {min_per_class}+ labelled training images and appear in the held-out set "
            f"(training: {dict(collections.Counter(train.labels))}, held-out: {dict(collections.Counter(test.labels))})"
        )
    train_k, test_k = train.known(classes), test.known(classes)
    real_clf = train_classifier(train_k.images, train_k.labels, classes, seed=seed, epochs=epochs, progress=progress, label=f"{task} classifier on real images (TRTR)")
    trtr = scores(real_clf, test_k.images, test_k.labels)
    return classes, real_clf, trtr, train_k, test_k


def _tstr_against(real_clf: Classifier, trtr: dict[str, Any], classes: list[str], train_k: Labelled, test_k: Labelled, generated, generated_labels,
                  generate: Generate | None, n: int, seeds, seed: int, epochs: int, task: str, progress: Reporter | None) -> dict[str, Any]:
    if generate is not None:
        if generated is not None:
            raise ValueError("give either generate or generated images, not both")
        if n < 2:
            raise ValueError("generate needs n >= 2 images")
        seeds = list(seeds) if seeds is not None else list(range(n))
        gen_labels = class_draws(train_k.labels, classes, n, seed)
        gen_images = check_images(np.asarray(generate(gen_labels, seeds)), "generated images")
        mode = "conditional: images generated for labels drawn with the training set's class frequencies"
    elif generated is not None and generated_labels is not None:
        gen_images = check_images(generated, "generated images")
        gen_labels = [normalize_label(lab) for lab in generated_labels]
        kept = Labelled(gen_images, gen_labels).known(classes)
        gen_images, gen_labels = kept.images, kept.labels
        mode = "conditional: generated images with the labels they were generated for"
    elif generated is not None:
        gen_images = check_images(generated, "generated images")
        gen_labels = real_clf.predict(gen_images)
        mode = "unconditional: generated images labelled by the classifier trained on the real training set"
    else:
        raise ValueError("no generated images: give generate, or generated images")
    if len(gen_labels) < 2:
        raise ValueError(f"{task}: fewer than two generated images carry a known class")
    present = collections.Counter(gen_labels)
    # A conditional model's images carry the labels they were asked for: how many of each does the
    # classifier trained on real images recognize as asked (the per-class check of a conditional model)?
    recognized = recognition_rates_from(real_clf.predict(gen_images), gen_labels) if mode.startswith("conditional") else None
    syn_clf = train_classifier(gen_images, gen_labels, classes, seed=seed, epochs=epochs, progress=progress, label=f"{task} classifier on generated images (TSTR)")
    tstr_scores = scores(syn_clf, test_k.images, test_k.labels)
    majority = max(collections.Counter(test_k.labels).values()) / len(test_k.labels)
    return {
        "task": task,
        "mode": mode,
        "classes": classes,
        "n_train_real": len(train_k.labels),
        "n_test_real": len(test_k.labels),
        "n_generated": len(gen_labels),
        "generated_label_counts": {c: int(present.get(c, 0)) for c in classes},
        "trtr": trtr,
        "tstr": tstr_scores,
        "ratio": tstr_scores["accuracy"] / trtr["accuracy"] if trtr["accuracy"] > 0 else None,
        "balanced_ratio": tstr_scores["balanced_accuracy"] / trtr["balanced_accuracy"] if trtr["balanced_accuracy"] > 0 else None,
        "chance_balanced_accuracy": 1.0 / len(classes),
        "majority_class_accuracy": majority,
        "epochs": epochs,
        "seed": seed,
        "image_size": SIZE,
        **({"recognition_rates": recognized} if recognized is not None else {}),
    }


def labels_from_rows(rows: Sequence[Mapping[str, Any]], key: str) -> list[str]:
    """One normalized label per manifest row (``""`` where the row has none)."""
    return [normalize_label(r.get(key)) if isinstance(r, Mapping) else "" for r in rows]
