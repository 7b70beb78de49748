"""One real PostgreSQL server for every test of this folder (tests/pg.py), a fresh database per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.config import Config
from tests.helpers import make_config
from tests.pg import started_or_skip


@pytest.fixture(scope="session")
def pg_server():
    yield from started_or_skip()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.new_database()


@pytest.fixture
def pg_config(home: Path, pg_url: str) -> Config:
    return make_config(home, **{"store.index_url": pg_url})
