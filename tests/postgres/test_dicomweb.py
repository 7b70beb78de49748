"""DICOMweb over a PostgreSQL index, through the highdicom authors' client: QIDO-RS runs the query engine's
SQL on PostgreSQL, WADO-RS reads the rows it finds, STOW-RS stores through the same durable path."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import generate_uid

from service.data.phantom import phantom_dataset
from tests.dicomweb.conftest import Service, fill_archive, part10
from tests.helpers import make_config

pytestmark = pytest.mark.integration


def test_qido_wado_and_stow_on_a_postgresql_index(home, pg_url):
    cfg = make_config(home, **{"deid.enabled": False, "store.index_url": pg_url})
    svc = Service(cfg)
    try:
        assert svc.store.index.dialect.name == "postgresql"
        data = fill_archive(cfg, svc.store)
        client = svc.client()
        found = client.search_for_studies(search_filters={"PatientName": "ROE*"}, fields=["NumberOfStudyRelatedInstances"])
        assert [s["0020000D"]["Value"][0] for s in found] == [str(data["b"].StudyInstanceUID)]
        assert found[0]["00201208"]["Value"][0] == 2
        assert len(client.search_for_studies()) == 3
        synthetic = client.search_for_studies(search_filters={"00080016": "", "SyntheticData": "YES"})
        assert [s["0020000D"]["Value"][0] for s in synthetic] == [data["synthetic"].study_instance_uid]
        series = client.search_for_series(str(data["b"].StudyInstanceUID))
        assert len(series) == 1
        instances = client.retrieve_study(str(data["b"].StudyInstanceUID))
        assert sorted(int(ds.InstanceNumber) for ds in instances) == [1, 2]
        new = phantom_dataset(32, 32, seed=9, study_uid=generate_uid(), patient_id="P9")
        client.store_instances([pydicom.dcmread(io.BytesIO(part10(new)))])
        assert svc.store.index.get(str(new.SOPInstanceUID)) is not None
        assert len(client.search_for_studies(search_filters={"PatientID": "P9"})) == 1
    finally:
        svc.close()
