"""The DICOMweb service as users start it (`synthpacs dicomweb`, `synthpacs serve`), its capabilities and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from xml.etree import ElementTree as ET

import pytest
import requests
from prometheus_client import REGISTRY

from service.data.phantom import phantom_dataset
from tests.dicomweb.conftest import Service, part10
from tests.helpers import REPO, free_port, make_config

pytestmark = pytest.mark.integration


def test_capabilities_statement_wadl_and_json(home):
    svc = Service(make_config(home))
    try:
        r = requests.options(svc.url)
        assert r.status_code == 200 and r.headers["content-type"].startswith("application/vnd.sun.wadl+xml")
        root = ET.fromstring(r.content)
        paths = {el.get("path") for el in root.iter("{http://wadl.dev.java.net/2009/02}resource")}
        assert {"studies", "studies/{study}/series/{series}/instances/{instance}/frames/{frames}"} <= paths
        j = requests.options(svc.url + "/", headers={"Accept": "application/json"}).json()
        assert {"QIDO-RS", "WADO-RS", "STOW-RS"} == {r["service"] for r in j["resources"]}
        assert requests.options(svc.url, headers={"Accept": "image/png"}).status_code == 406
    finally:
        svc.close()


def _sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_route_template_and_code(home):
    svc = Service(make_config(home))
    try:
        before_ok = _sample("synthpacs_dicomweb_requests_total", route="/studies", code="200")
        before_404 = _sample("synthpacs_dicomweb_requests_total", route="/studies/{study}", code="404")
        before_n = _sample("synthpacs_dicomweb_request_seconds_count", route="/studies")
        requests.get(svc.url + "/studies")
        requests.get(svc.url + "/studies/1.2.3.4")
        assert _sample("synthpacs_dicomweb_requests_total", route="/studies", code="200") == before_ok + 1
        assert _sample("synthpacs_dicomweb_requests_total", route="/studies/{study}", code="404") == before_404 + 1
        assert _sample("synthpacs_dicomweb_request_seconds_count", route="/studies") == before_n + 1
    finally:
        svc.close()


def _start(args: list[str], home, port: int, extra_env: dict | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPACS_")}
    env.update(SYNTHPACS_METRICS_ENABLED="false", SYNTHPACS_DEID_SECRET="test-secret", **(extra_env or {}))
    return subprocess.Popen([sys.executable, "-m", "service", *args, "--home", str(home), "--dicomweb-port", str(port)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(url: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(proc.stdout.read()[-3000:])
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.3)
    raise AssertionError("the DICOMweb service did not answer in time")


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.slow
def test_synthpacs_dicomweb_alone(home):
    port = free_port()
    proc = _start(["dicomweb"], home, port)
    url = f"http://127.0.0.1:{port}/dicom-web"
    try:
        _wait(url + "/studies", proc)
        ds = phantom_dataset(32, 32, seed=31)
        body = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + part10(ds) + b"\r\n--b--\r\n"
        r = requests.post(url + "/studies", data=body, headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'})
        assert r.status_code == 200
        assert len(requests.get(url + "/studies").json()) == 1
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out[-3000:]
    assert '"event": "dicomweb_stopped"' in out


@pytest.mark.slow
def test_synthpacs_serve_starts_dicomweb_beside_the_scp(home):
    port = free_port()
    proc = _start(["serve", "--port", "0", "--grpc-port", "0"], home, port,
                  {"SYNTHPACS_INFERENCE_PRELOAD": "[]"})
    try:
        _wait(f"http://127.0.0.1:{port}/dicom-web/studies", proc)
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out[-3000:]
    started = [json.loads(line) for line in out.splitlines() if '"event": "started"' in line]
    assert started and "dicomweb" in started[0]["components"]


def test_the_listening_socket_is_tcp_so_responses_are_not_held_by_nagle(tmp_path):
    """asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP, and accepted sockets inherit the
    listener's: with proto 0 every response after the first on a kept-alive connection waited ~40 ms for
    the client's delayed ACK (bench/bench_dicomweb.py found it)."""
    import socket

    from tests.dicomweb.conftest import Service
    from tests.helpers import make_config

    svc = Service(make_config(tmp_path))
    try:
        assert svc.server._socket.proto == socket.IPPROTO_TCP
        with requests.Session() as session:  # one kept-alive connection, several requests
            assert [session.get(svc.url + "/studies").status_code for _ in range(3)] == [200, 200, 200]
    finally:
        svc.close()
