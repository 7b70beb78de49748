"""The study writer behind GenerateStudy and `synthpacs synthesize`: store, queue, refuse, regenerate."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch

from models.sampling import latents, to_uint
from service.archive.store import Store
from service.synthetic.outbox import Outbox
from service.synthetic.studies import (
    QUEUED,
    REFUSED,
    STORED,
    StudyRequestError,
    SyntheticStudyWriter,
    generate,
    regenerate,
)
from tests.synthetic.conftest import config_with_peers


def _images(net, seeds, psi=1.0, bits=8):
    return generate(net, seeds, psi, bits=bits)


def test_a_study_is_stored_flagged_synthetic_and_not_deidentified(config, store, tiny_model, registry):
    net, mv = registry.load(tiny_model.ref)
    seeds = [11, 12, 13]
    out = SyntheticStudyWriter(config, store).write_study(_images(net, seeds, 0.8), seeds, 0.8, mv)

    assert out.destination is None  # no default destination: the study stays in our archive
    assert [i.status for i in out.instances] == [STORED] * 3
    assert [i.seed for i in out.instances] == seeds
    records = list(store.index.instances("i.study_uid = ?", (out.study_instance_uid,)))
    assert len(records) == 3
    for rec in records:
        assert rec.synthetic and rec.source == "synthetic"
        assert rec.series_uid == out.series_instance_uid
        assert rec.patient_name.startswith("SYNTHETIC^") and rec.patient_id.startswith("SYNTHETIC-")
        assert rec.series_description.startswith("SYNTHETIC") and rec.modality == "OT"
    assert sorted(r.instance_number for r in records) == [1, 2, 3]
    ds = store.read(out.instances[0].sop_instance_uid)
    # De-identification would have replaced the synthetic patient and remapped the UIDs.
    assert ds.PatientName == records[0].patient_name and ds.StudyInstanceUID == out.study_instance_uid
    assert "dataset=tiny-train@v1" in ds.ImageComments


def test_a_study_is_queued_for_the_destination(home, tiny_model, registry):
    cfg = config_with_peers(home, [("PACS", "127.0.0.1", 4242)], **{"outbox.default_destination": "PACS"})
    store = Store(cfg)
    try:
        net, mv = registry.load(tiny_model.ref)
        writer = SyntheticStudyWriter(cfg, store)
        out = writer.write_study(_images(net, [1, 2]), [1, 2], 1.0, mv, series_description="knee for teaching")
        assert out.destination == "PACS"
        assert [i.status for i in out.instances] == [QUEUED, QUEUED]
        queued = Outbox(cfg, store.index).items(destination="PACS")
        assert {q.sop_instance_uid for q in queued} == {i.sop_instance_uid for i in out.instances}
        assert all(q.state == "pending" and q.study_uid == out.study_instance_uid for q in queued)
        assert store.read(out.instances[0].sop_instance_uid).SeriesDescription == "SYNTHETIC knee for teaching"
        # An explicit empty destination falls back to the default; an unknown one is refused up front.
        with pytest.raises(StudyRequestError, match="not a dicom.peers entry"):
            writer.write_study(_images(net, [3]), [3], 1.0, mv, destination="NOWHERE")
        assert len(list(store.index.instances())) == 2  # nothing was written for the refused request
    finally:
        store.index.close()


@pytest.mark.parametrize(
    "images, seeds, psi, message",
    [
        (np.zeros((2, 8, 8), np.uint8), [1], 1.0, "2 images but 1 seeds"),
        (np.zeros((1, 8, 8), np.float32), [1], 1.0, "uint8 or uint16"),
        (np.zeros((8, 8), np.uint8), [1], 1.0, "grayscale"),
        (np.zeros((0, 8, 8), np.uint8), [], 1.0, "at least one image"),
        (np.zeros((1, 8, 8), np.uint8), [-5], 1.0, "seed"),
        (np.zeros((1, 8, 8), np.uint8), [2**32], 1.0, "seed"),
        (np.zeros((1, 8, 8), np.uint8), [1], float("inf"), "psi"),
        ([[1]], [1], 1.0, "numpy array"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_written(config, store, tiny_model, images, seeds, psi, message):
    with pytest.raises(StudyRequestError, match=message):
        SyntheticStudyWriter(config, store).write_study(images, seeds, psi, tiny_model)
    assert list(store.index.instances()) == []


@pytest.mark.parametrize("bits, label", [(8, False), (16, False), (8, True)])
def test_provenance_regenerates_the_pixels_bit_for_bit(config, store, tiny_model, registry, bits, label):
    """Read a stored instance's own tags, load that model version, generate again: identical on the CPU."""
    net, mv = registry.load(tiny_model.ref)
    seeds, psi = [7, 123456, 2**32 - 1], 0.75
    images = _images(net, seeds, psi, bits=bits)  # one batch of three
    out = SyntheticStudyWriter(config, store).write_study(images, seeds, psi, mv, burn_in_label=label)
    for inst in out.instances:
        ds = pydicom.dcmread(store.path_of(store.index.get(inst.sop_instance_uid)))
        # By hand, the way the issue states it: tags -> registry -> latents -> G(z, psi) -> to_uint.
        comments = dict(kv.split("=", 1) for kv in ds.ImageComments.split() if "=" in kv)
        from models.registry import Registry
        from service.home import Home

        fresh = Registry.with_bundled(Home.at(config.home_path).models_dir)
        g, _ = fresh.load(f"{comments['model']}:v{comments['version']}")
        with torch.no_grad():
            x = g(latents([int(comments["seed"])], g.z_dim), psi=float(comments["psi"]))
        pixels = to_uint(x, bits=int(ds.BitsStored))[0, 0]
        if ds.BurnedInAnnotation == "YES":
            from service.synthetic.sc_writer import burn_in_synthetic_label

            pixels = burn_in_synthetic_label(pixels)
        assert np.array_equal(pixels, ds.pixel_array)
        assert pixels.std() > 0  # a real image, not a constant that would match anything
        # And through the helper the CLI and operators use.
        assert np.array_equal(regenerate(ds, fresh), ds.pixel_array)


def test_regeneration_refuses_other_weights_under_the_same_name(config, store, tiny_model, registry):
    import json

    from models.registry import RegistryError

    net, mv = registry.load(tiny_model.ref)
    out = SyntheticStudyWriter(config, store).write_study(_images(net, [5]), [5], 1.0, mv)
    ds = store.read(out.instances[0].sop_instance_uid)
    card_path = tiny_model.path / "model.json"
    card = json.loads(card_path.read_text())
    card["files"]["generator.safetensors"] = "0" * 64
    card_path.write_text(json.dumps(card))
    with pytest.raises(RegistryError):
        regenerate(ds, registry)


def _training_set(config, images: np.ndarray, name: str = "tiny-train"):
    """A dataset version holding varied phantom radiographs plus ``images`` (the copies to catch)."""
    from models.datasets import write_dataset
    from service.data.phantom import phantom_image
    from service.home import Home

    size = images.shape[1]
    phantoms = [phantom_image(size, size, bits_stored=8, seed=s)[0] for s in range(12)]
    return write_dataset(Home.at(config.home_path).datasets_dir, name, np.concatenate([np.stack(phantoms), images]))


def test_an_exact_training_copy_is_refused_and_never_written(config, store, tiny_model, registry):
    """The real memorization guard, over the dataset the model card names (tiny-train@v1).

    The "generated" images are distinct phantoms (a tiny untrained generator draws nearly the same
    image for every seed, which the guard rightly calls copies of each other's neighbour)."""
    from service.data.phantom import phantom_image

    _net, mv = registry.load(tiny_model.ref)
    seeds = [1, 2, 3, 4]
    images = np.stack([phantom_image(64, 64, bits_stored=8, seed=100 + s, noise=0.03)[0] for s in seeds])
    _training_set(config, images[1:2].copy())
    out = SyntheticStudyWriter(config, store).write_study(images, seeds, 1.0, mv)
    assert [i.status for i in out.instances] == [STORED, REFUSED, STORED, STORED]
    refused = out.instances[1]
    assert refused.sop_instance_uid == "" and "tiny-train@v1" in refused.detail
    assert "nearest training image #12, 0.00 x threshold" in refused.detail
    assert len(list(store.index.instances())) == 3


def test_without_its_training_data_the_check_is_skipped_not_fatal(config, store, tiny_model, registry):
    net, mv = registry.load(tiny_model.ref)  # the card names tiny-train@v1, which this home lacks
    out = SyntheticStudyWriter(config, store).write_study(_images(net, [1]), [1], 1.0, mv)
    assert [i.status for i in out.instances] == [STORED]


def test_the_near_copy_check_can_be_switched_off(home, tiny_model, registry):
    from tests.helpers import make_config

    cfg = make_config(home, **{"synthetic.refuse_near_copies": False})
    store = Store(cfg)
    try:
        net, mv = registry.load(tiny_model.ref)
        images = _images(net, [1, 2])
        _training_set(cfg, images.copy())
        out = SyntheticStudyWriter(cfg, store).write_study(images, [1, 2], 1.0, mv)
        assert [i.status for i in out.instances] == [STORED, STORED]
    finally:
        store.close()
