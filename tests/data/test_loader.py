"""models/datasets.py: versions on disk, references, the memmap loader, x-flip, DistributedSampler."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from models.datasets import (
    FORMAT,
    DatasetError,
    DatasetNotFound,
    DatasetWriter,
    ImageDataset,
    list_datasets,
    load_images,
    parse_dataset_ref,
    resolve_dataset,
    write_dataset,
)


def _images(n: int = 5, res: int = 8, dtype=np.uint8) -> np.ndarray:
    top = np.iinfo(dtype).max
    rng = np.random.default_rng(0)
    return rng.integers(0, top + 1, size=(n, res, res), dtype=np.int64).astype(dtype)


def test_parse_dataset_ref():
    assert parse_dataset_ref("hands") == ("hands", None)
    assert parse_dataset_ref("hands@v3") == ("hands", 3)
    assert parse_dataset_ref("hands@3") == ("hands", 3)
    for bad in ("", "@v1", "hands@v0", "hands@vx", "../etc", "a b", "hands@v1@v2"):
        with pytest.raises(ValueError):
            parse_dataset_ref(bad)


def test_write_then_read_roundtrip(tmp_path):
    imgs = _images()
    rows = [{"sop_instance_uid": f"1.2.{i}", "body_part": "HAND"} for i in range(len(imgs))]
    dv = write_dataset(tmp_path, "hands", imgs, rows, parameters={"resolution": 8}, counts={"body_part": {"HAND": 5}})
    assert dv.ref == "hands@v1" and dv.count == 5 and dv.resolution == 8 and dv.dtype == "uint8"
    info = json.loads((dv.path / "dataset.json").read_text())
    for key in ("format", "name", "version", "resolution", "dtype", "count", "content_hash", "created_at",
                "parameters", "filters", "counts", "skipped"):
        assert key in info
    assert info["format"] == FORMAT
    # A plain .npy file that numpy maps by itself.
    arr = np.load(dv.path / "images.npy", mmap_mode="r")
    assert isinstance(arr, np.memmap) and arr.shape == (5, 8, 8)
    np.testing.assert_array_equal(load_images(dv), imgs)
    assert [r["index"] for r in dv.manifest()] == list(range(5))
    assert [r["sop_instance_uid"] for r in dv.manifest()] == [r["sop_instance_uid"] for r in rows]


def test_same_inputs_same_hash_and_new_versions(tmp_path):
    imgs = _images()
    a = write_dataset(tmp_path, "d", imgs)
    b = write_dataset(tmp_path, "d", imgs)
    assert (a.version, b.version) == (1, 2)
    assert a.content_hash == b.content_hash
    changed = imgs.copy()
    changed[0, 0, 0] ^= 1
    c = write_dataset(tmp_path, "d", changed)
    assert c.content_hash != a.content_hash
    d = write_dataset(tmp_path, "d", imgs, rows=[{"x": i} for i in range(5)])
    assert d.content_hash != a.content_hash  # the manifest is part of the content
    assert resolve_dataset(tmp_path, "d").version == 4
    assert resolve_dataset(tmp_path, "d@v2").path == b.path
    assert resolve_dataset(tmp_path, "d@1").path == a.path
    assert resolve_dataset(tmp_path, str(b.path)).version == 2
    assert [x.ref for x in list_datasets(tmp_path)] == ["d@v1", "d@v2", "d@v3", "d@v4"]


def test_not_found_lists_what_exists(tmp_path):
    with pytest.raises(DatasetNotFound, match="none yet"):
        resolve_dataset(tmp_path, "nothing")
    write_dataset(tmp_path, "knees", _images())
    with pytest.raises(DatasetNotFound, match="knees") as exc:
        resolve_dataset(tmp_path, "hands")
    assert isinstance(exc.value, LookupError)
    with pytest.raises(DatasetNotFound, match="v1"):
        resolve_dataset(tmp_path, "knees@v7")


def test_failed_write_leaves_no_version(tmp_path):
    with pytest.raises(RuntimeError):
        with DatasetWriter(tmp_path, "x", 8, 3) as w:
            w.append(_images(1)[0], {})
            raise RuntimeError("boom")
    assert list_datasets(tmp_path) == []
    assert [p.name for p in (tmp_path / "x").iterdir()] == []


def test_writer_refuses_wrong_images(tmp_path):
    with DatasetWriter(tmp_path, "x", 8, 2) as w:
        with pytest.raises(ValueError, match="takes uint8"):
            w.append(np.zeros((4, 4), np.uint8), {})
        with pytest.raises(ValueError, match="takes uint8"):
            w.append(np.zeros((8, 8), np.uint16), {})
        w.append(np.zeros((8, 8), np.uint8), {})
        dv = w.commit()
    assert dv.count == 1  # trimmed from a capacity of 2
    assert np.load(dv.images_path).shape == (1, 8, 8)
    with pytest.raises(ValueError):
        DatasetWriter(tmp_path, "bad/name", 8, 1)


def test_damaged_version_is_reported(tmp_path):
    dv = write_dataset(tmp_path, "d", _images())
    (dv.path / "dataset.json").write_text("{not json")
    with pytest.warns(UserWarning, match="not valid JSON"):
        assert list_datasets(tmp_path) == []
    dv2 = write_dataset(tmp_path, "e", _images())
    np.save(dv2.images_path, np.zeros((2, 8, 8), np.uint8))
    with pytest.raises(DatasetError, match="dataset.json says"):
        ImageDataset(dv2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_items_in_minus_one_one(tmp_path, dtype):
    imgs = _images(3, 8, dtype)
    imgs[0, 0, 0] = 0
    imgs[0, 0, 1] = np.iinfo(dtype).max
    ds = ImageDataset(write_dataset(tmp_path, "d", imgs))
    x = ds[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert x[0, 0, 0].item() == -1.0 and x[0, 0, 1].item() == pytest.approx(1.0)
    expected = imgs[2].astype(np.float64) / np.iinfo(dtype).max * 2 - 1
    np.testing.assert_allclose(ds[2][0].numpy(), expected, atol=1e-6)
    assert ImageDataset(ds.version, channels=3)[1].shape == (3, 8, 8)
    with pytest.raises(IndexError):
        ds[3]


def test_xflip_doubles_deterministically(tmp_path):
    imgs = _images(4)
    ds = ImageDataset(write_dataset(tmp_path, "d", imgs), xflip=True)
    assert len(ds) == 8
    for i in range(4):
        assert torch.equal(ds[i + 4], torch.flip(ds[i], dims=[2]))
    assert torch.equal(ds[-1], ds[7])


def test_reference_with_root_and_pickling(tmp_path):
    write_dataset(tmp_path, "d", _images())
    ds = ImageDataset("d", root=tmp_path)
    _ = ds[0]  # maps the file
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._images is None and torch.equal(clone[1], ds[1])


def test_distributed_sampler_partitions_the_items(tmp_path):
    ds = ImageDataset(write_dataset(tmp_path, "d", _images(5)), xflip=True)
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3, drop_last=True)
        sampler.set_epoch(1)
        loader = DataLoader(ds, batch_size=2, sampler=sampler, num_workers=0)
        for batch in loader:
            assert batch.shape[1:] == (1, 8, 8)
        seen += list(sampler)
    assert len(seen) == 10 and len(set(seen)) == 10


def test_dataloader_workers(tmp_path):
    ds = ImageDataset(write_dataset(tmp_path, "d", _images(4)))
    batches = list(DataLoader(ds, batch_size=2, num_workers=1))
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(4)]))
