"""Store.put_batch (the STOW-RS store path): each instance stored as put_bytes stores it, with its own
outcome, and the waiting for the disk shared: files fsynced before their rename, each folder fsynced,
rows committed, all before the batch returns; a failure of one instance leaves nothing of it."""

import io
import os
import stat
import threading

import pytest

from service.archive import status
from service.archive.store import PutResult, Store, StoreError
from service.data.phantom import phantom_dataset
from tests.helpers import make_config


def _bytes(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _study(n: int, size: int = 16, seed: int = 0) -> list:
    first = phantom_dataset(size, size, seed=seed)
    return [first] + [
        phantom_dataset(size, size, seed=seed + k, study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                        instance_number=k + 1)
        for k in range(1, n)
    ]


def _store(home, **overrides) -> Store:
    return Store(make_config(home, **{"deid.enabled": False, **overrides}))


@pytest.fixture
def store(home):
    s = _store(home)
    yield s
    s.index.close()


def _files(store) -> list:
    return sorted(store.root.rglob("*.dcm"))


def test_a_batch_is_stored_as_put_bytes_stores_each_instance(home, tmp_path):
    datasets = _study(4)
    batch_store = _store(home)
    results = batch_store.put_batch([_bytes(ds) for ds in datasets], source="dicomweb", source_ae="WEB")
    assert [r.outcome for r in results] == ["stored"] * 4
    one_by_one = _store(tmp_path / "other")
    for ds, result in zip(datasets, results):
        alone = one_by_one.put_bytes(_bytes(ds), source="dicomweb", source_ae="WEB")
        assert alone.record.sha256 == result.record.sha256 and alone.record.path == result.record.path
        rec = batch_store.index.get(ds.SOPInstanceUID)
        assert rec.sha256 == result.record.sha256 and rec.source == "dicomweb" and rec.source_ae == "WEB"
        assert batch_store.path_of(rec).read_bytes() == one_by_one.path_of(alone.record).read_bytes()
    assert not list(batch_store.tmp.iterdir())
    again = batch_store.put_batch([_bytes(ds) for ds in datasets], source="dicomweb")
    assert [r.outcome for r in again] == ["identical"] * 4
    batch_store.index.close()
    one_by_one.index.close()


def test_one_bad_instance_midway_is_refused_and_the_others_stored(store):
    good = _study(3)
    cut = _bytes(phantom_dataset(32, 32, seed=9))[:-100]  # pixel data cut short
    results = store.put_batch([_bytes(good[0]), b"\x00" * 128 + b"DICM" + os.urandom(200), _bytes(good[1]), cut,
                               _bytes(good[2])], source="dicomweb")
    assert [isinstance(r, PutResult) for r in results] == [True, False, True, False, True]
    assert results[1].status == status.CANNOT_UNDERSTAND and results[3].status == status.CANNOT_UNDERSTAND
    with pytest.raises(StoreError) as alone:
        store.put_bytes(cut, source="dicomweb")
    assert (results[3].reason, str(results[3])) == (alone.value.reason, str(alone.value))  # as put_bytes refuses it
    assert store.index.stats()["instances"] == 3 and len(_files(store)) == 3
    assert not list(store.tmp.iterdir())


def test_a_file_whose_fsync_fails_is_refused_and_leaves_nothing(store, monkeypatch):
    small = _study(3)
    big = phantom_dataset(64, 64, seed=30, study_uid=small[0].StudyInstanceUID, series_uid=small[0].SeriesInstanceUID)
    real_fsync = os.fsync

    def big_files_fail(fd):
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size > 64 * 64:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", big_files_fail)
    results = store.put_batch([_bytes(small[0]), _bytes(big), _bytes(small[1]), _bytes(small[2])], source="dicomweb")
    assert isinstance(results[1], StoreError)
    assert results[1].status == status.OUT_OF_RESOURCES and results[1].reason == "write_failed"
    assert [r.outcome for k, r in enumerate(results) if k != 1] == ["stored"] * 3
    assert store.index.get(big.SOPInstanceUID) is None
    assert len(_files(store)) == 3 and not list(store.tmp.iterdir())


@pytest.mark.parametrize("resend", [False, True])
def test_a_folder_fsync_that_fails_stores_nothing_of_the_batch(store, monkeypatch, resend):
    datasets = _study(3)
    real_fsync = os.fsync

    def folders_fail(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(5, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", folders_fail)
    results = store.put_batch([_bytes(ds) for ds in datasets], source="dicomweb")
    assert all(isinstance(r, StoreError) and r.reason == "write_failed" for r in results)
    assert store.index.stats()["instances"] == 0 and _files(store) == [] and not list(store.tmp.iterdir())
    if resend:  # the disk is back
        monkeypatch.setattr(os, "fsync", real_fsync)
        assert [r.outcome for r in store.put_batch([_bytes(ds) for ds in datasets], source="dicomweb")] == ["stored"] * 3


def test_every_file_and_folder_is_fsynced_and_indexed_before_the_batch_returns(store, monkeypatch):
    """The order PS3.18 10.5 asks of a success: bytes on disk before their name, names on disk and rows
    committed before the answer."""
    events: list[tuple[str, str]] = []
    guard = threading.Lock()
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        real_fsync(fd)
        with guard:
            events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

    def replace(src, dst):
        with guard:
            events.append(("rename", f"{src} {dst}"))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    datasets = _study(4)
    results = store.put_batch([_bytes(ds) for ds in datasets], source="dicomweb")
    monkeypatch.undo()
    renames = [(k, e[1].split(" ")) for k, e in enumerate(events) if e[0] == "rename"]
    assert len(renames) == 4
    synced = {path: k for k, (kind, path) in enumerate(events) if kind == "fsync"}
    for k, (src, dst) in renames:
        assert synced[src] < k  # the temporary file was fsynced before it got its name
        assert synced[os.path.dirname(dst)] > k  # and its folder after
    for folder in {os.path.dirname(dst) for _, (_, dst) in renames}:
        assert folder in synced
    assert str(store.root / datasets[0].StudyInstanceUID) in {os.path.dirname(p) for p in synced} | set(synced)
    # Committed: another connection to the index sees every row.
    from service.archive.index import Index

    other = Index(store.index.path)
    try:
        assert {other.get(ds.SOPInstanceUID).sha256 for ds in datasets} == {r.record.sha256 for r in results}
    finally:
        other.close()


@pytest.mark.parametrize("policy,second", [("reject", "refused"), ("keep", "kept"), ("replace", "replaced")])
def test_repeats_in_one_batch_are_stored_in_order(home, policy, second):
    store = _store(home, **{"store.duplicate_policy": policy})
    first = phantom_dataset(16, 16, seed=1)
    clash = phantom_dataset(16, 16, seed=2, sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                            series_uid=first.SeriesInstanceUID)
    other = phantom_dataset(16, 16, seed=3, study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID)
    results = store.put_batch([_bytes(first), _bytes(clash), _bytes(other), _bytes(first)], source="dicomweb")
    assert results[0].outcome == "stored" and results[2].outcome == "stored"
    if second == "refused":
        assert isinstance(results[1], StoreError) and results[1].status == status.DUPLICATE_SOP_INSTANCE
    else:
        assert results[1].outcome == second
    # The fourth repeats the first: identical unless the second replaced it, then it replaces that again.
    assert store.read(first.SOPInstanceUID).PixelData == first.PixelData
    assert results[3].outcome == ("replaced" if policy == "replace" else "identical")
    assert store.index.stats()["instances"] == 2 and not list(store.tmp.iterdir())
    store.index.close()


def test_a_batch_whose_transaction_fails_is_indexed_row_by_row(store, monkeypatch):
    datasets = _study(3)

    def broken(rows):
        raise RuntimeError("the transaction failed")

    monkeypatch.setattr(store.index, "add_many", broken)
    real_add = store.index.add

    def add(rec, replace=False):
        if rec.sop_instance_uid == datasets[1].SOPInstanceUID:
            raise RuntimeError("this row cannot be added")
        real_add(rec, replace)

    monkeypatch.setattr(store.index, "add", add)
    results = store.put_batch([_bytes(ds) for ds in datasets], source="dicomweb")
    assert results[0].outcome == "stored" and results[2].outcome == "stored"
    assert isinstance(results[1], StoreError) and results[1].reason == "index_failed"
    assert not store.path_of(results[0].record).with_name(datasets[1].SOPInstanceUID + ".dcm").exists()
    assert len(_files(store)) == 2 and not list(store.tmp.iterdir())


def test_batches_sharing_instances_in_other_orders_both_finish(store):
    """Each batch holds the UID locks of its instances while it stores them, taken in one order."""
    datasets = _study(6)
    forward = [_bytes(ds) for ds in datasets]
    backward = forward[::-1]
    outcomes: list = []

    def run(files):
        outcomes.append(store.put_batch(files, source="dicomweb"))

    threads = [threading.Thread(target=run, args=(files,)) for files in (forward, backward, forward)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert sorted(r.outcome for batch in outcomes for r in batch) == ["identical"] * 12 + ["stored"] * 6
    assert store.index.stats()["instances"] == 6
