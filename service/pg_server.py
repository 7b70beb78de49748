"""PostgreSQL as a plain loopback process: the server of the PostgreSQL index tests and of the scale-out
benchmark (bench/bench_scaleout.py). Debian's binaries, nothing of the machine's own PostgreSQL (if any).

``initdb`` makes a cluster in a temporary folder and ``postgres`` serves it on a free loopback port with
its own socket folder. PostgreSQL refuses to run as root: under root (CI runs as root on Debian) the
server runs as the ``postgres`` user that the Debian package creates; :func:`why_not_available` says why
no server can run where one cannot. Each user of the server makes a database of its own
(:meth:`PostgresServer.new_database`). fsync stays on: the durability contract is what is measured and tested.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# The Debian layout (postgresql-NN), newest first, then PATH.
_BIN_GLOB = "/usr/lib/postgresql/*/bin"


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_binaries() -> Path | None:
    """The folder holding initdb and postgres, or None."""
    candidates = sorted(glob.glob(_BIN_GLOB), key=lambda p: _major(p), reverse=True)
    for folder in candidates:
        if Path(folder, "initdb").is_file() and Path(folder, "postgres").is_file():
            return Path(folder)
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if initdb and postgres and Path(initdb).parent == Path(postgres).parent:
        return Path(initdb).parent
    return None


def _major(folder: str) -> int:
    name = Path(folder).parent.name
    return int(name) if name.isdigit() else 0


def why_not_available() -> str:
    """Why no server can run here ("" when one can)."""
    if find_binaries() is None:
        return ("PostgreSQL's initdb and postgres were not found in /usr/lib/postgresql/*/bin or on PATH "
                "(Debian: apt-get install postgresql)")
    if os.geteuid() == 0 and _run_as_user() is None:
        return "PostgreSQL refuses to run as root and there is no 'postgres' user to run it as (Debian's postgresql package makes one)"
    return ""


def _run_as_user() -> pwd.struct_passwd | None:
    """Under root, the unprivileged user that runs the server; None when not root or no such user."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


class PostgresServer:
    """One PostgreSQL cluster in a temporary folder, listening on 127.0.0.1:<port> only."""

    def __init__(self) -> None:
        reason = why_not_available()
        if reason:
            raise RuntimeError(reason)
        self.bin = find_binaries()
        assert self.bin is not None
        self.user = _run_as_user()
        # Not under a caller's temporary folder (pytest's tmp_path is private to root), and the server's user must reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="synthpacs-pg-"))
        self.data = self.dir / "data"
        self.sockets = self.dir / "sockets"
        self.sockets.mkdir()
        if self.user is not None:
            for p in (self.dir, self.sockets):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self._databases = 0

    def _as_user(self, argv: list[str]) -> list[str]:
        if self.user is None:
            return argv
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups", *argv]

    def start(self) -> "PostgresServer":
        """Make the cluster (the first time) and start the server; again after :meth:`stop_server`."""
        if not self.data.exists():
            subprocess.run(
                self._as_user([str(self.bin / "initdb"), "-D", str(self.data), "-U", "synthpacs", "--auth=trust",
                               "--encoding=UTF8", "--locale=C", "--no-sync"]),
                check=True, capture_output=True, cwd=self.dir, timeout=120,
            )
        log = open(self.dir / "postgres.log", "ab")
        # fsync stays on: the tests check the durability contract, not a shortcut of it.
        self.proc = subprocess.Popen(
            self._as_user([str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1", "-p", str(self.port),
                           "-k", str(self.sockets), "-c", "max_connections=200", "-c", "shared_buffers=32MB"]),
            stdout=log, stderr=subprocess.STDOUT, cwd=self.dir, start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited at start: {self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    pass
                if self._ready():
                    return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not start within 60 s: {self.log_tail()}")

    def _ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.url("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def url(self, database: str) -> str:
        return f"postgresql://synthpacs@127.0.0.1:{self.port}/{database}"

    def new_database(self, prefix: str = "t") -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        self._databases += 1
        name = f"{prefix}_{os.getpid()}_{self._databases}"
        with psycopg.connect(self.url("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_tail(self, n: int = 2000) -> str:
        try:
            return (self.dir / "postgres.log").read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server and remove its cluster (SIGQUIT, "immediate": no checkpoint of a cluster we delete)."""
        self.stop_server(signal.SIGQUIT)
        shutil.rmtree(self.dir, ignore_errors=True)

    def stop_server(self, how: int = signal.SIGINT) -> None:
        """Stop the server and keep its cluster (an outage; :meth:`start` brings it back with its data).
        SIGINT is PostgreSQL's "fast" shutdown: it ends the sessions, checkpoints and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(how)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
