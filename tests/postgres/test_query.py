"""The one query engine on both indexes: the same C-FIND answers from SQLite and PostgreSQL, and dcmtk's
findscu against the SCP running on a PostgreSQL index."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset

from service.archive.store import Store
from service.data.phantom import phantom_dataset
from service.dicom.qr import QueryRetrieveSCP
from tests.helpers import make_config, require_tool
from tests.synthetic.conftest import RunningService, write_synthetic_study


def _archive_datasets() -> list[Dataset]:
    a = phantom_dataset(32, 32, seed=1, patient_name="DOE^JANE", patient_id="P1", body_part="KNEE")
    a.StudyDate, a.StudyDescription = "20240115", "KNEE_50%[1]"
    b = phantom_dataset(32, 32, seed=2, patient_name="ROE^RICHARD", patient_id="P2", body_part="TIBIA", modality="DX")
    b.StudyDate, b.StudyDescription = "20240220", "TIBIA LEFT"
    b2 = phantom_dataset(32, 32, seed=3, patient_name="ROE^RICHARD", patient_id="P2", study_uid=b.StudyInstanceUID,
                         series_uid=b.SeriesInstanceUID, instance_number=2, body_part="TIBIA", modality="DX")
    b2.StudyDate, b2.StudyDescription = "20240220", "TIBIA LEFT"
    c = phantom_dataset(32, 32, seed=4, patient_name="DOE^JOHN", patient_id="P3", body_part="HAND")
    c.StudyDate, c.StudyDescription = "20231201", "knee_50x1"
    return [a, b, b2, c]


def _query(level: str, **keys) -> Dataset:
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    return ident


# Each exercises another part of the SQL: wildcards (with LIKE's and GLOB's own special characters), ranges,
# lists, computed keys, grouped levels, Synthetic Data, and lower-level keys.
QUERIES = [
    ("PATIENT", dict(PatientID="", PatientName="", NumberOfPatientRelatedStudies="", NumberOfPatientRelatedInstances="")),
    ("STUDY", dict(StudyInstanceUID="", PatientName="", StudyDate="", ModalitiesInStudy="", NumberOfStudyRelatedInstances="",
                   NumberOfStudyRelatedSeries="", StudyDescription="", SOPClassesInStudy="", SyntheticData="")),
    ("STUDY", dict(StudyInstanceUID="", StudyDescription="KNEE_50%*")),
    ("STUDY", dict(StudyInstanceUID="", StudyDescription="*[1]")),
    ("STUDY", dict(StudyInstanceUID="", StudyDescription="knee?50*")),
    ("STUDY", dict(StudyInstanceUID="", StudyDescription="T*")),
    ("STUDY", dict(StudyInstanceUID="", StudyDate="20240101-20240131")),
    ("STUDY", dict(StudyInstanceUID="", StudyDate="-20240131")),
    ("STUDY", dict(StudyInstanceUID="", PatientID="P1\\P3")),
    ("STUDY", dict(StudyInstanceUID="", ModalitiesInStudy="DX")),
    ("STUDY", dict(StudyInstanceUID="", SyntheticData="NO")),
    ("STUDY", dict(StudyInstanceUID="", SyntheticData="YES", PatientName="SYNTHETIC*")),
    ("STUDY", dict(StudyInstanceUID="", SeriesNumber="1")),
    ("SERIES", dict(SeriesInstanceUID="", Modality="", BodyPartExamined="", NumberOfSeriesRelatedInstances="", SeriesNumber="")),
    ("SERIES", dict(SeriesInstanceUID="", BodyPartExamined="TIB*", ModalitiesInStudy="")),
    ("IMAGE", dict(SOPInstanceUID="", InstanceNumber="2", Rows=None, Columns=None)),
    ("IMAGE", dict(SOPInstanceUID="", PatientID="P2", NumberOfStudyRelatedInstances="")),
]


def _answers(cfg, store, level, keys) -> list[str]:
    found = QueryRetrieveSCP(cfg, store).find(_query(level, **keys), level)
    # Order aside (NULLs sort first in SQLite, last in PostgreSQL), the answers must be equal.
    return sorted(ds.to_json() for ds in found)


def test_the_same_queries_give_the_same_answers_on_sqlite_and_postgresql(tmp_path, pg_url):
    stores = {}
    datasets = _archive_datasets()
    for name, extra in (("sqlite", {}), ("postgresql", {"store.index_url": pg_url})):
        home = tmp_path / name
        home.mkdir()
        # De-identification off, so both stores hold the values sent; the same UIDs in both.
        cfg = make_config(home, **{"deid.enabled": False, **extra})
        store = Store(cfg)
        for ds in datasets:
            store.put(ds, source="import")
        stores[name] = (cfg, store)
    write_synthetic_study(stores["sqlite"][0], stores["sqlite"][1], count=2)
    # The same synthetic files in the PostgreSQL store: copy what the writer made.
    sq_store = stores["sqlite"][1]
    for record in sq_store.index.instances("i.synthetic = 1"):
        stores["postgresql"][1].put(pydicom.dcmread(sq_store.path_of(record)), source="synthetic", synthetic=True)
    try:
        assert stores["postgresql"][1].index.dialect.name == "postgresql"
        for level, keys in QUERIES:
            on_sqlite = _answers(*stores["sqlite"], level, keys)
            on_postgres = _answers(*stores["postgresql"], level, keys)
            assert on_postgres == on_sqlite, (level, keys)
        # And the queries are not all empty: the comparison means something.
        assert len(_answers(*stores["postgresql"], "STUDY", dict(StudyInstanceUID="", StudyDescription="KNEE_50%*"))) == 1
        assert len(_answers(*stores["postgresql"], "STUDY", dict(StudyInstanceUID="", StudyDescription="knee?50*"))) == 1
        assert len(_answers(*stores["postgresql"], "STUDY", dict(StudyInstanceUID="", SyntheticData="YES", PatientName="SYNTHETIC*"))) == 1
    finally:
        for _cfg, store in stores.values():
            store.close()


def _dcmtk(tool: str, args: list[str], cwd: Path) -> str:
    proc = subprocess.run([require_tool(tool, "dcmtk"), *args], capture_output=True, text=True, timeout=120, cwd=cwd)
    return proc.stdout + proc.stderr


@pytest.mark.integration
def test_storescu_and_findscu_against_the_scp_on_a_postgresql_index(tmp_path, pg_url):
    home = tmp_path / "home"
    home.mkdir()
    cfg = make_config(home, **{"deid.enabled": False, "store.index_url": pg_url})
    files = tmp_path / "send"
    files.mkdir()
    for n, ds in enumerate(_archive_datasets()):
        ds.save_as(files / f"{n}.dcm", enforce_file_format=True)
    svc = RunningService(cfg, outbox=False)
    try:
        sent = subprocess.run(["/usr/bin/storescu" if Path("/usr/bin/storescu").exists() else require_tool("storescu", "dcmtk"),
                               "-aec", svc.ae_title, "+sd", "+r", "127.0.0.1", str(svc.port), str(files)],
                              capture_output=True, text=True, timeout=120)
        assert sent.returncode == 0, sent.stderr
        assert svc.store.index.stats()["instances"] == 4
        out = tmp_path / "find"
        out.mkdir()
        base = ["-S", "-X", "-od", str(out), "127.0.0.1", str(svc.port), "-aec", svc.ae_title]
        log = _dcmtk("findscu", [*base, "-k", "QueryRetrieveLevel=STUDY", "-k", "StudyInstanceUID", "-k", "PatientName=ROE*",
                                 "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances", "-k", "StudyDate"], tmp_path)
        found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        assert len(found) == 1, log
        assert found[0].PatientName == "ROE^RICHARD" and found[0].NumberOfStudyRelatedInstances == 2
        assert found[0].ModalitiesInStudy == "DX" and found[0].StudyDate == "20240220"
        for p in out.glob("rsp*.dcm"):
            p.unlink()
        _dcmtk("findscu", [*base, "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={found[0].StudyInstanceUID}",
                           "-k", "SOPInstanceUID", "-k", "InstanceNumber"], tmp_path)
        images = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
        assert sorted(int(ds.InstanceNumber) for ds in images) == [1, 2]
    finally:
        svc.stop()
