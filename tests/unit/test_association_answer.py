"""Our answer to an A-ASSOCIATE-RQ is sent once pynetdicom's state machine has entered Sta3.

pynetdicom runs AE-6 (hand the request to the association thread), then moves to Sta3. An association
thread that answered inside that window saw Sta2 and sent nothing: the peer waited until the loop gave up
and aborted (1 of 8 associations started at once, `python -m bench scaleout`)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

from service.dicom.scp import awaiting_answer


def _dul(state: str) -> SimpleNamespace:
    return SimpleNamespace(state_machine=SimpleNamespace(current_state=state))


def test_the_window_between_ae6_and_sta3_is_waited_out():
    dul = _dul("Sta2")
    timer = threading.Timer(0.05, lambda: setattr(dul.state_machine, "current_state", "Sta3"))
    timer.start()
    try:
        assert awaiting_answer(dul) == "Sta3"
    finally:
        timer.cancel()


def test_a_peer_that_left_is_not_waited_for():
    for state in ("Sta1", "Sta13", "Sta6"):
        assert awaiting_answer(_dul(state), timeout=600) == state  # returns at once, or the test would hang


def test_the_wait_is_bounded():
    assert awaiting_answer(_dul("Sta2"), timeout=0.05) == "Sta2"
