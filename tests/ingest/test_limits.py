"""Size limits on what a peer sends, over the network, on both receive paths.

``dicom.max_dataset_bytes``: a larger C-STORE dataset is answered 0xA700 (refused, out of resources) and
nothing of it stays. A command set over 64 KiB ends the association with an A-ABORT. A deflated dataset
(PS3.5 §A.5) is inflated as a counted stream first: a bomb of ~0.5 MB inflating to 512 MiB is refused
without the server's memory following it.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from structlog.testing import capture_logs

from service.archive import status
from service.archive.encoded import file_meta_bytes
from service.data.phantom import CR_IMAGE_STORAGE, phantom_dataset
from tests.helpers import make_config
from tests.ingest.test_direct import _Server, _context_id, _pdv_pdu, _wait
from tests.ingest.util import SCPProcess, chunked_sending, encode_body, scu, send

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_temp_left")]

PATHS = {
    "direct": [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)],
    "pynetdicom": [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian), (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)],
}


def _send(port: int, contexts, datasets) -> list[int]:
    ae = scu("LIMITS", contexts)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHPACS")
        assert assoc.is_established
        statuses = []
        for ds in datasets:
            rsp = assoc.send_c_store(ds)
            statuses.append(int(rsp.Status) if rsp is not None and "Status" in rsp else -1)
        assoc.release()
        return statuses
    finally:
        ae.shutdown()


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_dataset_over_max_dataset_bytes_is_refused_and_nothing_stays(home, path):
    server = _Server(make_config(home, **{"dicom.max_dataset_bytes": 64 * 1024}), with_qr=True)
    try:
        big, small = phantom_dataset(256, 256, seed=1), phantom_dataset(64, 64, seed=2)  # ~131 KB and ~8 KB
        with capture_logs() as logs:
            # The association goes on after the refusal: the next instance is stored.
            assert _send(server.port, PATHS[path], [big, small]) == [status.OUT_OF_RESOURCES, status.SUCCESS]
        assert any(e.get("reason") == "too_large" for e in logs)
        assert server.instances() == 1
        assert server.store.index.get(big.SOPInstanceUID) is None
    finally:
        server.stop()


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_command_set_over_64_kib_aborts_the_association(home, path):
    server = _Server(make_config(home), with_qr=True)
    try:
        ae = scu("LIMITS", PATHS[path])
        try:
            assoc = ae.associate("127.0.0.1", server.port, ae_title="SYNTHPACS")
            assert assoc.is_established
            cx = _context_id(assoc)
            # 70 KB of a command set in 8 KB fragments, never the last one.
            fragment = struct.pack("<HHI", 0, 0x0002, 8000 - 8) + b"1" * (8000 - 8)
            for _ in range(9):
                assoc.dul.socket.send(_pdv_pdu(cx, 0x01, fragment))
            assert _wait(lambda: assoc.is_aborted or not assoc.is_established), "the association was not ended"
        finally:
            ae.shutdown()
        assert send(server.port, [phantom_dataset(16, 16)]) == [status.SUCCESS]
    finally:
        server.stop()


def _memory_hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _deflate_bomb(path: Path, inflated: int) -> Path:
    """A CR instance whose deflated dataset holds ``inflated`` bytes of zero pixels in a few hundred KB."""
    ds = phantom_dataset(16, 16, seed=3)
    ds.SOPInstanceUID = generate_uid()
    header = Dataset()
    for elem in ds:
        if elem.tag < 0x7FE00010:
            header.add(elem)
    raw_header = encode_body(header) + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, inflated)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    body = [compressor.compress(raw_header)]
    zeros = bytes(1 << 20)
    for _ in range(inflated >> 20):
        body.append(compressor.compress(zeros))
    body.append(compressor.flush())
    meta = file_meta_bytes(ds.SOPClassUID, ds.SOPInstanceUID, DeflatedExplicitVRLittleEndian, "1.2.3.4", "TEST")
    path.write_bytes(meta + b"".join(body))
    return path


def test_a_deflate_bomb_is_refused_without_the_memory(tmp_path):
    bomb = _deflate_bomb(tmp_path / "bomb.dcm", 512 << 20)
    assert bomb.stat().st_size < 1 << 20
    server = SCPProcess(tmp_path / "home").start()
    try:
        pid = server.proc.pid  # type: ignore[union-attr]
        contexts = [(CR_IMAGE_STORAGE, DeflatedExplicitVRLittleEndian)]
        assert _send(server.port, contexts, [phantom_dataset(16, 16, seed=4)]) == [status.SUCCESS]  # a real deflated one
        before = _memory_hwm(pid)
        with chunked_sending():
            assert _send(server.port, contexts, [bomb]) == [status.OUT_OF_RESOURCES]
        grew = _memory_hwm(pid) - before
        assert grew < 64 << 20, f"the server's memory high-water mark grew {grew >> 20} MiB"
        assert _send(server.port, [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)], [phantom_dataset(16, 16, seed=5)]) == [status.SUCCESS]
    finally:
        server.stop()
