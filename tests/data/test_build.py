"""dataset build from a real store (Store.put with de-identification on), its report and its guarantees."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import numpy as np
import pydicom
import pytest

from models.datasets import PROVENANCE_FIELDS, ImageDataset, list_datasets, load_images
from service.archive.store import Store
from service.data.build import BuildError, Filters, build_dataset, options_from_config
from service.data.phantom import phantom_dataset
from service.data.pixels import PixelOptions
from tests.data.conftest import put_phantoms, rg
from tests.helpers import make_config


def _bad_instances(store):
    """Instances the store accepts but no image can come from; each must be skipped with its reason."""
    # The store refuses an image header without pixels; a header-only dataset under an image SOP class
    # (a sender's bug) is stored, and has nothing to train on.
    no_pixels = phantom_dataset(32, 32, seed=10)
    for keyword in ("PixelData", "Rows", "Columns"):
        delattr(no_pixels, keyword)
    store.put(no_pixels, source="import")
    # Rows 0 is refused at the door now (PS3.3 C.7.6.3); such a file can still lie in a store written by
    # an older version, so it is placed beside the index as that version would have stored it.
    empty = phantom_dataset(32, 32, seed=11)
    record = store.put(empty, source="import").record
    path = store.path_of(record)
    stale = pydicom.dcmread(path)
    stale.Rows = 0
    stale.PixelData = b""
    stale.save_as(path, enforce_file_format=True)
    with sqlite3.connect(store.index.path) as db:  # the older version indexed what it wrote
        db.execute("UPDATE instances SET sha256 = ? WHERE sop_instance_uid = ?",
                   (hashlib.sha256(path.read_bytes()).hexdigest(), record.sop_instance_uid))
    palette = phantom_dataset(32, 32, seed=12)
    palette.PhotometricInterpretation = "PALETTE COLOR"
    store.put(palette, source="import")


def _build(store, name="hands", **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return build_dataset(store.cfg, name, index=store.index, **kw)


def test_build_writes_a_complete_version(store):
    put_phantoms(store)
    store.put(rg("RG3_UNCR.dcm"), source="cstore")
    burned = phantom_dataset(64, 64, seed=20)
    burned.BurnedInAnnotation = "YES"
    store.put(burned, source="import")
    store.put(phantom_dataset(64, 64, seed=21), source="synthetic", synthetic=True)
    _bad_instances(store)

    result = _build(store)
    v = result.version
    assert v.ref == "hands@v1" and v.count == 6 and v.resolution == 256 and v.dtype == "uint8"
    assert result.candidates == 9
    info = v.info
    assert info["skipped"] == 3
    assert info["skipped_by_reason"] == {"no_pixel_data": 1, "empty_image": 1, "unsupported_photometric": 1}
    assert info["excluded"] == {"synthetic": 1, "excluded_from_training: burned-in annotation": 1}
    assert info["counts"]["body_part"] == {"HAND": 4, "LEG": 1, "EXTREMITY": 1}
    assert info["counts"]["modality"] == {"CR": 5, "DX": 1}
    assert info["counts"]["view"] == {"AP": 5, "LATERAL": 1}
    assert info["filters"]["modalities"] == ["CR", "DX"]
    assert info["parameters"]["resolution"] == 256 and info["parameters"]["window"] == "header"

    # The report names every skipped instance with its reason and a message for a person.
    lines = [json.loads(l) for l in (v.path / "build_report.jsonl").read_text().splitlines()]
    assert sorted(l["reason"] for l in lines) == ["empty_image", "no_pixel_data", "unsupported_photometric"]
    assert all(l["message"] and l["sop_instance_uid"] and l["path"] for l in lines)
    report = json.loads((v.path / "build_report.json").read_text())
    assert report["candidates"] == 9 and report["images"] == 6 and report["skipped"]["no_pixel_data"] == 1

    # The manifest traces each image to its (de-identified) instance, in content order (pixel sha256).
    rows = list(v.manifest())
    assert [r["index"] for r in rows] == list(range(6))
    uids = [r["sop_instance_uid"] for r in rows]
    digests = [hashlib.sha256(np.ascontiguousarray(img)).hexdigest() for img in load_images(v)]
    assert digests == sorted(digests) and v.info["content_hash_method"].endswith("/2")
    rec = store.index.get(uids[0])
    assert rows[0]["sha256"] == rec.sha256 and rows[0]["study_uid"] == rec.study_uid
    assert all("window" in r["preprocessing"] and "geometry" in r["preprocessing"] for r in rows)
    assert not any("patient" in key for r in rows for key in r)
    rg3_row = next(r for r in rows if r["body_part"] == "EXTREMITY")
    assert rg3_row["preprocessing"]["inverted"] is True and rg3_row["preprocessing"]["window"]["source"] == "header"

    images = load_images(v)
    assert images.shape == (6, 256, 256) and images.max() > 200
    png = (v.path / "contact_sheet.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    assert len(ImageDataset(v, xflip=True)) == 12


def test_same_inputs_same_hash_whatever_the_worker_count(store):
    put_phantoms(store)
    a = _build(store, workers=1)
    b = _build(store, workers=2)
    assert (a.version.version, b.version.version) == (1, 2)
    assert a.version.content_hash == b.version.content_hash
    np.testing.assert_array_equal(load_images(a.version), load_images(b.version))
    assert (a.version.path / "manifest.jsonl").read_bytes() == (b.version.path / "manifest.jsonl").read_bytes()
    # Different parameters, different content.
    c = _build(store, options=PixelOptions(resolution=64))
    assert c.version.content_hash != a.version.content_hash and c.version.resolution == 64
    # The earlier versions are untouched.
    assert a.version.path.exists() and json.loads((a.version.path / "dataset.json").read_text())["resolution"] == 256


def test_filters(store):
    put_phantoms(store)
    assert _build(store, filters=Filters(modalities=("DX",))).version.count == 1
    assert _build(store, filters=Filters(body_parts=("hand",))).version.count == 4
    assert _build(store, filters=Filters(views=("LATERAL",))).version.count == 1
    small = _build(store, filters=Filters(min_size=100))
    assert small.version.count == 4
    assert small.excluded == {"smaller than 100 px": 1}
    uint16 = _build(store, options=PixelOptions(resolution=32, dtype="uint16", fit="crop"))
    assert load_images(uint16.version).dtype == np.uint16
    with pytest.raises(BuildError, match="HAND 4") as exc:
        _build(store, filters=Filters(body_parts=("SKULL",)))
    assert "LEG 1" in str(exc.value)


def test_empty_store_and_nothing_usable(store):
    with pytest.raises(BuildError, match="the store is empty"):
        _build(store)
    _bad_instances(store)
    with pytest.raises(BuildError, match="none of the 3 candidate instances gave an image") as exc:
        _build(store)
    assert "no_pixel_data" in str(exc.value)
    assert list_datasets(store.home.datasets_dir) == []
    assert [p for p in (store.home.datasets_dir / "hands").iterdir()] == []


def test_changed_and_missing_files_are_skipped(store):
    put_phantoms(store)
    recs = list(store.index.instances(order="i.sop_instance_uid"))
    path = store.path_of(recs[0])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    store.path_of(recs[1]).unlink()
    result = _build(store)
    assert result.version.count == 3
    assert result.skipped == {"corrupt": 1, "missing_file": 1}


def test_progress_shows_rate_and_eta(store, capsys):
    put_phantoms(store)
    _build(store, progress=True)
    err = capsys.readouterr().err
    assert "img/s" in err and "5/5" in err and "ETA" in err


def test_options_from_config_and_bad_name(store):
    opts = options_from_config(store.cfg, resolution=128, fit="crop")
    assert (opts.resolution, opts.fit, opts.percentiles) == (128, "crop", (0.5, 99.5))
    with pytest.raises(ValueError, match="not valid"):
        _build(store, name="../x")


@pytest.mark.slow
def test_spawned_and_forked_workers_give_the_same_dataset(store, monkeypatch):
    """With other threads alive a fork could copy a held lock: the pool spawns fresh workers instead."""
    import threading

    from service.data import build as build_module

    put_phantoms(store)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    try:
        assert build_module._start_method() == "spawn"
    finally:
        stop.set()
        thread.join(timeout=5)
    results = {}
    for method in ("spawn", "fork"):
        monkeypatch.setattr(build_module, "_start_method", lambda m=method: m)
        results[method] = _build(store, workers=2)
    assert results["spawn"].version.content_hash == results["fork"].version.content_hash
    assert results["spawn"].version.count == 5


def test_the_same_images_give_the_same_hash_in_another_home(tmp_path):
    """De-identification remaps UIDs per store; the dataset's order and hash depend on content only."""
    versions = []
    for home in ("a", "b"):
        store = Store(make_config(tmp_path / home))
        try:
            put_phantoms(store)
            versions.append(_build(store, workers=1).version)
        finally:
            store.index.close()
    a, b = versions
    uids = [[r["sop_instance_uid"] for r in v.manifest()] for v in versions]
    assert set(uids[0]).isdisjoint(uids[1])  # each store has its own UIDs ...
    assert a.content_hash == b.content_hash  # ... and the content is the same
    np.testing.assert_array_equal(load_images(a), load_images(b))
    strip = lambda v: [{k: x for k, x in r.items() if k not in PROVENANCE_FIELDS} for r in v.manifest()]  # noqa: E731
    assert strip(a) == strip(b)
