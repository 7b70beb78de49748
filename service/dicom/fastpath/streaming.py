"""C-STORE datasets written to their temporary file while they arrive.

A C-STORE request's dataset comes in P-DATA fragments (PS3.8 §9.3.5; dcmtk sends at most 128 KB each).
pynetdicom collects them and hands the whole dataset to our handler, which then writes it: for a 6 MB
radiograph the write (and the page-cache throttling that comes with it on a busy disk) would happen after
the last byte arrived, while the sender waits. Here the header is parsed, validated, de-identified and
encoded as soon as it is complete, and every later fragment of pixel data is written and hashed as it
arrives (and handed to the kernel's writeback at once, so little is left for the fsync). When the message
is complete, only the fsync, the rename and the index row remain; the row is made while the fsync runs on
another thread, and the C-STORE response follows all three exactly as before: success still means
durable and indexed.

The stream takes the common case only: a Pixel Data element in a non-deflated transfer syntax with
nothing after it but Data Set Trailing Padding. Anything else, and any error, makes it step aside: its
temporary file is removed and the complete dataset (which pynetdicom still collects) goes through
:meth:`Store.put_bytes` as if there had been no stream, so both paths give the same bytes, the same
status and the same log line. An association that ends mid-message removes the stream's file
(:meth:`StreamingPut.abort`); a crash leaves it in ``store/.tmp``, which the next start empties.
"""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time
from concurrent.futures import Future
from pathlib import Path

from pydicom.uid import UID, DeflatedExplicitVRLittleEndian
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ

from service.archive.encoded import DATASET_TRAILING_PADDING, EncodingError, parse_header, split_pixel_data
from service.archive.store import SYNCERS, Prepared, PutResult, Store, StoreError, _wait_quietly, fsync_and_close
from service.dicom.fastpath.frontdoor import COMMAND_SET_LIMIT, QUERY_DATASET_LIMIT
from service.logs import get_logger

log = get_logger("store")

# A header still incomplete after this many bytes is left to the whole-dataset path.
HEADER_LIMIT = 4 * 1024 * 1024
# Writeback of a stream is started once half of its pixel data is written (so the disk works while the
# rest arrives), then each time this much more has been written. Every fragment would be too often: each
# call costs ~0.15 ms, and a 512 KB instance paid 1 ms for no shorter fsync; a 6 MB one gains ~2 ms of
# fsync from a call every 2 MB (measured on this project's ext4 VM, 2026-12).
WRITEBACK_STEP = 2 * 1024 * 1024
WRITEBACK_FIRST_FRACTION = 0.5


class StreamingPut:
    """One C-STORE dataset, fed fragment by fragment (DUL thread), finished once (association thread)."""

    def __init__(self, store: Store, transfer_syntax: str, source: str, source_ae: str, expected: tuple[str, str] | None = None):
        self.store, self.source, self.source_ae = store, source, source_ae
        self.expected = expected  # (SOP Class UID, SOP Instance UID) the request announced
        self.tsyntax = UID(str(transfer_syntax))
        self.active = self.tsyntax.is_transfer_syntax and self.tsyntax != DeflatedExplicitVRLittleEndian
        self.started = time.perf_counter()
        self.prep: Prepared | None = None
        self.fd: int | None = None
        self.tmp: Path | None = None
        self.size = 0
        self.digest = ""  # sha256 of the file, computed while its fsync runs
        self.pixel_offset = 0  # where the pixel data element starts in the received dataset
        self.pixel_end: int | None = None  # where it ends, when its length is defined
        self.written_to = 0  # received bytes before this offset are in the file
        self.early_writeback = store.cfg.store.fsync and hasattr(os, "posix_fadvise")
        self.writeback_at = WRITEBACK_STEP  # file size at which writeback is next started
        self.durable: Future | None = None  # the fsync of the complete file, running on SYNCERS
        self.next_header_attempt = 0  # bytes received before the header is parsed again
        self._key = ("stream", id(self))
        # feed() runs in pynetdicom's reading thread, abort() and finish() in the association's: one at a
        # time, so a file descriptor is never closed under a write.
        self._lock = threading.Lock()

    # -- DUL thread ------------------------------------------------------------------------------------

    def feed(self, buffer: io.BytesIO) -> None:
        """New bytes were appended to ``buffer`` (the dataset so far)."""
        if not self.active:
            return
        with self._lock:
            self._feed(buffer)

    def _feed(self, buffer: io.BytesIO) -> None:
        if not self.active:
            return
        try:
            with buffer.getbuffer() as view:
                if self.prep is None:
                    self._try_header(view)
                else:
                    self._write_until(view, len(view))
        except Exception as exc:  # never into pynetdicom's reactor: the whole-dataset path decides
            self._step_aside(type(exc).__name__)

    def _try_header(self, view: memoryview) -> None:
        if len(view) < self.next_header_attempt:
            return
        split = parse_header(view, self.tsyntax)
        if split is None:
            if len(view) > HEADER_LIMIT:
                self._step_aside("header_too_large")
            # Each attempt parses from the start: trying again only once the bytes have doubled keeps the
            # whole header's cost linear in its size, however finely it is fragmented (a 0.49 MB header in
            # 4 KB fragments cost 18 s of CPU when every fragment re-parsed it).
            self.next_header_attempt = 2 * len(view)
            return
        self.pixel_offset = split.pixel_offset
        if split.pixel_length is not None:
            self.pixel_end = split.pixel_offset + split.pixel_header_length + split.pixel_length
            self.writeback_at = min(WRITEBACK_STEP, max(int(split.pixel_length * WRITEBACK_FIRST_FRACTION), 1))
        enc = split.instance
        enc.expected = self.expected
        enc.fragments = 1  # the fragments are counted when the message is complete
        enc.pixel_length = split.pixel_length
        try:
            self.prep = self.store.prepare(enc, synthetic=False, pixels_later=True)
        except StoreError as exc:
            self._step_aside(exc.reason)  # refused: the whole-dataset path answers and logs it, once
            return
        self.store.begin_inflight(self._key)
        self.tmp = self.store.new_tmp_path()
        self.fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        for part in self.prep.parts:  # File Meta Information and the de-identified header
            self._out(part)
        self.written_to = self.pixel_offset
        self._write_until(view, len(view))

    def _write_until(self, view: memoryview, end: int, past_pixels: bool = False) -> None:
        if self.pixel_end is not None and not past_pixels:
            end = min(end, self.pixel_end)  # what follows the pixel data is decided in _complete
        if end > self.written_to:
            self._out(view[self.written_to : end])
            self.written_to = end

    def _out(self, data) -> None:
        with memoryview(data) as view:
            chunk = view.cast("B")
            self.size += len(chunk)
            while len(chunk):
                n = os.write(self.fd, chunk)  # type: ignore[arg-type]
                chunk = chunk[n:]
        if self.early_writeback and self.size >= self.writeback_at:
            # Start writing what arrived to disk now (Linux begins writeback on DONTNEED), so the fsync
            # after the last fragment waits for the rest only.
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)  # type: ignore[arg-type]
            self.writeback_at = self.size + WRITEBACK_STEP

    def _step_aside(self, why: str) -> None:
        if self.active:
            log.debug("stream_fallback", reason=why)
        self.active = False
        self._discard()

    def _discard(self) -> None:
        if self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = None
        if self.tmp is not None:
            try:
                self.tmp.unlink()
            except FileNotFoundError:
                pass
            self.tmp = None
        self.store.end_inflight(self._key)

    # -- association thread ----------------------------------------------------------------------------

    def finish(self, data: memoryview) -> PutResult:
        """The whole dataset arrived: commit the streamed file, or store ``data`` the usual way."""
        with self._lock:
            return self._finish(data)

    def _finish(self, data: memoryview) -> PutResult:
        try:
            if self.active and self.prep is not None:
                try:
                    written = self._complete(data)
                except (EncodingError, StoreError, OSError) as exc:
                    written = None
                    self._step_aside(type(exc).__name__)
                if written is not None:
                    try:
                        return self.store.commit_streamed(self.prep, self.source, self.source_ae, written, self.digest, self.size,
                                                          self.started, self.durable)
                    except BaseException:
                        # The store removes what it did not publish; whatever raised, the file must not stay.
                        if self.durable is not None:
                            _wait_quietly(self.durable)
                        written.unlink(missing_ok=True)
                        raise
            self._discard()
            return self.store.put_bytes(data, source=self.source, source_ae=self.source_ae, transfer_syntax=self.tsyntax,
                                        expected=self.expected)
        finally:
            self.active = False
            self._discard()

    def _complete(self, data: memoryview) -> Path | None:
        """Check the whole message as put_bytes would, write what remains, fsync. None: step aside."""
        tail = split_pixel_data(data, self.tsyntax, self.pixel_offset)  # raises on truncation
        keep_trailing = self.store.deidentifier is None  # as put_bytes: kept as received without de-identification
        if not keep_trailing and set(tail.trailing_tags) - {DATASET_TRAILING_PADDING}:
            return None  # elements after the pixel data need de-identifying: the whole-dataset path
        end = len(data) if keep_trailing else len(data) - len(tail.trailing)
        if self.written_to > end:
            return None  # trailing padding was written (encapsulated): not what put_bytes stores
        tail.dataset = self.prep.dataset  # type: ignore[union-attr]
        self.store.validate_pixels(tail)
        self._write_until(data, end, past_pixels=True)
        fd, self.fd = self.fd, None
        if self.store.cfg.store.fsync:
            # The hash below and the commit's index row are made while this runs; the commit waits for
            # it before the rename.
            self.durable = SYNCERS.submit(fsync_and_close, fd)
        else:
            os.close(fd)  # type: ignore[arg-type]
        written, self.tmp = self.tmp, None
        # The file holds the encoded header and then the received bytes from the pixel data on, all
        # still in memory: hashing them now costs the association nothing it would not wait anyway.
        hasher = hashlib.sha256()
        for part in self.prep.parts:  # type: ignore[union-attr]
            hasher.update(part)
        hasher.update(data[self.pixel_offset : end])
        self.digest = hasher.hexdigest()
        return written

    def has_file(self) -> bool:
        """Its temporary file exists (or is being made): it is not finished or discarded yet."""
        return self.active or self.fd is not None or self.tmp is not None

    def abort(self) -> None:
        """The association ended before the message did: nothing of it may remain."""
        with self._lock:
            self.active = False
            self._discard()


class StreamingBuffer(io.BytesIO):
    """What pynetdicom collects a C-STORE dataset into: a BytesIO that also feeds a :class:`StreamingPut`.

    Beyond ``limit`` bytes it keeps nothing more (``oversize``), removes the stream's file and lets the
    message complete, so the C-STORE can be answered (0xA700) without holding the rest.
    """

    stream: StreamingPut | None = None
    limit: int = 2 << 30
    oversize = False

    def write(self, data) -> int:  # type: ignore[override]
        if self.oversize:
            return len(data)
        if self.tell() + len(data) > self.limit:
            log.warning("instance_refused", reason="too_large", limit=self.limit)
            self.oversize = True
            if self.stream is not None:
                self.stream.abort()
            self.seek(0)
            self.truncate()
            return len(data)
        n = super().write(data)
        if self.stream is not None:
            self.stream.feed(self)
        return n


class StreamingDIMSE(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, giving each incoming C-STORE-RQ a :class:`StreamingBuffer`.

    It remembers the streams whose files still exist: a message complete but never handed to our handler
    (the association aborted first) has one too, and :meth:`abort_streams` removes them all once the
    association's thread ends, whatever ended it.
    """

    store: Store | None = None
    streams: list[StreamingPut] | None = None
    max_dataset_bytes: int = 2 << 30

    def receive_primitive(self, primitive) -> None:  # type: ignore[override]
        super().receive_primitive(primitive)
        message = self.message  # None once a message completed; else the one still arriving
        if message is None:
            return
        if isinstance(message, C_STORE_RQ):
            if not isinstance(message.data_set, StreamingBuffer):
                self._install(message)
            return
        # Bounds on what pynetdicom collects in memory for any other message (frontdoor.py).
        data_set = message.data_set
        if message.encoded_command_set.tell() > COMMAND_SET_LIMIT or (data_set is not None and data_set.tell() > QUERY_DATASET_LIMIT):
            log.warning("message_refused", reason="command set or query dataset too large")
            self.message = None
            self.dul.event_queue.put("Evt19")  # invalid PDU: pynetdicom answers with an A-ABORT

    def _install(self, message: C_STORE_RQ) -> None:
        if message.context_id is None or message.data_set is None:
            return
        try:
            tsyntax = self.assoc._accepted_cx[message.context_id].transfer_syntax[0]
        except (KeyError, IndexError, AttributeError):
            return
        buffer = StreamingBuffer()
        buffer.limit = self.max_dataset_bytes
        if self.store is not None:
            command = message.command_set
            expected = (str(self.assoc._accepted_cx[message.context_id].abstract_syntax),
                        str(getattr(command, "AffectedSOPInstanceUID", "") or ""))
            buffer.stream = StreamingPut(self.store, tsyntax, "cstore", self.assoc.requestor.ae_title, expected)
            # Finished streams are dropped here, so a long association does not accumulate them.
            self.streams = [s for s in self.streams or () if s.has_file()] + [buffer.stream]
        buffer.write(message.data_set.getvalue())  # what came with the command, before the buffer
        message.data_set = buffer

    def abort_stream(self) -> None:
        """Remove the file of a message the association will never complete."""
        buffer = getattr(self.message, "data_set", None)
        if isinstance(buffer, StreamingBuffer) and buffer.stream is not None:
            buffer.stream.abort()

    def abort_streams(self) -> None:
        """The association is over: no stream's file may outlive it (call once no handler can run)."""
        for stream in self.streams or ():
            stream.abort()
        self.streams = []


def streaming(assoc, store: Store | None, max_dataset_bytes: int = 2 << 30):
    """Make a freshly created acceptor association stream its C-STOREs into ``store`` (None: collect them
    only) and bound what it collects; returns it."""
    if type(assoc.dimse) is DIMSEServiceProvider:
        assoc.dimse.__class__ = StreamingDIMSE
        assoc.dimse.store = store
        assoc.dimse.max_dataset_bytes = max_dataset_bytes
    return assoc
