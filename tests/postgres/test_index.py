"""The store on a PostgreSQL index: round trip, migrations, ``store migrate``, errors, and two writers at once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import psycopg
import pytest
from pydicom.uid import generate_uid

from service.archive.backends import IndexIntegrityError, IndexUnavailable
from service.archive.index import Index
from service.archive.migrations import LATEST, SchemaTooNew
from service.archive.store import Store
from service.data.phantom import phantom_dataset
from tests.helpers import REPO, free_port, make_config


def _study(count: int, patient: str = "P1", **kwargs):
    study, series = generate_uid(), generate_uid()
    return [phantom_dataset(32, 32, seed=i, patient_id=patient, study_uid=study, series_uid=series, instance_number=i + 1, **kwargs)
            for i in range(count)]


def test_store_round_trip_on_postgresql(home, pg_config, pg_url):
    store = Store(pg_config)
    try:
        assert store.index.dialect.name == "postgresql"
        sent = _study(3) + _study(2, patient="P2")
        results = [store.put(ds, source="import") for ds in sent]
        assert [r.outcome for r in results] == ["stored"] * 5
        first = results[0].record
        got = store.index.get(first.sop_instance_uid)
        assert got == first  # every column comes back as written, types included
        assert store.put(_study(1)[0], source="import").outcome == "stored"
        again = store.put(sent[0], source="import")  # a re-send: de-identified to the very same bytes
        assert again.outcome == "identical"
        stats = store.index.stats()
        assert (stats["patients"], stats["studies"], stats["instances"]) == (2, 3, 6)
        assert isinstance(stats["bytes"], int) and stats["bytes"] == sum(r.size for r in store.index.instances())
        assert stats["by_modality"] == {"CR": 6}
        assert store.verify() == {"missing": [], "corrupt": [], "orphans": []}
        # The files are where the SQLite store would put them; no SQLite file and no host lock beside them.
        assert store.path_of(first).is_file()
        assert not (home / "store" / "index.sqlite").exists()
        assert not list((home / "store").glob(".writers/*"))
        # Temporary files in a folder of this host's own: another host's leftovers are not ours to clean.
        assert store.tmp.parent == home / "store" / ".tmp" and store.tmp.name.startswith("host-")
    finally:
        store.close()
    # Another process (here: another Index) reads the same rows.
    other = Index(url=pg_url)
    try:
        assert other.get(first.sop_instance_uid) == first
        assert len(list(other.instances("i.study_uid = ?", (first.study_uid,)))) == 3
    finally:
        other.close()


def test_migrations_are_versioned_applied_once_and_a_newer_schema_is_refused(pg_url):
    index = Index(url=pg_url)
    try:
        assert index.migration.before == 0 and index.migration.applied == tuple(range(1, LATEST + 1))
        steps = index.reader.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
        assert [r[0] for r in steps] == list(range(1, LATEST + 1))
    finally:
        index.close()
    again = Index(url=pg_url)
    assert again.migration.applied == () and again.migration.after == LATEST
    with again.write() as conn:
        conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(LATEST + 1),))
    again.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {LATEST + 1}, newer than this synthpacs"):
        Index(url=pg_url)


def test_replicas_starting_together_make_the_schema_once(pg_url):
    opened, errors = [], []

    def start():
        try:
            opened.append(Index(url=pg_url))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        assert errors == []
        assert sorted(i.migration.applied for i in opened) == [(), (), (), tuple(range(1, LATEST + 1))]
    finally:
        for i in opened:
            i.close()


def _cli(args, home, url, timeout=120):
    env = dict(os.environ, SYNTHPACS_HOME=str(home), SYNTHPACS_STORE_INDEX_URL=url)
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_store_migrate_command(home, pg_server, pg_url):
    # A password in the URL (the test server trusts loopback, so it is never asked for) is never printed.
    url = pg_url.replace("synthpacs@", "synthpacs:pw-never-printed@")
    first = _cli(["store", "migrate", "--json"], home, url)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["before"] == 0 and report["after"] == LATEST and report["applied"] == list(range(1, LATEST + 1))
    assert "pw-never-printed" not in first.stdout + first.stderr and ":********@" in report["index"]
    second = _cli(["store", "migrate"], home, url)
    assert second.returncode == 0 and "up to date" in second.stdout
    # And the other store commands read the PostgreSQL index too.
    stats = _cli(["store", "stats", "--json"], home, url)
    assert stats.returncode == 0, stats.stderr
    assert json.loads(stats.stdout)["instances"] == 0


def test_an_unreachable_server_is_a_clear_error(home):
    url = f"postgresql://synthpacs:pw-never-printed@127.0.0.1:{free_port()}/synthpacs"
    with pytest.raises(IndexUnavailable, match="cannot connect to the PostgreSQL index at postgresql://synthpacs:.*@127.0.0.1") as err:
        Index(url=url)
    assert "pw-never-printed" not in str(err.value)
    result = _cli(["store", "stats"], home, url)
    assert result.returncode == 2 and "cannot connect to the PostgreSQL index" in result.stderr
    assert "Traceback" not in result.stderr and "pw-never-printed" not in result.stderr


def test_a_conflicting_row_is_an_integrity_error(pg_config):
    store = Store(pg_config)
    try:
        record = store.put(_study(1)[0], source="import").record
        with pytest.raises(IndexIntegrityError):
            store.index.add(record)
        assert store.index.get(record.sop_instance_uid) == record  # the failed transaction changed nothing
    finally:
        store.close()


def test_two_stores_putting_the_same_instances_at_once_keep_one_copy(home, pg_config):
    """Two processes (here two Stores, each with its own connections) on one index and one folder."""
    a, b = Store(pg_config), Store(pg_config)
    datasets = _study(6)
    outcomes: dict[str, list[str]] = {"a": [], "b": []}

    def put_all(name, store):
        for ds in datasets:
            outcomes[name].append(store.put(ds, source="import").outcome)

    try:
        threads = [threading.Thread(target=put_all, args=(n, s)) for n, s in (("a", a), ("b", b))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        # Each instance: one "stored", the other "identical" (both senders get success), one row, one file.
        for n in range(len(datasets)):
            assert sorted([outcomes["a"][n], outcomes["b"][n]]) == ["identical", "stored"], outcomes
        assert a.index.stats()["instances"] == len(datasets)
        assert a.verify() == {"missing": [], "corrupt": [], "orphans": []}
    finally:
        a.close()
        b.close()


def test_sqlite_stays_the_default_beside_a_postgresql_server(home, pg_url):
    store = Store(make_config(home))
    try:
        assert store.index.dialect.name == "sqlite"
        store.put(_study(1)[0], source="import")
    finally:
        store.close()
    assert (home / "store" / "index.sqlite").is_file()
    with psycopg.connect(pg_url) as conn:  # nothing was written to the server
        assert conn.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()[0] == 0


def test_a_dataset_build_reads_one_snapshot_of_a_postgresql_index(pg_config):
    from service.data.build import build_dataset
    from tests.data.conftest import put_phantoms

    store = Store(pg_config)
    try:
        put_phantoms(store)
        result = build_dataset(pg_config, "hands", index=store.index, workers=1, progress=False)
        assert result.candidates == 5
        assert result.version.count + sum(result.skipped.values()) == 5
        # The snapshot's connection went back to the pool: the next reads and writes go on.
        assert store.put(_study(1)[0], source="import").outcome == "stored"
    finally:
        store.close()


def test_store_ls_lists_every_level_from_postgresql(home, pg_config, pg_url):
    store = Store(pg_config)
    try:
        records = [store.put(ds, source="import").record for ds in _study(3, modality="DX")]
    finally:
        store.close()
    for level, key, count in (("study", "study_uid", 1), ("series", "series_uid", 1), ("instance", "sop_instance_uid", 3)):
        result = _cli(["store", "ls", "--level", level, "--json"], home, pg_url)
        assert result.returncode == 0, result.stderr
        rows = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(rows) == count, rows
        if level == "study":
            assert rows[0]["modalities"] == "DX" and rows[0]["instances"] == 3 and rows[0]["bytes"] == sum(r.size for r in records)
        if level == "series":
            assert rows[0][key] == records[0].series_uid and rows[0]["modality"] == "DX"
