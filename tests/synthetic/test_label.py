"""The burned-in SYNTHETIC label: on by default for every study written as DICOM (Burned In Annotation YES),
off only by the operator's setting, in a corner sized for the image, re-applied bit for bit on regeneration,
and never on the raw images of gRPC Generate."""

from __future__ import annotations

import dataclasses

import grpc
import numpy as np
import pydicom
import pytest

from service.archive.store import Store
from service.config import SyntheticConfig, load_config
from service.home import Home
from service.synthetic.sc_writer import LABEL_HEIGHT_FRACTION, burn_in_synthetic_label, label_box
from service.synthetic.studies import StudyRequestError, SyntheticStudyWriter, generate, regenerate
from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc
from tests.helpers import make_config
from tests.synthetic.conftest import export_tiny_dcgan


def _labelled_by_default(cfg):
    """``cfg`` with the shipped label setting (the test helper turns the label off for tiny images)."""
    return dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, burn_in_label=SyntheticConfig().burn_in_label))


def test_the_label_is_on_by_default():
    assert load_config(path=None, env={}).synthetic.burn_in_label is True
    assert load_config(path=None, env={"SYNTHPACS_SYNTHETIC_BURN_IN_LABEL": "false"}).synthetic.burn_in_label is False


@pytest.mark.parametrize("size", [(64, 64), (128, 96), (256, 256), (373, 454), (1024, 1024), (1760, 1760), (2304, 2880)])
def test_the_label_sits_in_a_corner_sized_for_the_image(size):
    rows, cols = size
    pixels = np.full(size, 1000, np.uint16)
    out = burn_in_synthetic_label(pixels)
    changed = np.argwhere(out != pixels)
    top, left, h, w = label_box(rows, cols)
    assert changed[:, 0].min() >= top and changed[:, 0].max() < top + h and changed[:, 1].max() < left + w
    # The centre of the image, where the anatomy of the usual views is, is never touched.
    r0, r1, c0, c1 = int(rows * 0.2), int(rows * 0.8), int(cols * 0.2), int(cols * 0.8)
    assert np.array_equal(out[r0:r1, c0:c1], pixels[r0:r1, c0:c1])
    # Letters about 3 % of the shorter side high (the 7 px font at least), the box a corner, not a band.
    letters = h * 7 // 9
    assert letters >= 7
    if min(size) >= 256:
        assert 0.5 * LABEL_HEIGHT_FRACTION <= letters / min(size) <= 1.5 * LABEL_HEIGHT_FRACTION
        assert (top + h) / rows <= 0.06 and (left + w) / cols <= 0.31
    assert out.max() == 65535 and out[top:top + h, left:left + w].min() == 0  # white on black, full range


@pytest.fixture
def writer_and_model(home):
    cfg = _labelled_by_default(make_config(home, **{"synthetic.refuse_near_copies": False}))
    store = Store(cfg, Home.at(cfg.home_path))
    mv = export_tiny_dcgan(Home.at(cfg.home_path).models_dir)
    yield cfg, store, mv
    store.close()


def test_a_study_is_labelled_by_default_and_regenerates_bit_for_bit(writer_and_model):
    from models.registry import Registry

    cfg, store, mv = writer_and_model
    registry = Registry.with_bundled(Home.at(cfg.home_path).models_dir)
    net, _ = registry.load(mv.ref)
    seeds = [3, 4]
    clean = generate(net, seeds, 0.8, bits=16)
    out = SyntheticStudyWriter(cfg, store).write_study(clean, seeds, 0.8, mv)
    assert [i.status for i in out.instances] == ["stored", "stored"]
    for inst, unlabelled in zip(out.instances, clean):
        ds = store.read(inst.sop_instance_uid)
        assert ds.BurnedInAnnotation == "YES"
        stored = ds.pixel_array
        assert not np.array_equal(stored, unlabelled)
        assert np.array_equal(stored, burn_in_synthetic_label(unlabelled))  # the label over the model's pixels
        # Regeneration from the stored provenance: the unlabelled pixels again, the same label on top.
        assert np.array_equal(regenerate(ds, registry), stored)
        # Synthetic, so out of every training set; the index also knows its pixels carry text.
        record = store.index.get(inst.sop_instance_uid)
        assert record.synthetic and record.burned_in_annotation == "YES"


def test_only_the_operator_turns_the_label_off(writer_and_model):
    cfg, store, mv = writer_and_model
    images = np.zeros((1, 64, 64), np.uint8) + 90
    with pytest.raises(StudyRequestError, match="synthetic.burn_in_label"):
        SyntheticStudyWriter(cfg, store).write_study(images, [1], 1.0, mv, burn_in_label=False)
    assert list(store.index.instances()) == []  # refused before anything was written
    off = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, burn_in_label=False))
    (plain,) = SyntheticStudyWriter(off, store).write_study(images, [1], 1.0, mv).instances
    (asked,) = SyntheticStudyWriter(off, store).write_study(images, [2], 1.0, mv, burn_in_label=True).instances
    plain_ds, asked_ds = store.read(plain.sop_instance_uid), store.read(asked.sop_instance_uid)
    assert plain_ds.BurnedInAnnotation == "NO" and np.array_equal(plain_ds.pixel_array, images[0])
    assert asked_ds.BurnedInAnnotation == "YES" and not np.array_equal(asked_ds.pixel_array, images[0])


def test_an_image_too_small_for_the_label_is_not_written_unlabelled(writer_and_model):
    cfg, store, mv = writer_and_model
    (inst,) = SyntheticStudyWriter(cfg, store).write_study(np.zeros((1, 32, 32), np.uint8), [1], 1.0, mv).instances
    assert inst.status == "failed" and "too small" in inst.detail and "synthetic.burn_in_label" in inst.detail
    assert list(store.index.instances()) == []


@pytest.mark.integration
def test_grpc_generate_stays_clean_and_generate_study_is_labelled(home):
    from service.runtime import Runtime

    cfg = _labelled_by_default(make_config(home, **{"synthetic.refuse_near_copies": False, "inference.preload": ["tiny-dcgan"],
                                                    "inference.reload_interval_s": 0, "inference.device": "cpu"}))
    export_tiny_dcgan(Home.at(cfg.home_path).models_dir)
    runtime = Runtime(cfg)
    server = runtime.add_grpc()
    runtime.start()
    channel = grpc.insecure_channel(server.address)
    try:
        stub = pb_grpc.SynthesizerStub(channel)
        (raw,) = stub.Generate(pb.GenerateRequest(model="tiny-dcgan", seeds=[7], encoding=pb.ENCODING_RAW_UINT8), timeout=60)
        clean = np.frombuffer(raw.data, np.uint8).reshape(raw.height, raw.width)
        resp = stub.GenerateStudy(pb.GenerateStudyRequest(model="tiny-dcgan", seeds=[7]), timeout=60)
        ds = pydicom.dcmread(runtime.store.path_of(runtime.store.index.get(resp.instances[0].sop_instance_uid)))
        assert ds.BurnedInAnnotation == "YES" and np.array_equal(ds.pixel_array, burn_in_synthetic_label(clean))
        assert not np.array_equal(clean, burn_in_synthetic_label(clean))  # the raw image carries no label
        with pytest.raises(grpc.RpcError) as err:
            stub.GenerateStudy(pb.GenerateStudyRequest(model="tiny-dcgan", seeds=[8], burn_in_label=False), timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "synthetic.burn_in_label" in err.value.details()
    finally:
        channel.close()
        runtime.stop()
