"""C-STORE statuses mapped by cause (PS3.4 Annex B.2.3, PS3.7 Annex C), over the network, on both paths.

* 0xA900 "Data Set does not match SOP Class": the dataset is not what the request says it is (its SOP Class
  UID is not the presentation context's, its SOP Instance UID is not the Affected SOP Instance UID, as
  dcmtk's storescp answers both), or it breaks its IOD's Type 1 image attributes (Rows, Columns or
  BitsAllocated of 0: PS3.3 C.7.6.3 requires at least 1). The sender's data is wrong; resending it cannot
  succeed, so no A7xx.
* 0xC000 "Cannot understand": the request or dataset cannot be read as DICOM (a value outside its VR, an
  Affected SOP Instance UID that is not a UID).
* 0xA700 "Out of resources" is left to real exhaustion (a full disk, a size limit): a PACS retries those.

Requests are written byte by byte here, so that what a conforming SCU library refuses to send can be sent.
"""

from __future__ import annotations

import struct
import time

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

from service.archive import status
from service.data.phantom import CR_IMAGE_STORAGE, phantom_dataset
from tests.helpers import make_config
from tests.ingest.test_direct import _Server, _context_id
from tests.ingest.util import encode_body, scu, send

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_temp_left")]

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PATHS = {
    "direct": [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)],
    "pynetdicom": [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian), (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)],
}


def _element(element: int, value: bytes) -> bytes:
    return struct.pack("<HHI", 0x0000, element, len(value)) + value


def _ui(raw: bytes) -> bytes:
    return raw + b"\0" if len(raw) % 2 else raw


def _store_request(sop_class: bytes, sop_instance: bytes, message_id: int = 9) -> bytes:
    """A C-STORE-RQ command set (PS3.7 §9.3.1.1), implicit VR little endian, with a dataset to follow."""
    body = _element(0x0002, _ui(sop_class)) + _element(0x0100, struct.pack("<H", 0x0001))
    body += _element(0x0110, struct.pack("<H", message_id)) + _element(0x0700, struct.pack("<H", 0))
    body += _element(0x0800, struct.pack("<H", 0x0000)) + _element(0x1000, _ui(sop_instance))
    return _element(0x0000, struct.pack("<I", len(body))) + body


def _pdu(context_id: int, control: int, data: bytes) -> bytes:
    item = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxI", 0x04, len(item)) + item


def _store_raw(assoc, dataset: bytes, sop_class: bytes, sop_instance: bytes) -> int:
    """Send one C-STORE-RQ as raw PDUs; the response's status (-1: none, the association ended)."""
    cx = _context_id(assoc)
    assoc._reactor_checkpoint.clear()
    while not assoc._is_paused:
        time.sleep(0.001)
    try:
        assoc.dul.socket.send(_pdu(cx, 0x03, _store_request(sop_class, sop_instance)))
        chunks = [dataset[i : i + 16000] for i in range(0, len(dataset), 16000)]
        for i, chunk in enumerate(chunks):
            assoc.dul.socket.send(_pdu(cx, 0x02 if i == len(chunks) - 1 else 0x00, chunk))
        _cx, rsp = assoc.dimse.get_msg(block=True)
        return int(rsp.Status) if rsp is not None else -1
    finally:
        assoc._reactor_checkpoint.set()


def _with(ds: Dataset, **changes) -> Dataset:
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def _series_number(value: str) -> tuple[bytes, str]:
    """A phantom whose Series Number is ``value`` exactly as written (pydicom would reformat it); its UID."""
    ds = phantom_dataset(32, 32, seed=2)
    ds.SeriesNumber = 1
    body = encode_body(ds)
    old = struct.pack("<HH2sH", 0x0020, 0x0011, b"IS", 2) + b"1 "
    raw = value.encode("ascii") + (b" " if len(value) % 2 else b"")
    assert old in body
    return body.replace(old, struct.pack("<HH2sH", 0x0020, 0x0011, b"IS", len(raw)) + raw), ds.SOPInstanceUID


def _cases() -> dict[str, tuple[bytes, bytes, bytes, int]]:
    """name: (dataset, Affected SOP Class UID, Affected SOP Instance UID, expected status)."""
    cases = {}
    ct = _with(phantom_dataset(32, 32, seed=1), SOPClassUID=CT_IMAGE_STORAGE)
    cases["CT dataset on the CR context"] = (encode_body(ct), CR_IMAGE_STORAGE.encode(), ct.SOPInstanceUID.encode(), status.DATASET_MISMATCH)
    other = phantom_dataset(32, 32, seed=1)
    cases["Affected SOP Instance UID not the dataset's"] = (encode_body(other), CR_IMAGE_STORAGE.encode(), generate_uid().encode(), status.DATASET_MISMATCH)
    for keyword in ("BitsAllocated", "Rows", "Columns"):
        ds = _with(phantom_dataset(32, 32, seed=1), **{keyword: 0})
        cases[f"{keyword} 0"] = (encode_body(ds), CR_IMAGE_STORAGE.encode(), ds.SOPInstanceUID.encode(), status.DATASET_MISMATCH)
    raw, uid = _series_number("1e+23")
    cases["SeriesNumber 1e+23"] = (raw, CR_IMAGE_STORAGE.encode(), uid.encode(), status.CANNOT_UNDERSTAND)
    ds = phantom_dataset(32, 32, seed=3)
    bad_uid = ds.SOPInstanceUID.encode()[:-1] + b"\xe9"
    cases["non-ASCII byte in the Affected SOP Instance UID"] = (encode_body(ds), CR_IMAGE_STORAGE.encode(), bad_uid, status.CANNOT_UNDERSTAND)
    return cases


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("case", sorted(_cases()))
def test_refusals_are_mapped_by_cause_and_the_association_goes_on(home, path, case):
    dataset, sop_class, sop_instance, expected = _cases()[case]
    server = _Server(make_config(home), with_qr=True)
    try:
        ae = scu("STATUSES", PATHS[path])
        try:
            assoc = ae.associate("127.0.0.1", server.port, ae_title="SYNTHPACS")
            assert assoc.is_established
            assert _store_raw(assoc, dataset, sop_class, sop_instance) == expected
            assert assoc.is_established, "the association was ended after a refusal"
            good = phantom_dataset(16, 16, seed=9)
            assert assoc.send_c_store(good).Status == status.SUCCESS
            assoc.release()
        finally:
            ae.shutdown()
        assert server.instances() == 1
    finally:
        server.stop()


def test_an_identical_resend_after_a_failed_checkpoint_on_a_full_disk_is_a_success(home, monkeypatch):
    server = _Server(make_config(home), with_qr=False)
    try:
        ds = phantom_dataset(32, 32, seed=11)
        assert send(server.port, [ds]) == [status.SUCCESS]

        def full_disk(*_args, **_kwargs):
            raise OSError(28, "No space left on device")

        # The periodic checkpoint is due and its durable mark cannot be written.
        monkeypatch.setattr("service.archive.store._write_small_file_durably", full_disk)
        server.store._last_checkpoint = 0.0
        # Durable and indexed already: the re-send is answered success, not 0xA700.
        assert send(server.port, [ds]) == [status.SUCCESS]
        assert server.instances() == 1
    finally:
        monkeypatch.undo()
        server.stop()
