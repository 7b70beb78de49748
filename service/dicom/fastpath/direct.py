"""C-STORE and C-ECHO served straight from the association's socket, in the association's thread.

pynetdicom runs an established association as two polling threads: the DUL reactor reads each PDU,
decodes it into objects, runs it through the state machine and queues it; the association reactor
collects DIMSE messages from that queue, decodes the command set with pydicom, calls our handler, and
sends the response back through the same machinery. For a 512 x 512 radiograph that costs more Python
time than de-identifying and storing it (bench/RESULTS.md). An association whose accepted presentation
contexts are all Storage or Verification (a PACS, a modality, storescu) needs none of it: after the
A-ASSOCIATE-AC it only ever carries P-DATA-TF with C-STORE-RQ / C-ECHO-RQ, A-RELEASE-RQ or A-ABORT.

:class:`DirectLoop` serves exactly that: it reads PDUs (PS3.8 §9.3.1: type, reserved, 4-byte big-endian
length) with ``recv_into``, splits P-DATA-TF into presentation data values (§9.3.5, Annex E: item
length, context ID, message control header), parses the command set (PS3.7 §9.3.1.1, §9.3.5.1, group
0000, implicit VR little endian) itself, streams the dataset into :class:`StreamingPut` as it arrives,
and writes the C-STORE-RSP / C-ECHO-RSP (PS3.7 §9.3.1.2, §9.3.5.2) from a few packed bytes. Negotiation,
the allow-list, maximum associations and the association's events stay pynetdicom's: the loop starts only
once the association is established, and ends it the way pynetdicom would (A-RELEASE-RP then close;
A-ABORT on a protocol error or a network timeout), firing the same EVT_RELEASED / EVT_ABORTED handlers.

What it refuses, it refuses as pynetdicom does: a request on a context that was not accepted, or whose
Affected SOP Class differs from the context's, is answered 0x0122 (SOP class not supported) once its
dataset has arrived; a PDU that cannot occur on an established association, a PDV out of sequence or a
command other than C-STORE-RQ / C-ECHO-RQ / C-CANCEL-RQ ends the association with an A-ABORT
(service-provider, unexpected PDU or invalid parameter, PS3.8 Table 9-26). ``dicom.direct_receive =
false`` leaves every association to pynetdicom.
"""

from __future__ import annotations

import io
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from pynetdicom import evt

from service.archive.status import CANNOT_UNDERSTAND, OUT_OF_RESOURCES
from service.archive.store import Store
from service.archive.uids import InvalidUID, validate_uid
from service.dicom.fastpath.frontdoor import COMMAND_SET_LIMIT, INVALID_PARAMETER, REASON_NOT_SPECIFIED, UNEXPECTED_PDU, abort_pdu, pdu_limit
from service.dicom.fastpath.streaming import StreamingPut
from service.logs import get_logger, where

log = get_logger("scp")

VERIFICATION = "1.2.840.10008.1.1"
C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP, C_CANCEL_RQ = 0x0001, 0x8001, 0x0030, 0x8030, 0x0FFF
NO_DATASET = 0x0101
SOP_CLASS_NOT_SUPPORTED = 0x0122
# How often a blocked read wakes up to see whether the association was killed from outside.
POLL_S = 0.5

_PDU_HEADER = struct.Struct(">BxI")
_PDV_HEADER = struct.Struct(">IBB")
_ELEMENT = struct.Struct("<HHI")
_RELEASE_RP = b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00"


class _ProtocolError(Exception):
    def __init__(self, reason: int, what: str):
        super().__init__(what)
        self.reason = reason


class _Closed(Exception):
    """The peer closed the connection (or it broke) without releasing or aborting."""


class Host(Protocol):
    """What the loop needs from the SCP: the same handling of a received dataset and of a C-ECHO."""

    def store_received(self, assoc: Any, data: memoryview, stream: StreamingPut | None, transfer_syntax: str,
                       expected: tuple[str, str] | None = None) -> tuple[int, str]: ...

    def echo_received(self, assoc: Any) -> int: ...


@dataclass
class _Request:
    context_id: int
    command: int
    message_id: int
    sop_class: str
    sop_instance: str
    has_dataset: bool
    # The UIDs as received, echoed in the response whatever they hold (PS3.7 §9.3.1.2).
    sop_class_raw: bytes = b""
    sop_instance_raw: bytes = b""


def eligible(assoc: Any, storage_classes: frozenset[str]) -> bool:
    """True when every accepted context is Verification or Storage: all the loop has to serve."""
    contexts = assoc.accepted_contexts
    return bool(contexts) and all(str(cx.abstract_syntax) in storage_classes or str(cx.abstract_syntax) == VERIFICATION for cx in contexts)


def _command_fields(data: bytes) -> dict[int, bytes]:
    """Group 0000 elements of a command set (always implicit VR little endian, PS3.7 §6.3.1)."""
    fields: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos < end:
        if pos + 8 > end:
            raise _ProtocolError(INVALID_PARAMETER, "truncated command element")
        group, element, length = _ELEMENT.unpack_from(data, pos)
        pos += 8
        if group != 0x0000 or pos + length > end:
            raise _ProtocolError(INVALID_PARAMETER, "malformed command set")
        fields[element] = data[pos : pos + length]
        pos += length
    return fields


def _us(fields: dict[int, bytes], element: int) -> int | None:
    value = fields.get(element)
    return int.from_bytes(value, "little") if value is not None and len(value) == 2 else None


def _ui(fields: dict[int, bytes], element: int) -> str:
    return fields.get(element, b"").decode("ascii", "replace").rstrip("\0 ")


def _ui_raw(fields: dict[int, bytes], element: int) -> bytes:
    return bytes(fields.get(element, b"")).rstrip(b"\0 ")


def _parse_request(context_id: int, data: bytes) -> _Request:
    fields = _command_fields(data)
    command = _us(fields, 0x0100)
    message_id = _us(fields, 0x0110)
    if command is None or (message_id is None and command != C_CANCEL_RQ):
        raise _ProtocolError(INVALID_PARAMETER, "command set without Command Field or Message ID")
    dataset_type = _us(fields, 0x0800)
    return _Request(context_id, command, message_id or 0, _ui(fields, 0x0002), _ui(fields, 0x1000),
                    dataset_type is not None and dataset_type != NO_DATASET, _ui_raw(fields, 0x0002), _ui_raw(fields, 0x1000))


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT.pack(0x0000, element, len(value)) + value


def _pad_ui(raw: bytes) -> bytes:
    return raw + b"\0" if len(raw) % 2 else raw


def _is_uid(raw: bytes) -> bool:
    try:
        validate_uid(raw.decode("ascii"), "Affected SOP Instance UID")
    except (UnicodeDecodeError, InvalidUID):
        return False
    return True


def _response_pdu(context_id: int, command: int, request: _Request, status: int, comment: str = "") -> bytes:
    """A P-DATA-TF holding one response command set (last fragment of a command)."""
    body = _element(0x0002, _pad_ui(request.sop_class_raw or request.sop_class.encode("ascii", "replace")))
    body += _element(0x0100, struct.pack("<H", command))
    body += _element(0x0120, struct.pack("<H", request.message_id))
    body += _element(0x0800, struct.pack("<H", NO_DATASET))
    body += _element(0x0900, struct.pack("<H", status))
    if comment:
        text = comment[:64].encode("ascii", "replace")
        body += _element(0x0902, text + b" " if len(text) % 2 else text)
    if command == C_STORE_RSP and request.sop_instance_raw:
        body += _element(0x1000, _pad_ui(request.sop_instance_raw))
    command_set = _element(0x0000, struct.pack("<I", len(body))) + body
    pdv = _PDV_HEADER.pack(len(command_set) + 2, context_id, 0x03) + command_set
    return _PDU_HEADER.pack(0x04, len(pdv)) + pdv


class DirectLoop:
    """Serves one established storage association until it is released, aborted or times out."""

    def __init__(self, assoc: Any, host: Host, store: Store | None, network_timeout: float | None, max_dataset_bytes: int = 2 << 30):
        self.assoc = assoc
        self.max_dataset_bytes = max_dataset_bytes
        self.host = host
        self.store = store
        self.network_timeout = network_timeout
        self.contexts = {cx.context_id: (str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        self.calling_ae = assoc.requestor.ae_title
        self.sock: socket.socket = assoc.dul.socket.socket
        # Every PDU is checked against the Maximum Length we advertised before it is read (PS3.8 Annex D.1).
        self.max_pdu_length = pdu_limit(assoc.acceptor.maximum_length or 0)
        self._header = bytearray(6)
        self._body = bytearray(1 << 17)
        # The message being received.
        self.request: _Request | None = None
        self.command = bytearray()
        self.dataset: io.BytesIO | None = None
        self.stream: StreamingPut | None = None
        # The message's answer is already known (too large, a bad request): the rest is read and dropped.
        self.refusal: tuple[int, str] | None = None

    # -- the loop --------------------------------------------------------------------------------------

    def run(self) -> None:
        outcome: Callable[[], None]
        if not wait_for_dul(self.assoc):
            # The peer aborted or broke the protocol while we were accepting (pynetdicom's state machine
            # left Sta6's path, its reactor may have stopped): the association never really began.
            log.warning("association_protocol_error", detail="the association ended while it was being accepted",
                        state=self.assoc.dul.state_machine.current_state, reactor=self.assoc.dul.is_alive())
            self._send_quietly(abort_pdu(UNEXPECTED_PDU))
            self._drop_message()
            self._aborted()
            return
        try:
            self.sock.settimeout(POLL_S)
            while True:
                pdu_type, body = self._read_pdu()
                if pdu_type == 0x04:
                    self._p_data(body)
                elif pdu_type == 0x05:  # A-RELEASE-RQ
                    if self.request is not None:
                        raise _ProtocolError(UNEXPECTED_PDU, "A-RELEASE-RQ in the middle of a message")
                    self.sock.sendall(_RELEASE_RP)
                    outcome = self._released
                    break
                elif pdu_type == 0x07:  # A-ABORT from the peer
                    outcome = self._aborted
                    break
                else:
                    raise _ProtocolError(UNEXPECTED_PDU, f"PDU type 0x{pdu_type:02X} on an established association")
        except _ProtocolError as exc:
            log.warning("association_protocol_error", detail=str(exc))
            self._send_quietly(abort_pdu(exc.reason))
            outcome = self._aborted
        except TimeoutError:
            log.warning("association_network_timeout", seconds=self.network_timeout)
            self._send_quietly(abort_pdu(REASON_NOT_SPECIFIED))
            outcome = self._aborted
        except (_Closed, OSError):
            outcome = self._aborted
        except Exception as exc:  # a bug must cost this association, never leave it hanging
            log.error("association_internal_error", error=type(exc).__name__, where=where(exc))
            self._send_quietly(abort_pdu(REASON_NOT_SPECIFIED))
            outcome = self._aborted
        self._drop_message()
        outcome()

    def _released(self) -> None:
        self._end("is_released", evt.EVT_RELEASED)

    def _aborted(self) -> None:
        self._end("is_aborted", evt.EVT_ABORTED)

    def _end(self, flag: str, event: Any) -> None:
        """Close, mark and announce the end as pynetdicom's reactor would, then stop its threads."""
        self._close()
        setattr(self.assoc, flag, True)
        self.assoc.is_established = False
        evt.trigger(self.assoc, event, {})
        self.assoc.kill()

    def _close(self) -> None:
        # pynetdicom's socket close: the DUL's state machine sees the transport closed and goes idle.
        try:
            self.assoc.dul.socket.close()
        except OSError:
            pass

    def _send_quietly(self, pdu: bytes) -> None:
        try:
            self.sock.sendall(pdu)
        except (OSError, AttributeError):  # AttributeError: pynetdicom already closed the socket
            pass

    # -- PDUs ------------------------------------------------------------------------------------------

    def _recv_exact(self, view: memoryview) -> None:
        got, idle = 0, 0.0
        while got < len(view):
            try:
                n = self.sock.recv_into(view[got:])
            except TimeoutError:
                if self.assoc._kill:
                    raise _Closed() from None
                idle += POLL_S
                if self.network_timeout is not None and idle >= self.network_timeout:
                    raise
                continue
            if n == 0:
                raise _Closed()
            got += n
            idle = 0.0

    def _read_pdu(self) -> tuple[int, memoryview]:
        with memoryview(self._header) as header:
            self._recv_exact(header)
        pdu_type, length = _PDU_HEADER.unpack(self._header)
        if length > self.max_pdu_length:
            raise _ProtocolError(INVALID_PARAMETER, f"PDU length {length} over {self.max_pdu_length}")
        if length > len(self._body):
            self._body = bytearray(length)
        body = memoryview(self._body)[:length]
        self._recv_exact(body)
        return pdu_type, body

    def _p_data(self, body: memoryview) -> None:
        pos, end = 0, len(body)
        if end == 0:
            raise _ProtocolError(INVALID_PARAMETER, "P-DATA-TF without a presentation data value")
        while pos < end:
            if pos + 6 > end:
                raise _ProtocolError(INVALID_PARAMETER, "truncated presentation data value")
            item_length, context_id, control = _PDV_HEADER.unpack_from(body, pos)
            stop = pos + 4 + item_length
            if item_length < 2 or stop > end:
                raise _ProtocolError(INVALID_PARAMETER, "presentation data value length")
            self._fragment(context_id, bool(control & 0x01), bool(control & 0x02), body[pos + 6 : stop])
            pos = stop

    # -- DIMSE messages --------------------------------------------------------------------------------

    def _fragment(self, context_id: int, is_command: bool, last: bool, data: memoryview) -> None:
        if context_id not in self.contexts:
            raise _ProtocolError(INVALID_PARAMETER, f"presentation context {context_id} was not accepted")
        if is_command:
            if self.request is not None:
                raise _ProtocolError(UNEXPECTED_PDU, "a command fragment while a dataset was expected")
            if len(self.command) + len(data) > COMMAND_SET_LIMIT:
                raise _ProtocolError(INVALID_PARAMETER, f"command set over {COMMAND_SET_LIMIT} bytes")
            self.command += data
            if last:
                request = _parse_request(context_id, bytes(self.command))
                self.command.clear()
                self._command(request)
            return
        request = self.request
        if request is None or self.command or context_id != request.context_id:
            raise _ProtocolError(UNEXPECTED_PDU, "a dataset fragment without its command")
        if self.refusal is None:
            assert self.dataset is not None
            if self.dataset.tell() + len(data) > self.max_dataset_bytes:
                self._too_large()
            else:
                self.dataset.write(data)
                if self.stream is not None:
                    self.stream.feed(self.dataset)
        if last:
            self._stored(request)

    def _too_large(self) -> None:
        """Past ``dicom.max_dataset_bytes``: nothing more is kept, its file goes; answered once it ends."""
        log.warning("instance_refused", reason="too_large", limit=self.max_dataset_bytes)
        self.refusal = (OUT_OF_RESOURCES, "dataset larger than dicom.max_dataset_bytes")
        if self.stream is not None:
            self.stream.abort()
        self.stream = None
        self.dataset = io.BytesIO()

    def _command(self, request: _Request) -> None:
        if request.command == C_CANCEL_RQ:
            return  # nothing of ours can be cancelled: a C-STORE is answered as soon as it is complete
        if request.command == C_ECHO_RQ:
            if request.has_dataset:
                raise _ProtocolError(INVALID_PARAMETER, "C-ECHO-RQ with a dataset")
            ok = self.contexts[request.context_id][0] == VERIFICATION
            status = self.host.echo_received(self.assoc) if ok else SOP_CLASS_NOT_SUPPORTED
            self.sock.sendall(_response_pdu(request.context_id, C_ECHO_RSP, request, status))
            return
        if request.command != C_STORE_RQ:
            raise _ProtocolError(UNEXPECTED_PDU, f"DIMSE command 0x{request.command:04X} on a storage association")
        if not request.has_dataset:
            self._respond_store(request, *self.host.store_received(self.assoc, memoryview(b""), None, self.contexts[request.context_id][1]))
            return
        self.request = request
        self.dataset = io.BytesIO()
        abstract, transfer = self.contexts[request.context_id]
        if not _is_uid(request.sop_instance_raw):
            # Not a UID (PS3.5 §9.1): nothing can be stored under it; its dataset is read and dropped.
            log.warning("instance_refused", reason="bad_affected_sop_instance_uid")
            self.refusal = (CANNOT_UNDERSTAND, "Affected SOP Instance UID is not a valid UID")
            return
        if self.store is not None and request.sop_class == abstract:
            self.stream = StreamingPut(self.store, transfer, "cstore", self.calling_ae, (abstract, request.sop_instance))

    def _stored(self, request: _Request) -> None:
        assert self.dataset is not None
        abstract, transfer = self.contexts[request.context_id]
        if self.refusal is not None:
            (status_code, comment), self.refusal = self.refusal, None
            self.request, self.dataset, self.stream = None, None, None
            self._respond_store(request, status_code, comment)
            return
        if request.sop_class != abstract:
            # pynetdicom's answer when the Affected SOP Class is not the context's (PS3.7 C.4.2.1.4).
            status, comment = SOP_CLASS_NOT_SUPPORTED, ""
        else:
            data = self.dataset.getbuffer()
            status, comment = self.host.store_received(self.assoc, data, self.stream, transfer, (abstract, request.sop_instance))
            del data
        self.request, self.dataset, self.stream = None, None, None
        self._respond_store(request, status, comment)

    def _respond_store(self, request: _Request, status: int, comment: str) -> None:
        self.sock.sendall(_response_pdu(request.context_id, C_STORE_RSP, request, status, comment))

    def _drop_message(self) -> None:
        """The association ended inside a message: nothing of it may remain."""
        if self.stream is not None:
            self.stream.abort()
        self.request, self.dataset, self.stream = None, None, None
        self.refusal = None


def wait_for_dul(assoc: Any, timeout: float = 5.0) -> bool:
    """Let the DUL finish sending the A-ASSOCIATE-AC (state Sta6) before the loop takes the socket.

    Closing the socket later moves the DUL from Sta6 to idle, which pynetdicom's ``kill()`` waits for.
    False when it will not get there: its reactor stopped, or the peer aborted or sent something invalid
    before the A-ASSOCIATE-AC left (Sta1 idle, Sta13 awaiting the transport's close).
    """
    deadline = time.monotonic() + timeout
    dul = assoc.dul
    while time.monotonic() < deadline:
        state = dul.state_machine.current_state
        if state == "Sta6":
            return True
        if state in ("Sta1", "Sta13") or not dul.is_alive():
            return False
        time.sleep(0.0002)
    return dul.state_machine.current_state == "Sta6"
