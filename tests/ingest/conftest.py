"""Logging for the ingest tests: to whatever stdout is at the moment a line is written.

A command run in-process by an earlier test can leave structlog writing to that test's captured stream,
closed since; each test here starts from a logger that follows ``sys.stdout``.
"""

from __future__ import annotations

import sys

import pytest

from service.logs import configure


class _Stdout:
    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


@pytest.fixture(autouse=True)
def _live_log_stream():
    configure("info", "json", stream=_Stdout())
    yield


@pytest.fixture
def no_temp_left(home):
    """For adversarial tests: once the test (and its server) is done, ``store/.tmp`` must be empty."""
    yield
    from tests.ingest.util import assert_no_temp_files

    assert_no_temp_files(home)
