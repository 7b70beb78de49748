"""A SQLite index is written from one host only (service/archive/writer_lock.py).

One machine cannot be two hosts: ``SYNTHPACS_WRITER_HOST`` (or Index's ``host``) plays the second one. The
lock files a test plants are the ones another host's synthpacs would have written on the shared volume.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from service.archive.index import Index
from service.archive.writer_lock import HOST_ENV, LOCK_DIR, WriterLock, WriterLockError, current_host
from service.home import Home
from tests.helpers import REPO, free_port

HERE = "node-a"
OTHER = "node-b"


def _locks(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((store / LOCK_DIR).glob("*.lock"))]


def _plant(store: Path, host: str, pid: int, name: str = "planted", **extra) -> Path:
    folder = store / LOCK_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.lock"
    path.write_text(json.dumps({"host": host, "pid": pid, "started_at": "2026-12-05T08:00:00+00:00", **extra}))
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _assert_names_other_host(message: str) -> None:
    assert repr(OTHER) in message and repr(HERE) in message
    assert "PostgreSQL" in message and "store.index_url" in message
    assert "network filesystem" in message and "corrupts" in message


# -- the lock itself, through Index ------------------------------------------------------------------


def test_another_hosts_lock_refuses_the_index_and_leaves_nothing_of_ours(tmp_path):
    store = tmp_path / "store"
    planted = _plant(store, OTHER, 4242)
    with pytest.raises(WriterLockError) as err:
        Index(store / "index.sqlite", host=HERE)
    _assert_names_other_host(str(err.value))
    assert str(planted) in str(err.value)  # the file to delete once that host is really gone
    assert not (store / "index.sqlite").exists()  # refused before SQLite made or touched the file
    assert [p.name for p in (store / LOCK_DIR).iterdir()] == ["planted.lock"]


def test_a_live_lock_of_the_same_host_is_shared(tmp_path):
    store = tmp_path / "store"
    planted = _plant(store, HERE, os.getpid())  # this test process: alive
    index = Index(store / "index.sqlite", host=HERE)
    try:
        assert planted.exists()
        assert sorted(lock["pid"] for lock in _locks(store)) == [os.getpid(), os.getpid()]
        second = Index(store / "index.sqlite", host=HERE)  # another opening in this host, e.g. the CLI
        second.close()
    finally:
        index.close()
    assert [lock["host"] for lock in _locks(store)] == [HERE]  # only the planted one is left


def test_a_dead_process_lock_of_the_same_host_is_taken_over(tmp_path):
    store = tmp_path / "store"
    planted = _plant(store, HERE, _dead_pid())
    index = Index(store / "index.sqlite", host=HERE)
    try:
        assert not planted.exists()
        assert [(lock["host"], lock["pid"]) for lock in _locks(store)] == [(HERE, os.getpid())]
    finally:
        index.close()


def test_a_reused_pid_does_not_keep_a_stale_lock_alive(tmp_path):
    store = tmp_path / "store"
    # Our own pid, but a process start time that is not ours: the writer ended and its pid came back.
    planted = _plant(store, HERE, os.getpid(), start_ticks=1)
    lock = WriterLock.acquire(store, host=HERE)
    try:
        assert not planted.exists()
    finally:
        lock.release()


def test_close_removes_the_lock(tmp_path):
    store = tmp_path / "store"
    index = Index(store / "index.sqlite", host=HERE)
    assert len(_locks(store)) == 1
    index.close()
    assert _locks(store) == []


@pytest.mark.parametrize("text, why", [
    ("{not json", "is not the JSON"),
    ("[1, 2]", "is not the JSON"),
    (json.dumps({"host": "", "pid": 12}), "names no host and pid"),
    (json.dumps({"host": OTHER, "pid": "12"}), "names no host and pid"),
    (json.dumps({"host": OTHER, "pid": 12, "start_ticks": "x"}), "start_ticks"),
    (b"\xff\xfe\x00", "is not the JSON"),
])
def test_a_corrupt_lock_is_a_clear_error(tmp_path, text, why):
    store = tmp_path / "store"
    folder = store / LOCK_DIR
    folder.mkdir(parents=True)
    bad = folder / "broken.lock"
    bad.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(WriterLockError) as err:
        Index(store / "index.sqlite", host=HERE)
    message = str(err.value)
    assert str(bad) in message and why in message and "delete that file" in message
    assert bad.exists() and [p.name for p in folder.glob("*.lock")] == ["broken.lock"]  # nothing lost, nothing of ours left


def test_a_lock_folder_that_cannot_be_made_is_a_clear_error(tmp_path):
    store = tmp_path / "store"
    store.mkdir()
    (store / LOCK_DIR).write_text("a file where the folder goes")
    with pytest.raises(WriterLockError, match="writer lock folder"):
        Index(store / "index.sqlite", host=HERE)


def test_the_host_name_is_the_machines_unless_a_test_plays_another(monkeypatch):
    monkeypatch.delenv(HOST_ENV, raising=False)
    assert current_host() == socket.gethostname()
    monkeypatch.setenv(HOST_ENV, OTHER)
    assert current_host() == OTHER


def test_the_store_ignores_the_lock_folder(tmp_path, config):
    """The lock folder sits in the store folder; a recovery scan must not take it for a study."""
    from service.archive.store import Store

    home = Home.at(config.home_path)
    _plant(home.store_dir, current_host(), os.getpid())
    store = Store(config, home)
    try:
        assert store.recover() == 0
    finally:
        store.close()


# -- commands, as a user starts them -----------------------------------------------------------------


def _env(home: Path, host: str) -> dict:
    return {**os.environ, "SYNTHPACS_HOME": str(home), HOST_ENV: host, "SYNTHPACS_DEID_SECRET": "test-secret",
            "SYNTHPACS_METRICS_ENABLED": "false", "SYNTHPACS_LOG_LEVEL": "warning"}


def _store_with_index(home: Path) -> Path:
    """A home whose index exists (made from another host that has stopped since), as the commands expect."""
    store = Home.at(home).store_dir
    Index(store / "index.sqlite", host=OTHER).close()
    return store


def _synthpacs(args: list[str], home: Path, host: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO, env=_env(home, host),
                          capture_output=True, text=True, timeout=180)


@pytest.mark.parametrize("args", [
    ["store", "stats"],
    ["outbox", "ls"],
    ["scp", "--port", "0"],
    ["serve", "--port", "0", "--grpc-port", "0", "--dicomweb-port", "0"],
    ["inference", "--grpc-port", "0"],
], ids=lambda a: a[0])
def test_commands_refuse_to_start_beside_another_hosts_lock(home, args):
    store = _store_with_index(home)
    _plant(store, OTHER, 4242)
    result = _synthpacs(args, home, HERE)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("synthpacs: error: "), result.stderr
    _assert_names_other_host(result.stderr)
    assert [lock["host"] for lock in _locks(store)] == [OTHER]


def test_a_command_starts_beside_a_live_lock_of_its_host(home):
    store = _store_with_index(home)
    planted = _plant(store, HERE, os.getpid())
    result = _synthpacs(["store", "stats"], home, HERE)
    assert result.returncode == 0, result.stderr
    assert planted.exists() and [lock["pid"] for lock in _locks(store)] == [os.getpid()]


def test_scp_holds_the_lock_while_it_runs_and_removes_it_on_sigterm(home):
    store = _store_with_index(home)
    stale = _plant(store, HERE, _dead_pid(), name="stale")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "service", "scp", "--port", str(port)], cwd=REPO, env=_env(home, HERE),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read()
                assert time.monotonic() < deadline, "synthpacs scp did not start listening"
                time.sleep(0.2)
        held = _locks(store)
        assert not stale.exists()  # taken over
        assert held and all(lock["host"] == HERE and lock["pid"] == proc.pid for lock in held)
        # While it runs, another host is refused.
        refused = _synthpacs(["store", "stats"], home, OTHER)
        assert refused.returncode == 2 and repr(HERE) in refused.stderr and "PostgreSQL" in refused.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0
    assert _locks(store) == []
    assert _synthpacs(["store", "stats"], home, OTHER).returncode == 0  # after a clean stop the other host may
