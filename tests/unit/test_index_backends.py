"""The pieces of the index backends that need no server: SQL translation, patterns, rows, URLs, migrations on SQLite."""

from __future__ import annotations

import sqlite3

import pytest

from service.archive.backends import POSTGRES, SQLITE, Row, format_sql
from service.archive.index import Index
from service.archive.migrations import LATEST, SchemaTooNew
from service.config import redact_url


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM t WHERE a = ? AND b IN (?, ?)", "SELECT * FROM t WHERE a = %s AND b IN (%s, %s)"),
    ("SELECT '?' , \"a?b\" FROM t WHERE c = ?", "SELECT '?' , \"a?b\" FROM t WHERE c = %s"),
    ("SELECT 'it''s ?' WHERE x LIKE '50%' AND y = ?", "SELECT 'it''s ?' WHERE x LIKE '50%%' AND y = %s"),
    ("SELECT 100 % 7", "SELECT 100 %% 7"),
])
def test_qmark_sql_becomes_psycopg_format_sql(sql, expected):
    assert format_sql(sql) == expected


@pytest.mark.parametrize("dicom, like", [
    ("KNEE*", "KNEE%"), ("K?EE", "K_EE"), ("50%_x*", "50\\%\\_x%"), ("a\\b*", "a\\\\b%"), ("[x]*", "[x]%"),
])
def test_dicom_wildcards_as_like_patterns(dicom, like):
    assert POSTGRES.wildcard_pattern(dicom) == like
    assert POSTGRES.wildcard("c") == "c LIKE ? ESCAPE '\\'"


def test_sqlite_keeps_its_own_spelling():
    assert SQLITE.wildcard_pattern("[x]*") == "[[]x]*" and SQLITE.wildcard("c") == "c GLOB ?"
    assert SQLITE.insert("t", ("a", "b"), "a", "ignore") == "INSERT OR IGNORE INTO t (a, b) VALUES (?, ?)"
    assert POSTGRES.insert("t", ("a", "b"), "a", "replace") == (
        "INSERT INTO t (a, b) VALUES (?, ?) ON CONFLICT (a) DO UPDATE SET b = EXCLUDED.b")
    assert SQLITE.lock_rows("o") == "" and POSTGRES.lock_rows("o") == " FOR UPDATE OF o SKIP LOCKED"


def test_rows_read_like_sqlite_rows():
    conn = sqlite3.connect(":memory:")
    conn.row_factory = sqlite3.Row
    reference = conn.execute("SELECT 1 AS a, 'x' AS b").fetchone()
    row = Row((1, "x"), {"a": 0, "b": 1})
    assert (row[0], row["b"], row.keys(), dict(row), tuple(row), len(row)) == (
        reference[0], reference["b"], reference.keys(), dict(reference), tuple(reference), len(reference))
    a, b = row
    assert (a, b) == (1, "x")


@pytest.mark.parametrize("url, shown", [
    ("postgresql://u:secret@db:5432/x", "postgresql://u:********@db:5432/x"),
    ("postgresql://u:secret@db/x?sslmode=require&password=secret", "postgresql://u:********@db/x"),
    ("postgresql://u@db/x", "postgresql://u@db/x"),
    ("postgresql://:secret@db/x", "postgresql://:********@db/x"),
])
def test_urls_are_shown_without_passwords(url, shown):
    assert redact_url(url) == shown


def test_an_sqlite_index_is_migrated_once_and_a_newer_one_is_refused(tmp_path):
    index = Index(tmp_path / "store" / "index.sqlite")
    assert index.migration.applied == tuple(range(1, LATEST + 1))
    index.close()
    index = Index(tmp_path / "store" / "index.sqlite")
    assert index.migration.applied == ()
    with index.write() as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(LATEST + 1),))
    index.close()
    with pytest.raises(SchemaTooNew, match="newer than this synthpacs"):
        Index(tmp_path / "store" / "index.sqlite")
    assert not list((tmp_path / "store" / ".writers").glob("*.lock"))  # the refused open left no lock


def test_store_migrate_on_the_sqlite_index(tmp_path):
    import subprocess
    import sys

    from tests.helpers import REPO

    env = {"SYNTHPACS_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"}
    run = lambda: subprocess.run([sys.executable, "-m", "service", "store", "migrate"], env=env, capture_output=True,  # noqa: E731
                                 text=True, timeout=120, cwd=REPO)
    first = run()
    assert first.returncode == 0, first.stderr
    assert f"schema version 0 -> {LATEST}" in first.stdout and "index.sqlite" in first.stdout
    second = run()
    assert second.returncode == 0 and f"schema version {LATEST}, up to date" in second.stdout
