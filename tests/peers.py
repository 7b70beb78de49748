"""Real peers for integration tests: Orthanc as the hospital PACS, and synthpacs' own SCP in-process.

Orthanc runs as a plain process on 127.0.0.1 with its own configuration and a temporary storage
folder (service/orthanc.py, which the demo and the benchmarks start it with too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.archive.store import Store
from service.config import Config
from service.dicom.scp import StorageSCP
from service.orthanc import Orthanc
from service.orthanc import start_orthanc as _start_orthanc
from tests.helpers import require_tool


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
    """:func:`service.orthanc.start_orthanc` for a test: skipped where Orthanc (or, with ``dicomweb``, its
    DICOMweb plugin) is not installed."""
    require_tool("Orthanc", "orthanc")
    plugins = [dicomweb_plugin()] if dicomweb else []
    return _start_orthanc(workdir, modalities, ae_title, extra, plugins=plugins, dicomweb=dicomweb)


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
