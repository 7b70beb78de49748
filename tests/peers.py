"""Real peers for integration tests: Orthanc as the hospital PACS, and synthpacs' own SCP in-process.

Orthanc runs as a plain process on 127.0.0.1 with its own configuration and a temporary storage
folder (its Debian package's system service cannot start in a sandbox; ../shared/NOTES.md).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from service.config import Config
from service.dicom.scp import StorageSCP
from service.dicom.store import Store
from tests.helpers import free_port, require_tool


@dataclass
class Orthanc:
    """A running Orthanc: its AE title, DICOM and HTTP ports, and a tiny REST client."""

    process: subprocess.Popen
    workdir: Path
    ae_title: str
    dicom_port: int
    http_port: int
    modalities: dict[str, list[Any]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, body: Any = None, timeout: float = 60) -> Any:
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        with urllib.request.urlopen(req, timeout=timeout) as resp:
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
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def start(self, timeout: float = 30) -> None:
        """(Re)start the process with the same configuration and storage."""
        self.stop()
        self.process = _spawn(self.workdir)
        _wait_ready(self, timeout)


def _spawn(workdir: Path) -> subprocess.Popen:
    env = dict(os.environ, TCP_NODELAY=os.environ.get("TCP_NODELAY", "1"))
    log = open(workdir / "orthanc.log", "ab")
    return subprocess.Popen(
        [require_tool("Orthanc", "orthanc"), str(workdir / "orthanc.json")],
        stdout=log, stderr=subprocess.STDOUT, cwd=workdir, env=env,
    )


def _wait_ready(orthanc: Orthanc, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if orthanc.process.poll() is not None:
            log = (orthanc.workdir / "orthanc.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"Orthanc exited with {orthanc.process.returncode}:\n{log}")
        try:
            orthanc.get("/system")
            return
        except (urllib.error.URLError, ConnectionError, OSError):
            time.sleep(0.2)
    orthanc.stop()
    raise RuntimeError(f"Orthanc did not answer on {orthanc.url} within {timeout} s")


# Where Debian's orthanc-dicomweb package puts the plugin (and where Orthanc's own packages do).
DICOMWEB_PLUGIN_DIRS = (Path("/usr/lib/orthanc"), Path("/usr/share/orthanc/plugins"), Path("/usr/local/share/orthanc/plugins"))


def dicomweb_plugin() -> Path:
    """The Orthanc DICOMweb plugin library; the test is skipped (locally) when it is not installed."""
    import pytest

    for folder in DICOMWEB_PLUGIN_DIRS:
        found = sorted(folder.glob("libOrthancDicomWeb.so*")) if folder.is_dir() else []
        if found:
            return found[0]
    pytest.skip("Orthanc's DICOMweb plugin is not installed (Debian: apt-get install orthanc-dicomweb)")
    raise AssertionError  # unreachable


def start_orthanc(workdir: Path, modalities: dict[str, list[Any]] | None = None, ae_title: str = "ORTHANC", extra: dict[str, Any] | None = None,
                  dicomweb: bool = False) -> Orthanc:
    """Start Orthanc on free loopback ports. ``modalities``: Orthanc's DicomModalities,
    e.g. ``{"synthpacs": ["SYNTHPACS", "127.0.0.1", 11112]}`` (needed for C-FIND/C-MOVE and sends).
    ``dicomweb``: load the DICOMweb plugin, served under ``/dicom-web/`` on the HTTP port."""
    require_tool("Orthanc", "orthanc")
    plugins = [str(dicomweb_plugin())] if dicomweb else []
    workdir.mkdir(parents=True, exist_ok=True)
    dicom_port, http_port = free_port(), free_port()
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
        "Plugins": plugins,
        "DicomWeb": {"Enable": dicomweb, "Root": "/dicom-web/", "EnableWado": False},
        "ConcurrentJobs": 2,
    }
    config.update(extra or {})
    (workdir / "orthanc.json").write_text(json.dumps(config, indent=2))
    orthanc = Orthanc(_spawn(workdir), workdir, ae_title, dicom_port, http_port, modalities or {})
    _wait_ready(orthanc, 30)
    return orthanc


class RunningSCP:
    """synthpacs' SCP running in this process on an ephemeral loopback port, with its store."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.store = Store(cfg)
        self.scp = StorageSCP(cfg, self.store)
        self.host, self.port = self.scp.start()

    @property
    def ae_title(self) -> str:
        return self.cfg.dicom.ae_title

    def stop(self) -> None:
        self.scp.stop()
        self.store.close()
