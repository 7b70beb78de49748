"""Orthanc as a plain loopback process: the demo's hospital PACS and the peer of tests and benchmarks.

Orthanc's Debian package starts a system service, which a sandbox or container blocks; this starts
``Orthanc CONFIG.json`` as an ordinary child process instead, on 127.0.0.1 (RemoteAccessAllowed off, no
authentication), with its storage and index in ``workdir`` (ARCHITECTURE.md).
``TCP_NODELAY=1`` is passed unless the caller's environment sets it: without it Orthanc stalls some 40 ms
per DIMSE message on loopback. Orthanc answers C-FIND/C-MOVE only for the AE titles in ``modalities``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence


class OrthancError(RuntimeError):
    """Orthanc is not installed, exited, or did not answer in time; the message says where its log is."""


def free_port(preferred: int = 0) -> int:
    """``preferred`` when it is free on 127.0.0.1 (0: none preferred), else any free loopback port."""
    for candidate in ((preferred, 0) if preferred else (0,)):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OrthancError("no free TCP port on 127.0.0.1")


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, DICOM and HTTP ports, and a tiny REST client."""

    process: subprocess.Popen
    workdir: Path
    ae_title: str
    dicom_port: int
    http_port: int
    modalities: dict[str, list[Any]] = field(default_factory=dict)
    rest_timeout: float = 60.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, body: Any = None, timeout: float | None = None) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout or self.rest_timeout) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def get(self, path: str) -> Any:
        return self.rest("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.rest("POST", path, body)

    def instances(self) -> list[str]:
        return self.get("/instances")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def start(self, timeout: float = 30) -> None:
        """(Re)start the process with the same configuration and storage."""
        self.stop()
        self.process = _spawn(self.workdir)
        _wait_ready(self, timeout)


def _spawn(workdir: Path) -> subprocess.Popen:
    executable = shutil.which("Orthanc")
    if executable is None:
        raise OrthancError("Orthanc is not installed (Debian package orthanc; `make deps` installs it)")
    env = dict(os.environ, TCP_NODELAY=os.environ.get("TCP_NODELAY", "1"))
    with open(workdir / "orthanc.log", "ab") as log:
        return subprocess.Popen([executable, str(workdir / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env)


def _wait_ready(orthanc: Orthanc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if orthanc.process.poll() is not None:
            log = (orthanc.workdir / "orthanc.log").read_text(errors="replace")[-2000:]
            raise OrthancError(f"Orthanc exited with {orthanc.process.returncode} (log {orthanc.workdir / 'orthanc.log'}):\n{log}")
        try:
            orthanc.get("/system")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    orthanc.stop()
    raise OrthancError(f"Orthanc did not answer on {orthanc.url} within {timeout:g} s (log {orthanc.workdir / 'orthanc.log'})")


def start_orthanc(workdir: Path, modalities: dict[str, list[Any]] | None = None, ae_title: str = "ORTHANC", extra: dict[str, Any] | None = None,
                  plugins: Sequence[Path] = (), dicomweb: bool = False, dicom_port: int = 0, http_port: int = 0,
                  timeout: float = 30, rest_timeout: float = 60) -> Orthanc:
    """Start Orthanc on loopback (free ports unless given). ``modalities``: Orthanc's DicomModalities,
    e.g. ``{"synthpacs": ["SYNTHPACS", "127.0.0.1", 11112]}`` (needed for C-FIND/C-MOVE and sends).
    ``plugins``: plugin libraries to load; ``dicomweb``: serve the DICOMweb plugin under ``/dicom-web/``.
    ``extra``: further configuration keys, which win over these."""
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = dicom_port or free_port(), http_port or free_port()
    config = {
        "Name": "synthpacs-test",
        "DicomAet": ae_title,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "index"),
        "DicomModalities": modalities or {},
        "DicomAlwaysAllowStore": True,
        "DicomCheckCalledAet": False,
        "HttpTimeout": 60,
        "DicomScuTimeout": 30,
        "StableAge": 1,
        "Plugins": [str(p) for p in plugins],
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": False},
        "ConcurrentJobs": 2,
    }
    config.update(extra or {})
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    orthanc = Orthanc(_spawn(workdir), workdir, ae_title, dicom_port, http_port, modalities or {}, rest_timeout)
    _wait_ready(orthanc, timeout)
    return orthanc
