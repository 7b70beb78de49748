"""The parsed-header cache the query engine reads stored headers through (service/archive/header_cache.py)."""

from __future__ import annotations

import os

import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.archive.header_cache import HeaderCache


def _write(path, description: str) -> None:
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyDescription = description
    seq_item = Dataset()
    seq_item.CodeValue = "A"
    ds.ProcedureCodeSequence = [seq_item]
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path, enforce_file_format=True)


def test_a_header_is_parsed_once_while_its_file_is_unchanged(tmp_path):
    path = tmp_path / "a.dcm"
    _write(path, "FIRST")
    cache = HeaderCache()
    first = cache.get(path)
    assert first.StudyDescription == "FIRST"
    assert first.ProcedureCodeSequence[0].CodeValue == "A"
    assert cache.get(str(path)) is first


def test_a_file_replaced_under_the_same_path_is_read_anew(tmp_path):
    path, newer = tmp_path / "a.dcm", tmp_path / "new.dcm"
    _write(path, "FIRST")
    cache = HeaderCache()
    assert cache.get(path).StudyDescription == "FIRST"
    _write(newer, "SECOND")
    os.replace(newer, path)  # as the store replaces an instance: a new file renamed over the old one
    assert cache.get(path).StudyDescription == "SECOND"


def test_an_unreadable_file_raises_and_is_not_kept(tmp_path):
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"not dicom at all")
    cache = HeaderCache()
    with pytest.raises(Exception):
        cache.get(path)
    with pytest.raises(FileNotFoundError):
        cache.get(tmp_path / "missing.dcm")
    _write(path, "NOW GOOD")
    assert cache.get(path).StudyDescription == "NOW GOOD"


def test_the_least_recently_used_header_leaves_first(tmp_path):
    paths = [tmp_path / f"{n}.dcm" for n in range(3)]
    for n, path in enumerate(paths):
        _write(path, f"N{n}")
    cache = HeaderCache(capacity=2)
    a = cache.get(paths[0])
    cache.get(paths[1])
    assert cache.get(paths[0]) is a  # 0 is now the most recent
    cache.get(paths[2])  # 1 leaves
    assert cache.get(paths[0]) is a
    assert len(cache._items) == 2 and str(paths[1]) not in cache._items
