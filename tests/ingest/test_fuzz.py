"""A few hundred mutated PDU/DIMSE conversations against ``synthpacs scp`` (bench/fuzz_dicom.py).

The listener must come out of them serving: a C-ECHO succeeds, ``store verify`` is clean, ``store/.tmp``
is empty, its process never died, and its log holds no internal error nor a thread killed by an exception.
``make fuzz`` runs thousands (figures in bench/RESULTS.md).
"""

from __future__ import annotations

import pytest

from bench.fuzz_dicom import run

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_the_listener_survives_a_few_hundred_mutated_conversations(tmp_path):
    report = run(300, seed=14, workers=4, home=tmp_path / "home")
    print("\n".join(report.lines()))
    assert report.inputs == 300
    assert report.findings == []
