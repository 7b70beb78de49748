"""The near-copy guard fails closed: a model version carries a near-copy index (descriptors, not images) so the
check runs where the training set is absent; where no check can run, nothing is written unless the operator
says so, and the instance records near_copy_check=not-run."""

from __future__ import annotations

import dataclasses
import shutil

import numpy as np
import pytest

from models.registry import Registry
from service.archive.store import Store
from service.cli import main
from service.data.phantom import phantom_image
from service.home import Home
from service.near_copy_index import INDEX_FILE, NearCopyIndexError, build_index, describe, load_guard
from service.synthetic.sc_writer import Provenance
from service.synthetic.studies import FAILED, REFUSED, STORED, SyntheticStudyWriter
from tests.helpers import make_config
from tests.synthetic.conftest import export_tiny_dcgan


def _phantoms(seeds, noise=0.0) -> np.ndarray:
    return np.stack([phantom_image(64, 64, bits_stored=8, seed=s, noise=noise)[0] for s in seeds])


@pytest.fixture
def setting(home):
    """A tiny model whose card names tiny-train@v1, that dataset in the home (12 phantoms plus one image to
    copy), and a store; the operator's defaults for the guard (fail closed)."""
    from models.datasets import write_dataset

    cfg = make_config(home, **{"synthetic.allow_unchecked": False})
    h = Home.at(cfg.home_path)
    mv = export_tiny_dcgan(h.models_dir)
    copied = _phantoms([107], noise=0.03)
    dv = write_dataset(h.datasets_dir, "tiny-train", np.concatenate([_phantoms(range(12)), copied]))
    store = Store(cfg, h)
    yield cfg, store, mv, dv, copied[0]
    store.close()


def test_the_index_answers_as_the_guard_built_from_the_images(setting, tmp_path):
    from models.metrics.memorization import MemorizationGuard

    cfg, _store, _mv, dv, copied = setting
    build_index(dv.images_path, tmp_path, "tiny-train@v1")
    info = describe(tmp_path)
    assert info["training_images"] == 13 and info["spaces"] == ["pixels", "hog"] and info["source"] == "tiny-train@v1"
    with np.load(tmp_path / INDEX_FILE) as data:
        assert "train_pixels" in data and not any(a.dtype == np.uint8 and a.ndim >= 2 for a in (data[k] for k in data.files))
    direct = MemorizationGuard(np.load(dv.images_path), percentile=1.0)
    indexed = load_guard(tmp_path, percentile=1.0)
    checked = np.concatenate([copied[None], _phantoms([200, 201], noise=0.03), copied[None, :, ::-1].copy()])
    a, b = direct.check(checked), indexed.check(checked)
    assert a.offending == b.offending == [0, 3]  # the copy and its mirror
    assert a.thresholds == pytest.approx(b.thresholds)
    for space in a.spaces:
        assert np.allclose(a.distances[space], b.distances[space], rtol=1e-5, atol=1e-6)
    (tmp_path / INDEX_FILE).write_bytes(b"not an index")
    with pytest.raises(NearCopyIndexError):
        load_guard(tmp_path, percentile=1.0)
    assert load_guard(tmp_path / "absent", percentile=1.0) is None


def test_the_index_travels_with_the_model_where_the_training_set_is_absent(setting, capsys):
    cfg, store, mv, dv, copied = setting
    assert main(["--home", str(cfg.home_path), "models", "index", mv.ref]) == 0
    assert "near-copy index of tiny-train@v1 (13 images" in capsys.readouterr().out
    shutil.rmtree(dv.path)  # served elsewhere: the model version folder, without its dataset
    images = np.stack([_phantoms([300], noise=0.03)[0], copied])
    out = SyntheticStudyWriter(cfg, store).write_study(images, [1, 2], 1.0, Registry.with_bundled(Home.at(cfg.home_path).models_dir).resolve(mv.ref))
    assert [i.status for i in out.instances] == [STORED, REFUSED]
    assert "tiny-train@v1" in out.instances[1].detail
    ds = store.read(out.instances[0].sop_instance_uid)
    assert "near_copy_check=passed" in ds.ImageComments and Provenance.from_dataset(ds).near_copy_check == "passed"


def test_without_index_or_training_set_nothing_is_written_unless_the_operator_allows_it(setting):
    cfg, store, mv, dv, _copied = setting
    shutil.rmtree(dv.path)
    images = _phantoms([400, 401], noise=0.03)
    out = SyntheticStudyWriter(cfg, store).write_study(images, [1, 2], 1.0, mv)
    assert [i.status for i in out.instances] == [FAILED, FAILED]
    detail = out.instances[0].detail
    assert "near-copy check cannot run" in detail and "tiny-train@v1" in detail and "synthetic.allow_unchecked" in detail
    assert list(store.index.instances()) == []
    # The operator says so explicitly: written, and each instance says the check did not run.
    allowed = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, allow_unchecked=True))
    out = SyntheticStudyWriter(allowed, store).write_study(images, [1, 2], 1.0, mv)
    assert [i.status for i in out.instances] == [STORED, STORED]
    for inst in out.instances:
        ds = store.read(inst.sop_instance_uid)
        assert "near_copy_check=not-run" in ds.ImageComments and Provenance.from_dataset(ds).near_copy_check == "not-run"
    # Turning the guard off is the operator's explicit choice too, and recorded the same way.
    off = dataclasses.replace(cfg, synthetic=dataclasses.replace(cfg.synthetic, refuse_near_copies=False))
    (inst,) = SyntheticStudyWriter(off, store).write_study(images[:1], [3], 1.0, mv).instances
    assert inst.status == STORED and "near_copy_check=not-run" in store.read(inst.sop_instance_uid).ImageComments


def test_the_index_command_says_what_it_cannot_do(setting, capsys):
    cfg, _store, mv, dv, _copied = setting
    shutil.rmtree(dv.path)
    assert main(["--home", str(cfg.home_path), "models", "index", mv.ref]) == 1
    assert "not in this home" in capsys.readouterr().out
    assert main(["--home", str(cfg.home_path), "models", "index", "nope"]) == 2
