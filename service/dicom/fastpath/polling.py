"""Shorter poll intervals for pynetdicom's acceptor associations while they are busy.

pynetdicom runs each association as two polling loops: the DUL reactor (socket and state machine) sleeps
``_run_loop_delay`` = 1 ms whenever a pass found nothing to do, and the association reactor (which hands
complete DIMSE messages to our handlers) sleeps 1 ms on every pass. A C-STORE round trip crosses both
loops twice, so on loopback those sleeps are a large share of an instance's time: a bare pynetdicom
receiver of 512 x 512 16-bit instances measured ~280 img/s with them and ~400 img/s with 0.1 ms
(bench/RESULTS.md, ARCHITECTURE.md).

Both loops poll every :data:`FAST_POLL_S` while a PDU arrived within the last :data:`BUSY_WINDOW_S`, and
fall back to pynetdicom's own 1 ms when the association is idle, so an idle association costs no more CPU
than it did. Nothing in pynetdicom is changed globally: only associations accepted by our SCP get the
two subclasses below. The association loop's sleep is a literal in its code, so that one method is
rebound with a ``time`` whose ``sleep`` asks the association thread how busy it is. If a pynetdicom
release changes these internals, :func:`responsive` leaves associations exactly as pynetdicom made them.
"""

from __future__ import annotations

import threading
import time
import types

import pynetdicom
import pynetdicom.association as _association_module
from pynetdicom.association import Association
from pynetdicom.dul import DULServiceProvider
from pynetdicom.fsm import InvalidEventError, StateMachine

from service.logs import get_logger, where

log = get_logger("scp")

FAST_POLL_S = 0.0001
HANDED_OFF_POLL_S = 0.005
BUSY_WINDOW_S = 0.5
_PYNETDICOM_DEFAULT_S = 0.001


def _busy(dul: DULServiceProvider) -> bool:
    started = getattr(getattr(dul, "_idle_timer", None), "_start_time", None)
    return started is not None and time.time() - started < BUSY_WINDOW_S


class ResponsiveDUL(DULServiceProvider):
    """The DUL reactor; its idle sleep is short while PDUs keep arriving (the idle timer restarts on each).

    ``handed_off``: :mod:`service.dicom.fastpath.direct` reads the socket itself once the association is
    established; the reactor then only runs the state machine for what is sent through it (the
    A-ASSOCIATE-AC) and for the socket's closing, and idles at :data:`HANDED_OFF_POLL_S`.
    """

    handed_off = False

    @property  # a data descriptor, so it wins over the attribute pynetdicom sets in __init__
    def _run_loop_delay(self) -> float:  # type: ignore[override]
        if self.handed_off:
            # Quick until the A-ASSOCIATE-AC is out (Sta6), then idle: the socket is not ours to read.
            return HANDED_OFF_POLL_S if self.state_machine.current_state == "Sta6" else FAST_POLL_S
        return FAST_POLL_S if _busy(self) else _PYNETDICOM_DEFAULT_S

    def _is_transport_event(self) -> bool:
        if self.handed_off:
            return False
        return super()._is_transport_event()

    @_run_loop_delay.setter
    def _run_loop_delay(self, _value: float) -> None:
        pass


class TolerantStateMachine(StateMachine):
    """pynetdicom's DUL state machine, dropping an event that its current state does not allow.

    A peer that sends its P-DATA before our A-ASSOCIATE-AC, or aborts meanwhile, moves the machine to
    Sta13 or Sta1 while the association thread is still accepting; pynetdicom then raises
    InvalidEventError for our A-ASSOCIATE-AC (Evt7) inside the DUL's thread and that thread dies (the
    listener fuzzer found it: bench/fuzz_dicom.py). The peer has already ended the association, so the
    event is dropped and the association ends as aborted.
    """

    def do_action(self, event: str) -> None:
        try:
            super().do_action(event)
        except InvalidEventError:
            pass
        except Exception as exc:
            log.warning("dul_action_failed", event=event, state=self.current_state, error=type(exc).__name__, where=where(exc))
            # An action failed on a PDU it could not convert (an A-ASSOCIATE-RQ whose presentation context
            # ID is even, ...). pynetdicom has logged it and stops the DUL's reactor, which would leave the
            # connection open and the association thread waiting for its ACSE timeout: A-ABORT
            # (service-provider, PS3.8 Table 9-26), close, and let the association thread end now.
            dul = self.dul
            try:
                dul.socket.send(b"\x07\x00\x00\x00\x00\x04\x00\x00\x02\x00")  # type: ignore[union-attr]
            except Exception:
                pass
            try:
                dul.socket.close()  # type: ignore[union-attr]
            except Exception:
                pass
            if not dul.assoc.is_established:
                dul.to_user_queue.put(None)  # what the acceptor's wait for an A-ASSOCIATE-RQ returns on a timeout


class _AdaptiveTime:
    """Stands in for the ``time`` module inside the association reactor; only ``sleep`` differs."""

    def __getattr__(self, name: str):
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        thread = threading.current_thread()
        if seconds == _PYNETDICOM_DEFAULT_S and isinstance(thread, Association) and _busy(thread.dul):
            seconds = FAST_POLL_S
        time.sleep(seconds)


def _rebind_with_adaptive_time(function: types.FunctionType) -> types.FunctionType | None:
    if "time" not in function.__code__.co_names:
        return None
    namespace = dict(vars(_association_module))
    namespace["time"] = _AdaptiveTime()
    rebound = types.FunctionType(function.__code__, namespace, function.__name__, function.__defaults__, function.__closure__)
    rebound.__doc__ = function.__doc__
    return rebound


class ResponsiveAssociation(Association):
    """An acceptor association whose reactor polls every 0.1 ms while busy."""


_reactor = _rebind_with_adaptive_time(Association._run_reactor)  # type: ignore[arg-type]
SUPPORTED = _reactor is not None and pynetdicom.__version__.startswith(("2.", "3."))
if SUPPORTED:
    ResponsiveAssociation._run_reactor = _reactor  # type: ignore[method-assign]


def responsive(assoc: Association) -> Association:
    """Make a freshly created acceptor association responsive (before it starts); returns it."""
    if SUPPORTED and type(assoc) is Association and type(assoc.dul) is DULServiceProvider:
        assoc.__class__ = ResponsiveAssociation
        assoc.dul.__class__ = ResponsiveDUL
        if type(assoc.dul.state_machine) is StateMachine:
            assoc.dul.state_machine.__class__ = TolerantStateMachine
    return assoc
