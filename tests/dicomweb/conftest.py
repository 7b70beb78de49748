"""Fixtures for the DICOMweb tests: an archive with received and synthetic studies, and the service on loopback."""

from __future__ import annotations

import io

import pytest

from service.archive.store import Store
from service.data.phantom import phantom_dataset
from service.dicomweb.server import DicomwebServer
from service.logs import configure
from tests.helpers import make_config
from tests.synthetic.conftest import write_synthetic_study


class _Stdout:
    def write(self, text: str) -> int:
        import sys

        return sys.stdout.write(text)

    def flush(self) -> None:
        import sys

        sys.stdout.flush()


@pytest.fixture(autouse=True)
def _live_log_stream():
    configure("info", "json", stream=_Stdout())
    yield
    configure("info", "json", stream=_Stdout())


def part10(ds) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Service:
    """The DICOMweb component over one store, started in this process."""

    def __init__(self, cfg, store: Store | None = None):
        self.cfg = cfg
        self.store = store or Store(cfg)
        self.server = DicomwebServer(cfg, self.store).start()
        self.url = self.server.url

    def client(self, **kwargs):
        from dicomweb_client.api import DICOMwebClient

        return DICOMwebClient(self.url, **kwargs)

    def close(self) -> None:
        self.server.stop()
        self.store.close()


def fill_archive(cfg, store: Store) -> dict:
    """Two received CR studies (one with two instances) and one synthetic study of two images."""
    a = phantom_dataset(32, 32, seed=1, patient_name="DOE^JANE", patient_id="P1", body_part="KNEE")
    a.StudyDate = "20240115"
    b = phantom_dataset(48, 40, seed=2, patient_name="ROE^RICHARD", patient_id="P2", body_part="TIBIA")
    b.StudyDate = "20240220"
    b2 = phantom_dataset(48, 40, seed=3, patient_name="ROE^RICHARD", patient_id="P2", study_uid=b.StudyInstanceUID,
                         series_uid=b.SeriesInstanceUID, instance_number=2, body_part="TIBIA")
    b2.StudyDate, b2.AccessionNumber = "20240220", b.AccessionNumber  # one study, one accession number
    for ds in (a, b, b2):
        store.put(ds, source="import")
    synthetic = write_synthetic_study(cfg, store, count=2)
    return {"a": a, "b": b, "b2": b2, "synthetic": synthetic}


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    """One archive and service per test module (a synthetic study takes seconds to write on 2 cores)."""
    home = tmp_path_factory.mktemp("dicomweb-home")
    cfg = make_config(home, **{"deid.enabled": False})
    configure("info", "json", stream=_Stdout())
    svc = Service(cfg)
    svc.studies = fill_archive(cfg, svc.store)
    yield svc
    svc.close()
