"""Commands that need no PyTorch start without importing it (issue 17: they took 1.9 s when every
command loaded torch). Each runs as a user runs it, in a fresh interpreter, and reports what it imported."""

from __future__ import annotations

import json
import os
import pkgutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import service.cli
from service.archive.index import Index
from service.cli import COMMANDS, command_of
from service.home import Home
from tests.helpers import REPO, free_port, require_tool

# Runs the command line in this interpreter, then says on the last stderr line which heavy modules it loaded.
_PROBE = (
    "import json, sys\n"
    "from service.cli import main\n"
    "try:\n"
    "    rc = main(sys.argv[1:])\n"
    "except SystemExit as exc:\n"
    "    rc = exc.code\n"
    "print('LOADED ' + json.dumps([m for m in ('torch', 'grpc', 'highdicom') if m in sys.modules]), file=sys.stderr)\n"
    "sys.exit(rc)\n"
)


def _run(args: list[str], home: Path) -> tuple[int, str, list[str]]:
    env = {**os.environ, "SYNTHPACS_HOME": str(home), "SYNTHPACS_LOG_LEVEL": "warning", "SYNTHPACS_DEID_SECRET": "test-secret"}
    proc = subprocess.run([sys.executable, "-c", _PROBE, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("LOADED "), proc.stderr
    return proc.returncode, proc.stdout, json.loads(last[len("LOADED "):])


@pytest.fixture
def store_home(home: Path) -> Path:
    Index(Home.at(home).index_path).close()
    return home


@pytest.mark.parametrize("args", [["--version"], ["store", "stats"], ["store", "stats", "--json"], ["outbox", "ls"], ["config", "show"]])
def test_commands_without_pytorch_do_not_import_it(args, store_home):
    rc, out, loaded = _run(args, store_home)
    assert rc == 0, out
    assert "torch" not in loaded, f"`synthpacs {' '.join(args)}` imported torch"


@pytest.mark.integration
def test_echo_does_not_import_pytorch(store_home, tmp_path):
    storescp = require_tool("/usr/bin/storescp", "dcmtk")
    port = free_port()
    peer = subprocess.Popen([storescp, "-aet", "PEER", "-od", str(tmp_path), str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "storescp did not start listening"
                time.sleep(0.1)
        rc, out, loaded = _run(["echo", "127.0.0.1", str(port), "-aec", "PEER"], store_home)
    finally:
        peer.terminate()
        peer.wait(timeout=10)
    assert rc == 0 and "success" in out, out
    assert loaded == []


def test_every_command_module_is_listed():
    with_register = sorted(
        info.name for info in pkgutil.iter_modules(service.cli.__path__)
        if hasattr(__import__(f"service.cli.{info.name}", fromlist=["register"]), "register")
    )
    assert sorted(COMMANDS) == with_register


@pytest.mark.parametrize("argv, command", [
    (["store", "stats"], "store"),
    (["--home", "store", "outbox", "ls"], "outbox"),
    (["--log-level", "debug", "config", "show"], "config"),
    (["--version"], None),
    (["stroe", "stats"], None),
])
def test_the_command_is_found_past_the_shared_options(argv, command):
    assert command_of(argv) == command
