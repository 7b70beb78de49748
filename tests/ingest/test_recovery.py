"""The files are the record: rows a power loss took from the index come back from the files."""

from __future__ import annotations

import json
import os
import time

from service.archive.store import DURABLE_MARK, Store
from service.data.phantom import phantom_dataset
from tests.helpers import make_config
from tests.ingest.util import part10


def _store(home, **kw):
    return Store(make_config(home, **kw))


def test_checkpoint_writes_the_durable_mark(home):
    store = _store(home)
    try:
        store.put_bytes(part10(phantom_dataset(16, 16)), source="import")
        before = time.time()
        assert store.checkpoint()
        mark = store.durable_through()
        assert mark is not None and mark >= before - 1
        assert json.loads((store.root / DURABLE_MARK).read_text())["durable_through"] == mark
    finally:
        store.close()


def test_rows_lost_after_the_mark_are_recovered_from_the_files(home):
    store = _store(home)
    first = store.put_bytes(part10(phantom_dataset(16, 16, seed=1)), source="cstore", source_ae="PACS").record
    store.close()  # checkpoint: the mark is now after the first instance
    store = _store(home)
    late = [store.put_bytes(part10(phantom_dataset(16, 16, seed=s)), source="cstore", source_ae="PACS").record for s in (2, 3)]
    # A power loss: the last commits never reached the disk, the fsynced files did.
    for rec in late:
        store.index.delete(rec.sop_instance_uid)
    store.index.close()
    recovered_store = _store(home)
    try:
        by_uid = {r.sop_instance_uid: r for r in recovered_store.index.instances()}
        assert set(by_uid) == {first.sop_instance_uid, *(r.sop_instance_uid for r in late)}
        for rec in late:
            again = by_uid[rec.sop_instance_uid]
            assert again.source == "recovered" and again.sha256 == rec.sha256 and again.size == rec.size
            assert again.patient_id == rec.patient_id and again.study_uid == rec.study_uid
        assert by_uid[first.sop_instance_uid].source == "cstore"
    finally:
        recovered_store.close()


def test_files_older_than_the_mark_are_not_rescanned(home):
    store = _store(home)
    rec = store.put_bytes(part10(phantom_dataset(16, 16)), source="cstore").record
    old = time.time() - 3600
    os.utime(store.path_of(rec), (old, old))
    os.utime(store.path_of(rec).parent, (old, old))
    store.index.delete(rec.sop_instance_uid)
    store.close()
    again = _store(home)
    try:
        assert again.index.get(rec.sop_instance_uid) is None  # only verify --repair looks at old files
        report = again.verify(repair=True)
        assert report["orphans"] == [rec.path]
        assert again.index.get(rec.sop_instance_uid).source == "recovered"
        assert again.verify() == {"missing": [], "corrupt": [], "orphans": []}
    finally:
        again.close()


def test_verify_finds_corrupt_and_missing_files(home):
    store = _store(home)
    try:
        a = store.put_bytes(part10(phantom_dataset(16, 16, seed=1)), source="import").record
        b = store.put_bytes(part10(phantom_dataset(16, 16, seed=2)), source="import").record
        with open(store.path_of(a), "r+b") as f:
            f.seek(-4, 2)
            f.write(b"\xff\xff\xff\xff")
        store.path_of(b).unlink()
        report = store.verify()
        assert report["corrupt"] == [a.path] and report["missing"] == [b.path]
        store.verify(repair=True)
        assert store.index.get(b.sop_instance_uid) is None and store.index.get(a.sop_instance_uid) is not None
    finally:
        store.close()


def test_temporary_files_of_dead_processes_are_removed(home):
    store = _store(home)
    store.close()
    dead = store.tmp / "999999999-1-1.part"  # no such process
    mine_elsewhere = store.tmp / f"{os.getppid()}-1-1.part"  # a live process (our parent) may be writing it
    dead.write_bytes(b"partial")
    mine_elsewhere.write_bytes(b"partial")
    again = _store(home)
    try:
        assert not dead.exists() and mine_elsewhere.exists()
    finally:
        again.close()
        mine_elsewhere.unlink()
