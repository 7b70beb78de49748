"""STOW-RS (PS3.18 10.5): the C-STORE store path over HTTP, per-instance failures, and bad bodies."""

from __future__ import annotations

import io
import socket

import pydicom
import pytest
import requests

from service.archive import status
from service.data.phantom import phantom_dataset
from service.dicomweb import media
from tests.dicomweb.conftest import Service, part10
from tests.helpers import make_config

pytestmark = pytest.mark.integration

BOUNDARY = "test-boundary-7f3a"
CONTENT_TYPE = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def body_of(*parts: tuple[str, bytes], close: bool = True) -> bytes:
    out = b""
    for ctype, data in parts:
        out += f"--{BOUNDARY}\r\nContent-Type: {ctype}\r\n\r\n".encode() + data + b"\r\n"
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def post(svc, body: bytes, path: str = "/studies", content_type: str = CONTENT_TYPE, **kw) -> requests.Response:
    return requests.post(svc.url + path, data=body, headers={"Content-Type": content_type, **kw.pop("headers", {})}, **kw)


@pytest.fixture
def plain(home):
    """A service over an empty store with de-identification off (values come back as sent)."""
    svc = Service(make_config(home, **{"deid.enabled": False, "dicomweb.max_body_bytes": 4 << 20}))
    yield svc
    svc.close()


def _count(svc) -> int:
    return svc.store.index.stats()["instances"]


def _tmp_files(svc) -> list:
    return [p for p in svc.store.tmp.iterdir() if p.is_file()]


def test_round_trip_through_stow_and_wado_is_byte_identical(plain):
    client = plain.client()
    ds = phantom_dataset(64, 48, seed=11)
    sent = part10(ds)
    response = client.store_instances([pydicom.dcmread(io.BytesIO(sent))])
    (item,) = response.ReferencedSOPSequence
    assert item.ReferencedSOPInstanceUID == ds.SOPInstanceUID and "FailedSOPSequence" not in response or not response.FailedSOPSequence
    r = requests.get(item.RetrieveURL, headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=*'})
    ctype = media.parse_media_type(r.headers["content-type"])
    (part,) = media.split_parts(r.content, media.boundary_of(ctype))
    got = r.content[part.start:part.end]
    stored = plain.store.path_of(plain.store.index.get(ds.SOPInstanceUID)).read_bytes()
    assert got == stored
    # The dataset travelled unchanged; only the File Meta Information names the store as its writer (PS3.10 7.1).
    sent_ds, got_ds = pydicom.dcmread(io.BytesIO(sent)), pydicom.dcmread(io.BytesIO(got))
    assert got_ds == sent_ds and got_ds.PixelData == sent_ds.PixelData
    assert _dataset_bytes(got) == _dataset_bytes(sent)
    again = client.retrieve_instance(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert again.PixelData == ds.PixelData


def _dataset_bytes(part10_bytes: bytes) -> bytes:
    fp = io.BytesIO(part10_bytes)
    pydicom.filereader.read_preamble(fp, False)
    pydicom.filereader._read_file_meta_info(fp)
    return part10_bytes[fp.tell():]


def test_stow_is_the_c_store_path_de_identified(home):
    svc = Service(make_config(home))  # de-identification on, as shipped
    try:
        ds = phantom_dataset(32, 32, seed=12, patient_name="DOE^JANE", patient_id="MRN-123")
        r = post(svc, body_of(("application/dicom", part10(ds))))
        assert r.status_code == 200
        item = r.json()["00081199"]["Value"][0]
        stored_uid = item["00081155"]["Value"][0]
        assert stored_uid != ds.SOPInstanceUID  # remapped UIDs (PS3.15 E.3.9): the ones to retrieve
        stored = svc.store.read(stored_uid)
        assert "DOE" not in str(stored.PatientName) and stored.PatientID != "MRN-123"
        assert svc.store.index.get(stored_uid).source == "dicomweb"
    finally:
        svc.close()


def test_per_instance_failures_with_reasons(plain):
    good = phantom_dataset(32, 32, seed=13)
    r = post(plain, body_of(("application/dicom", part10(good)), ("application/dicom", b"not dicom at all" * 20), ("text/plain", b"hello")))
    assert r.status_code == 202
    answer = r.json()
    assert len(answer["00081199"]["Value"]) == 1
    failures = answer["00081198"]["Value"]
    assert [f["00081197"]["Value"][0] for f in failures] == [0xC000, 0xC000]
    assert "part 2" in r.headers["warning"] and "part 3" in r.headers["warning"]
    assert _count(plain) == 1


def test_none_stored_is_409_and_study_mismatch_is_refused(plain):
    ds = phantom_dataset(32, 32, seed=14)
    r = post(plain, body_of(("application/dicom", part10(ds))), path="/studies/1.2.3.4.5")
    assert r.status_code == 409
    (failure,) = r.json()["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [0xA900] and failure["00081155"]["Value"] == [ds.SOPInstanceUID]
    assert _count(plain) == 0
    ok = post(plain, body_of(("application/dicom", part10(ds))), path=f"/studies/{ds.StudyInstanceUID}")
    assert ok.status_code == 200 and ok.json()["00081190"]["Value"][0].endswith(f"/studies/{ds.StudyInstanceUID}")


def test_duplicate_policy_applies(home):
    svc = Service(make_config(home, **{"deid.enabled": False, "store.duplicate_policy": "reject"}))
    try:
        first = phantom_dataset(32, 32, seed=15)
        other = phantom_dataset(32, 32, seed=16, sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                                series_uid=first.SeriesInstanceUID)
        assert post(svc, body_of(("application/dicom", part10(first)))).status_code == 200
        assert post(svc, body_of(("application/dicom", part10(first)))).status_code == 200  # the same bytes again
        r = post(svc, body_of(("application/dicom", part10(other))))
        assert r.status_code == 409
        assert r.json()["00081198"]["Value"][0]["00081197"]["Value"] == [status.DUPLICATE_SOP_INSTANCE]  # as C-STORE answers
        assert svc.store.read(first.SOPInstanceUID).PixelData == first.PixelData
    finally:
        svc.close()


def test_parts_stored_together_are_answered_in_request_order_and_repeats_in_sent_order(home):
    """Parts are stored as one batch; the answer keeps the request's order, and a part that repeats an
    earlier part's SOP Instance UID is stored after it (here: refused under reject)."""
    svc = Service(make_config(home, **{"deid.enabled": False, "store.duplicate_policy": "reject"}))
    try:
        first = phantom_dataset(32, 32, seed=21)
        others = [phantom_dataset(32, 32, seed=22 + k, study_uid=first.StudyInstanceUID, series_uid=first.SeriesInstanceUID,
                                  instance_number=2 + k) for k in range(5)]
        clash = phantom_dataset(32, 32, seed=40, sop_uid=first.SOPInstanceUID, study_uid=first.StudyInstanceUID,
                                series_uid=first.SeriesInstanceUID)
        sent = [first, *others[:2], clash, *others[2:]]
        r = post(svc, body_of(*[("application/dicom", part10(ds)) for ds in sent]))
        assert r.status_code == 202
        answer = r.json()
        stored = [item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]]
        assert stored == [first.SOPInstanceUID] + [ds.SOPInstanceUID for ds in others]
        (refused,) = answer["00081198"]["Value"]
        assert refused["00081197"]["Value"] == [status.DUPLICATE_SOP_INSTANCE]
        assert "part 4:" in r.headers["Warning"]
        assert svc.store.read(first.SOPInstanceUID).PixelData == first.PixelData
    finally:
        svc.close()


@pytest.mark.parametrize("body", [
    body_of(("application/dicom", b"DICM"), close=False),  # cut short: no close delimiter
    b"--other-boundary\r\nContent-Type: application/dicom\r\n\r\nxx\r\n--other-boundary--\r\n",
    f"--{BOUNDARY}\r\nContent-Type application/dicom\r\n\r\nxx\r\n--{BOUNDARY}--\r\n".encode(),
    b"",
])
def test_malformed_multipart_is_400_and_stores_nothing(plain, body):
    good = body_of(("application/dicom", part10(phantom_dataset(32, 32, seed=17))))
    r = post(plain, good[: -len(f"--{BOUNDARY}--\r\n")] + body if body.startswith(b"--" + BOUNDARY.encode()) else body)
    assert r.status_code == 400, r.text
    assert _count(plain) == 0 and _tmp_files(plain) == []
    assert post(plain, good).status_code == 200  # the server is still up


@pytest.mark.parametrize("content_type", ["application/dicom", 'multipart/related; type="application/dicom+json"; boundary=x', "text/plain"])
def test_other_content_types_are_415(plain, content_type):
    assert post(plain, b"x", content_type=content_type).status_code == 415


def test_a_2_gb_declared_body_is_refused_at_once(plain):
    """Content-Length beyond dicomweb.max_body_bytes: 413 before the body is read; nothing written."""
    host, port = plain.server.address
    with socket.create_connection((host, port), timeout=10) as sock:
        sock.sendall(
            f"POST /dicom-web/studies HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {CONTENT_TYPE}\r\n"
            f"Content-Length: {2 * 1024 ** 3}\r\n\r\n".encode() + b"x" * 1000
        )
        answer = sock.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413")
    assert _count(plain) == 0 and _tmp_files(plain) == []
    assert requests.get(plain.url + "/studies").status_code == 200


def test_a_chunked_body_over_the_limit_is_refused_and_removed(plain):
    def chunks():
        yield body_of(("application/dicom", part10(phantom_dataset(32, 32, seed=18))), close=False)
        for _ in range(6):
            yield b"\0" * (1 << 20)

    r = requests.post(plain.url + "/studies", data=chunks(), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 413
    assert _count(plain) == 0 and _tmp_files(plain) == []
    assert requests.get(plain.url + "/studies").status_code == 200


def test_a_part_refused_midway_leaves_the_others_stored_and_acknowledged(plain):
    """Several parts stored as one batch: the one the store refuses is reported with its reason, the
    others are stored and listed, and nothing of the refused one is left."""
    study = phantom_dataset(32, 32, seed=50)
    others = [phantom_dataset(32, 32, seed=51 + k, study_uid=study.StudyInstanceUID, series_uid=study.SeriesInstanceUID,
                              instance_number=2 + k) for k in range(2)]
    cut = phantom_dataset(32, 32, seed=60, study_uid=study.StudyInstanceUID, series_uid=study.SeriesInstanceUID)
    r = post(plain, body_of(*[("application/dicom", data) for data in
                              (part10(study), part10(cut)[:-300], part10(others[0]), part10(others[1]))]))
    assert r.status_code == 202
    answer = r.json()
    assert [item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]] == [
        study.SOPInstanceUID, others[0].SOPInstanceUID, others[1].SOPInstanceUID]
    (failure,) = answer["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [status.CANNOT_UNDERSTAND] and failure["00081155"]["Value"] == [cut.SOPInstanceUID]
    assert "part 2:" in r.headers["Warning"]
    assert _count(plain) == 3 and plain.store.index.get(cut.SOPInstanceUID) is None and _tmp_files(plain) == []
    assert len(list(plain.store.root.rglob("*.dcm"))) == 3


def test_a_part_the_disk_fails_is_refused_and_the_others_stored(plain, monkeypatch):
    import os
    import stat

    small = [phantom_dataset(16, 16, seed=70 + k) for k in range(2)]
    big = phantom_dataset(96, 96, seed=75)
    real_fsync = os.fsync

    def big_files_fail(fd):
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_size > 96 * 96:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", big_files_fail)
    r = post(plain, body_of(*[("application/dicom", part10(ds)) for ds in (small[0], big, small[1])]))
    monkeypatch.undo()
    assert r.status_code == 202
    answer = r.json()
    assert len(answer["00081199"]["Value"]) == 2
    (failure,) = answer["00081198"]["Value"]
    assert failure["00081197"]["Value"] == [status.OUT_OF_RESOURCES] and failure["00081155"]["Value"] == [big.SOPInstanceUID]
    assert "part 2: write_failed" in r.headers["Warning"]
    assert _count(plain) == 2 and plain.store.index.get(big.SOPInstanceUID) is None
    assert [p for p in plain.store.tmp.iterdir() if p.name.endswith(".part")] == []


@pytest.fixture
def spilling(plain, monkeypatch):
    """Bodies past 1 KiB go to a spool file (as bodies past MEMORY_BODY_BYTES do)."""
    from service.dicomweb import stow

    monkeypatch.setattr(stow, "MEMORY_BODY_BYTES", 1024)
    seen: list = []
    real = stow.SpooledBody.contents

    def contents(self):
        seen.append(self.path)
        return real(self)

    monkeypatch.setattr(stow.SpooledBody, "contents", contents)
    yield plain, seen


def test_a_body_larger_than_memory_is_stored_from_its_spool_file_and_the_file_removed(spilling):
    svc, seen = spilling
    datasets = [phantom_dataset(32, 32, seed=80 + k) for k in range(3)]
    r = post(svc, body_of(*[("application/dicom", part10(ds)) for ds in datasets], ("text/plain", b"x")))
    assert r.status_code == 202 and len(r.json()["00081199"]["Value"]) == 3
    assert seen and seen[0] is not None and seen[0].parent == svc.store.tmp  # it did spill
    assert _count(svc) == 3 and _tmp_files(svc) == []
    for body in (body_of(("application/dicom", part10(datasets[0])), close=False), b"--nothing\r\n" + b"x" * 4000):
        assert post(svc, body).status_code == 400  # malformed past the memory limit: nothing stored, no file left
    assert _count(svc) == 3 and _tmp_files(svc) == []


def test_a_spilled_chunked_body_over_the_limit_is_refused_and_removed(spilling):
    svc, _ = spilling

    def chunks():
        yield body_of(("application/dicom", part10(phantom_dataset(32, 32, seed=90))), close=False)
        for _ in range(6):
            yield b"\0" * (1 << 20)

    r = requests.post(svc.url + "/studies", data=chunks(), headers={"Content-Type": CONTENT_TYPE})
    assert r.status_code == 413
    assert _count(svc) == 0 and _tmp_files(svc) == []
