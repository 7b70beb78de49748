"""A real PostgreSQL server for the tests (service/pg_server.py starts it as a plain process on 127.0.0.1).

One server serves a whole test module (or session); each test gets a database of its own
(:meth:`PostgresServer.new_database`); where PostgreSQL cannot run here, the test is skipped with the reason.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from service.pg_server import PostgresServer, find_binaries, why_not_available

__all__ = ["PostgresServer", "find_binaries", "started_or_skip", "why_not_available"]


def started_or_skip() -> Iterator[PostgresServer]:
    """A started server for a fixture to yield, stopped afterwards; the test is skipped, with the reason,
    where PostgreSQL cannot run here."""
    reason = why_not_available()
    if reason:
        pytest.skip(reason)
    server = PostgresServer().start()
    try:
        yield server
    finally:
        server.stop()
