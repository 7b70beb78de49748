"""service/dicom/fastpath/direct.py: storage associations served straight from the socket, over the network.

The loop must answer what pynetdicom would answer and end an association the way pynetdicom would:
A-RELEASE-RP on release, A-ABORT on anything that cannot happen on an established storage association,
and leave nothing of a message it did not complete. The Q/R associations and ``dicom.direct_receive =
false`` stay with pynetdicom. Every case ends with a good association, to show the server keeps serving.
"""

from __future__ import annotations

import io
import struct
import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from structlog.testing import capture_logs

from service.archive import status
from service.archive.store import Store
from service.data.phantom import CR_IMAGE_STORAGE, DX_IMAGE_STORAGE_PRESENTATION, phantom_dataset
from service.dicom.fastpath.direct import DirectLoop
from service.dicom.qr import QueryRetrieveSCP
from service.dicom.scp import StorageSCP
from tests.helpers import make_config
from tests.ingest.util import echo_ok, encode_body, scu, send

pytestmark = pytest.mark.integration


class _Server:
    """The SCP in this process, remembering each association it accepted."""

    def __init__(self, cfg, with_qr: bool = False):
        self.store = Store(cfg)
        self.accepted: list = []
        handlers = [(evt.EVT_ESTABLISHED, lambda e: self.accepted.append(e.assoc))]
        contexts = []
        if with_qr:
            qr = QueryRetrieveSCP(cfg, self.store)
            handlers += qr.handlers()
            contexts = qr.contexts()
        self.scp = StorageSCP(cfg, self.store, extra_handlers=handlers, extra_contexts=contexts)
        _host, self.port = self.scp.start()

    def stop(self) -> None:
        self.scp.stop()
        self.store.close()

    def instances(self) -> int:
        return self.store.index.stats()["instances"]

    def nothing_left_over(self) -> None:
        assert list(self.store.tmp.iterdir()) == []


@pytest.fixture
def server(home):
    s = _Server(make_config(home))
    yield s
    s.stop()


def _associate(port: int, network_timeout: float = 30):
    ae = scu("RAWSCU")
    ae.network_timeout = network_timeout
    assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHPACS")
    assert assoc.is_established
    return ae, assoc


def _context_id(assoc, abstract: str = CR_IMAGE_STORAGE) -> int:
    return next(cx.context_id for cx in assoc.accepted_contexts if cx.abstract_syntax == abstract)


def _pdv_pdu(context_id: int, control: int, data: bytes) -> bytes:
    item = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BxI", 0x04, len(item)) + item


def _store_fragments(assoc, ds, sop_class: str | None = None, context_id: int | None = None, max_pdu: int = 16384):
    req = C_STORE()
    req.MessageID, req.Priority = 7, 2
    req.AffectedSOPClassUID = sop_class or ds.SOPClassUID
    req.AffectedSOPInstanceUID = ds.SOPInstanceUID
    req.DataSet = io.BytesIO(encode_body(ds))
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    return msg.encode_msg(context_id or _context_id(assoc), max_pdu)


def _encoded(primitive) -> bytes:
    pdu = P_DATA_TF()
    pdu.from_primitive(primitive)
    return pdu.encode()


def _wait(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_storage_associations_are_served_directly(server):
    assert send(server.port, [phantom_dataset(32, 32, seed=s) for s in range(3)]) == [status.SUCCESS] * 3
    assert echo_ok(server.port)
    assert server.instances() == 3
    assert server.accepted and all(isinstance(a.direct_loop, DirectLoop) for a in server.accepted)
    assert _wait(lambda: all(not a.is_alive() for a in server.accepted))  # threads end after release


def test_query_retrieve_associations_stay_with_pynetdicom(home):
    server = _Server(make_config(home), with_qr=True)
    try:
        ae = scu("QRSCU", [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian), (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)])
        assoc = ae.associate("127.0.0.1", server.port, ae_title="SYNTHPACS")
        assert assoc.is_established
        assert assoc.send_c_store(phantom_dataset(32, 32, seed=1)).Status == status.SUCCESS
        assoc.release()
        ae.shutdown()
        assert send(server.port, [phantom_dataset(32, 32, seed=2)]) == [status.SUCCESS]
        assert server.accepted[0].direct_loop is None
        assert isinstance(server.accepted[1].direct_loop, DirectLoop)
        assert server.instances() == 2
    finally:
        server.stop()


def test_direct_receive_can_be_turned_off(home):
    server = _Server(make_config(home, **{"dicom.direct_receive": False}))
    try:
        assert send(server.port, [phantom_dataset(32, 32, seed=1)]) == [status.SUCCESS]
        assert getattr(server.accepted[0], "direct_loop", None) is None and server.instances() == 1
    finally:
        server.stop()


def test_affected_sop_class_other_than_the_contexts_is_not_supported(server):
    ae, assoc = _associate(server.port)
    ds = phantom_dataset(32, 32, seed=3)
    try:
        # A DX class announced on the CR context: answered 0x0122 once the dataset is in, as pynetdicom does.
        assoc._reactor_checkpoint.clear()
        while not assoc._is_paused:
            time.sleep(0.001)
        for pdu in _store_fragments(assoc, ds, sop_class=DX_IMAGE_STORAGE_PRESENTATION):
            assoc.dul.send_pdu(pdu)
        _cx, rsp = assoc.dimse.get_msg(block=True)
        assoc._reactor_checkpoint.set()
        assert rsp is not None and rsp.Status == 0x0122 and rsp.MessageIDBeingRespondedTo == 7
        assert rsp.AffectedSOPInstanceUID == ds.SOPInstanceUID
        assoc.release()
    finally:
        ae.shutdown()
    assert server.instances() == 0
    server.nothing_left_over()


def _pdu_cases(assoc, ds) -> dict[str, list[bytes]]:
    cx = _context_id(assoc)
    fragments = [_encoded(p) for p in _store_fragments(assoc, ds)]
    find_command = bytes.fromhex("00000000") + struct.pack("<I", 4) + struct.pack("<I", 0)  # group length only
    find_command += struct.pack("<HHI", 0, 0x0100, 2) + struct.pack("<H", 0x0020)  # C-FIND-RQ
    find_command += struct.pack("<HHI", 0, 0x0110, 2) + struct.pack("<H", 1)
    return {
        "PDV length past the PDU": [struct.pack(">BxI", 0x04, 8) + struct.pack(">IBB", 400, cx, 0x03) + b"\0\0"],
        "dataset fragment without a command": [_pdv_pdu(cx, 0x00, b"\x08\x00\x16\x00")],
        "context that was not accepted": [_pdv_pdu(cx + 100, 0x03, b"\0" * 12)],
        "C-FIND-RQ on a storage context": [_pdv_pdu(cx, 0x03, find_command)],
        "A-ASSOCIATE-RQ after establishment": [b"\x01\x00" + struct.pack(">I", 4) + b"\0\0\0\0"],
        "unknown PDU type": [b"\x09\x00" + struct.pack(">I", 2) + b"\0\0"],
        "A-RELEASE-RQ inside a message": fragments[:3] + [b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"],
        "truncated command set": [_pdv_pdu(cx, 0x03, b"\x00\x00\x00\x00\x04\x00")],
    }


@pytest.mark.parametrize("case", [
    "PDV length past the PDU", "dataset fragment without a command", "context that was not accepted",
    "C-FIND-RQ on a storage context", "A-ASSOCIATE-RQ after establishment", "unknown PDU type",
    "A-RELEASE-RQ inside a message", "truncated command set",
])
def test_protocol_errors_abort_the_association_and_leave_nothing(server, case):
    ae, assoc = _associate(server.port)
    ds = phantom_dataset(128, 128, seed=4)
    with capture_logs() as logs:
        try:
            for raw in _pdu_cases(assoc, ds)[case]:
                assoc.dul.socket.send(raw)
            assert _wait(lambda: assoc.is_aborted or not assoc.is_established), "the SCP did not end the association"
        finally:
            ae.shutdown()
        assert _wait(lambda: any(e["event"] == "association_aborted" for e in logs))
    assert any(e["event"] == "association_protocol_error" for e in logs), logs
    assert server.instances() == 0
    server.nothing_left_over()
    assert send(server.port, [phantom_dataset(16, 16)]) == [status.SUCCESS]


def test_an_idle_association_is_aborted_after_the_network_timeout(home):
    server = _Server(make_config(home, **{"dicom.network_timeout": 1.0}))
    try:
        with capture_logs() as logs:
            ae, assoc = _associate(server.port, network_timeout=30)
            try:
                assert _wait(lambda: assoc.is_aborted, 8.0), "the idle association was not aborted"
            finally:
                ae.shutdown()
            assert _wait(lambda: any(e["event"] == "association_aborted" for e in logs))
        assert any(e["event"] == "association_network_timeout" for e in logs)
        assert send(server.port, [phantom_dataset(16, 16)]) == [status.SUCCESS]
    finally:
        server.stop()


def test_a_peer_that_disappears_mid_message_leaves_nothing(server):
    ae, assoc = _associate(server.port)
    ds = phantom_dataset(256, 256, seed=5)
    with capture_logs() as logs:
        fragments = _store_fragments(assoc, ds)
        for _ in range(4):
            assoc.dul.socket.send(_encoded(next(fragments)))
        assoc.dul.socket.socket.close()  # no A-ABORT: the connection just goes
        ae.shutdown()
        assert _wait(lambda: any(e["event"] == "association_aborted" for e in logs))
    assert server.instances() == 0
    server.nothing_left_over()
    assert send(server.port, [phantom_dataset(16, 16)]) == [status.SUCCESS]


def test_a_bug_in_the_loop_aborts_only_that_association(server, monkeypatch):
    def broken(*_args, **_kwargs):
        raise RuntimeError("PATIENT^NAME must never reach a log line")

    monkeypatch.setattr("service.dicom.fastpath.direct.StreamingPut", broken)
    with capture_logs() as logs:
        assert send(server.port, [phantom_dataset(32, 32, seed=6)]) == [-1]  # aborted: no response
        assert _wait(lambda: any(e["event"] == "association_aborted" for e in logs))
    errors = [e for e in logs if e["event"] == "association_internal_error"]
    assert errors and errors[0]["error"] == "RuntimeError" and "PATIENT" not in str(logs)
    monkeypatch.undo()
    assert server.instances() == 0
    server.nothing_left_over()
    assert send(server.port, [phantom_dataset(16, 16)]) == [status.SUCCESS]
