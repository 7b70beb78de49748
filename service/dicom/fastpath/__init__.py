"""The receive fast path: the parts of pynetdicom that synthpacs' SCP replaces or tunes, and why.

pynetdicom is correct and general; on the receive side of a PACS link its generality costs more Python time
per instance than de-identifying and storing it (bench/RESULTS.md). Each module here replaces one piece,
only for associations our SCP accepts, and steps aside where its assumptions do not hold:

- :mod:`.direct` replaces, for associations carrying only Storage and Verification, pynetdicom's two
  polling reactors (DUL and association), its PDU objects and its pydicom decoding of command sets: one
  loop reads PDUs from the socket, parses C-STORE-RQ / C-ECHO-RQ itself and writes the responses
  (``dicom.direct_receive``). Relies on ``Association``'s state, ``dul.socket`` and the EVT_* triggers.
- :mod:`.streaming` replaces the "collect the whole dataset, then hand it over" step of
  ``DIMSEServiceProvider``: a C-STORE dataset is de-identified and written while its fragments arrive, so
  after the last byte only the fsync, rename and index row remain (``dicom.stream_writes``). Relies on
  ``DIMSEServiceProvider.receive_primitive`` and ``C_STORE_RQ``'s fragment handling.
- :mod:`.polling` replaces the fixed 1 ms sleeps of the DUL and association reactors by 0.1 ms while a PDU
  arrived recently (idle associations keep 1 ms). Relies on ``DULServiceProvider.run_reactor``,
  ``_run_loop_delay`` and the literal sleep in ``Association._run_reactor``; it checks these exist and
  leaves associations as pynetdicom made them otherwise.
- :mod:`.sockets` replaces ``AssociationSocket.recv``'s 4 KB ``recv`` loop with ``recv_into`` a buffer of
  the PDU's length, checked first against the front door's limits.
- :mod:`.frontdoor` extends ``ThreadedAssociationServer`` (its request handler, backlog and accept path)
  with admission control: pending connections counted apart from associations, a negotiation deadline,
  PDU length limits before anything is allocated.

The front door and the large reads always stay on: they are where the admission and PDU limits are
enforced. ``dicom.fast_path = false`` turns :mod:`.direct`, :mod:`.streaming` and :mod:`.polling` off
together (every association is then pynetdicom's own, behind the front door); it also goes off by itself
when the installed pynetdicom is outside :data:`PYNETDICOM_TESTED`, the range these internals were written
against, which ``pyproject.toml`` bounds the dependency to and ``tests/ingest/test_fastpath.py`` checks.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any

# The pynetdicom releases the modules of this package were written and tested against: >= first, < second.
PYNETDICOM_TESTED = ("3.0", "3.1")


def _release(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split(".")[:3]:
        digits = "".join(ch for ch in piece if ch.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def pynetdicom_version() -> str:
    return metadata.version("pynetdicom")


def pynetdicom_tested(version: str | None = None) -> bool:
    """Whether ``version`` (default: the installed pynetdicom) lies in :data:`PYNETDICOM_TESTED`."""
    release = _release(version if version is not None else pynetdicom_version())
    low, high = (_release(v) for v in PYNETDICOM_TESTED)
    return low <= release < high


def enabled(dicom_config: Any) -> bool:
    """Whether the SCP uses the fast path: ``dicom.fast_path`` and a pynetdicom release it was tested with."""
    return bool(dicom_config.fast_path) and pynetdicom_tested()
