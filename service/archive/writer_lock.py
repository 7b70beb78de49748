"""One host per SQLite index: lock files in the store that refuse a second host.

SQLite's WAL mode coordinates the processes using a database through a shared-memory file
(``index.sqlite-shm``) that every process maps; processes on one host share those pages through the
operating system, processes on different hosts (NFS, CephFS, any ReadWriteMany volume) do not. SQLite
documents that WAL does not work over a network filesystem (https://www.sqlite.org/wal.html: "all processes
using a database must be on the same host computer"): writers on two hosts corrupt the index, which is the
record of what the hospital sent. Several processes on one host (``scp`` beside ``store ls``, a dataset
build beside ``serve``) are safe and stay allowed.

Every process that opens the index writes a lock file of its own into ``<store>/.writers/`` (its host name,
pid and start time, written whole by rename), then reads the others':

- another host's lock: refused, naming that host. Whether its process still runs cannot be seen from here,
  so it counts as live until its operator deletes the file (the message names it).
- this host, a live process: fine.
- this host, a process that is gone (a crash, SIGKILL, a power cut): stale, deleted.

Announce first, check second: two hosts starting at once each see the other's file and both refuse;
they never both start. Each process (each opening of the index, in fact) has a file of its own, so one
process's clean exit never unprotects another's. The lock is released by :meth:`WriterLock.release`
(``Index.close``, ``Runtime.stop``) and, failing that, at interpreter exit.

A PostgreSQL index for several hosts is planned (issue 20).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

LOCK_DIR = ".writers"
# Stands in for the host name; the tests use it to play a second host, which one machine cannot be.
HOST_ENV = "SYNTHPACS_WRITER_HOST"


class WriterLockError(Exception):
    """The index may not be opened here; the message says why and what to do."""


def current_host() -> str:
    """This process's host name (``$SYNTHPACS_WRITER_HOST`` where set: tests only)."""
    return os.environ.get(HOST_ENV) or socket.gethostname()


@dataclass(frozen=True)
class LockInfo:
    """What one lock file says."""

    path: Path
    host: str
    pid: int
    started_at: str
    # The process's start time in clock ticks since boot (/proc/<pid>/stat field 22), where known: a pid
    # reused by another process after a crash does not keep a stale lock alive.
    start_ticks: int | None


def _process_start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: count fields after its ")".
    try:
        return int(stat.rsplit(")", 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def _alive(pid: int, start_ticks: int | None) -> bool:
    """Whether ``pid`` on this host is still the process that wrote the lock."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # someone else's process: it exists
    if start_ticks is not None:
        now = _process_start_ticks(pid)
        if now is not None and now != start_ticks:
            return False
    return True


def _read(path: Path) -> LockInfo | None:
    """The lock at ``path``; None when it vanished meanwhile (its owner released it)."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _unreadable(path, f"cannot be read: {exc.strerror or exc}") from None
    try:
        data = json.loads(text.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _unreadable(path, "is not the JSON a synthpacs process writes") from None
    if not isinstance(data, dict):
        raise _unreadable(path, "is not the JSON a synthpacs process writes")
    host, pid, ticks = data.get("host"), data.get("pid"), data.get("start_ticks")
    if not isinstance(host, str) or not host or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        raise _unreadable(path, "names no host and pid")
    if ticks is not None and (not isinstance(ticks, int) or isinstance(ticks, bool)):
        raise _unreadable(path, "has a start_ticks that is not a number")
    return LockInfo(path, host, pid, str(data.get("started_at", "")), ticks)


def _unreadable(path: Path, why: str) -> WriterLockError:
    return WriterLockError(
        f"writer lock {path} {why}, so whether another host writes this store's SQLite index cannot be told; "
        "nothing was opened. If no synthpacs process on any other host uses this home folder, delete that file "
        "and start again."
    )


class WriterLock:
    """This process's lock file in ``<store>/.writers`` (see the module docstring)."""

    def __init__(self, path: Path, host: str):
        self.path = path
        self.host = host
        self.pid = os.getpid()
        self._released = False

    @classmethod
    def acquire(cls, store_dir: str | os.PathLike[str], host: str | None = None) -> "WriterLock":
        """Announce this process as a writer of the index in ``store_dir``, or raise WriterLockError."""
        host = host or current_host()
        folder = Path(store_dir) / LOCK_DIR
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WriterLockError(f"cannot make the writer lock folder {folder}: {exc.strerror or exc}") from None
        pid = os.getpid()
        safe_host = re.sub(r"[^A-Za-z0-9._-]", "_", host)[:64]
        name = f"{safe_host}.{pid}.{secrets.token_hex(4)}.lock"
        lock = cls(folder / name, host)
        lock._write()
        try:
            lock._check_others()
        except BaseException:
            lock.release()
            raise
        atexit.register(lock.release)
        return lock

    def _write(self) -> None:
        record = {
            "host": self.host,
            "pid": self.pid,
            "started_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "start_ticks": _process_start_ticks(self.pid),
        }
        # Written whole or not at all: a reader on another host never sees half a lock.
        tmp = self.path.with_name(f".{self.path.name}.{time.monotonic_ns()}.tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(record, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise WriterLockError(f"cannot write the writer lock {self.path}: {exc.strerror or exc}") from None

    def _check_others(self) -> None:
        for path in sorted(self.path.parent.glob("*.lock")):
            if path == self.path:
                continue
            info = _read(path)
            if info is None:
                continue
            if info.host != self.host:
                raise WriterLockError(
                    f"this store's SQLite index ({self.path.parent.parent / 'index.sqlite'}) is in use by host "
                    f"{info.host!r} (pid {info.pid}, since {info.started_at or 'an unknown time'}), and this is host "
                    f"{self.host!r}: refusing to start. A SQLite index must be written from one host only: SQLite over "
                    "a network filesystem (NFS, CephFS, a ReadWriteMany volume) corrupts it. Run this on "
                    f"{info.host!r} or stop synthpacs there; an index shared by several hosts needs PostgreSQL "
                    f"(set store.index_url = \"postgresql://...\"). If {info.host!r} no longer runs synthpacs on this home folder, delete "
                    f"{path} and start again."
                )
            if not _alive(info.pid, info.start_ticks):
                # A process of this host that ended without releasing its lock: take its place.
                path.unlink(missing_ok=True)

    def release(self) -> None:
        """Delete this process's lock file (idempotent; a forked child never deletes its parent's)."""
        if self._released or os.getpid() != self.pid:
            return
        self._released = True
        self.path.unlink(missing_ok=True)
        atexit.unregister(self.release)
