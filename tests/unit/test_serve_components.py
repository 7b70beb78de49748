"""``synthpacs serve --components``: the parts named run, the others do not listen, a wrong name is refused.

Each case starts the real command on free loopback ports and looks at which of them accept connections
once the process has logged that it started.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from service.cli.serve import COMPONENTS, parse_components
from tests.helpers import REPO, free_port

LISTENERS = ("dicom", "grpc", "dicomweb", "metrics")  # the outbox listens on nothing


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _serve(home: Path, components: str | None, env_extra: dict | None = None):
    """Run serve until it logs "started"; returns (ports listening, components it started, metrics flag)."""
    ports = {name: free_port() for name in LISTENERS}
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPACS_")}
    env.update(SYNTHPACS_HOME=str(home), SYNTHPACS_DEID_SECRET="test-secret", SYNTHPACS_INFERENCE_PRELOAD="[]",
               SYNTHPACS_INFERENCE_RELOAD_INTERVAL_S="0", SYNTHPACS_METRICS_PORT=str(ports["metrics"]), **(env_extra or {}))
    argv = [sys.executable, "-m", "service", "serve", "--port", str(ports["dicom"]), "--grpc-port", str(ports["grpc"]),
            "--dicomweb-port", str(ports["dicomweb"])]
    if components is not None:
        argv += ["--components", components]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 120
        started = None
        while started is None:
            started = next((json.loads(l) for l in list(lines) if '"event": "started"' in l), None)
            assert proc.poll() is None or started is not None, "".join(lines)[-3000:]
            assert time.monotonic() < deadline, "serve did not log started: " + "".join(lines)[-3000:]
            time.sleep(0.1)
        listening = {name for name, port in ports.items() if _listening(port)}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
        reader.join(timeout=10)
    assert proc.returncode == 0, "".join(lines)[-3000:]
    return listening, started["components"]


def test_dicom_and_metrics_only(home):
    # metrics.enabled = false in the configuration: naming the part runs it all the same.
    listening, started = _serve(home, "metrics,dicom", {"SYNTHPACS_METRICS_ENABLED": "false"})
    assert listening == {"dicom", "metrics"}
    assert started == ["dicom", "metrics"]


def test_outbox_alone_listens_on_nothing(home):
    listening, started = _serve(home, "outbox")
    assert listening == set()
    assert started == ["outbox"]


@pytest.mark.slow
def test_grpc_and_dicomweb_without_the_scp(home):
    listening, started = _serve(home, "grpc,dicomweb")
    assert listening == {"grpc", "dicomweb"}
    assert started == ["grpc", "dicomweb"]


@pytest.mark.parametrize("value, fragment", [
    ("dicom,pacs", "unknown component 'pacs'; choose from dicom, outbox, grpc, dicomweb, metrics"),
    ("scp,gprc", "unknown components 'gprc', 'scp'"),
    (",", "name at least one component"),
    ("", "name at least one component"),
])
def test_a_wrong_component_is_refused_before_anything_starts(home, value, fragment):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPACS_")}
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--home", str(home), "--port", str(port), "--components", value],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "argument --components" in result.stderr and fragment in result.stderr, result.stderr
    assert not (home / "store").exists()  # refused before the home folder was touched


def test_parse_components_keeps_the_start_order_and_drops_repeats():
    assert parse_components(" GRPC , dicom,grpc ") == ("dicom", "grpc")
    assert parse_components(",".join(reversed(COMPONENTS))) == COMPONENTS
