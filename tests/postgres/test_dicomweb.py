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


def test_a_stow_request_of_several_instances_is_one_transaction_on_postgresql(home, pg_url):
    """Store.put_batch adds a new patient, study, series and their instances in one PostgreSQL transaction."""
    cfg = make_config(home, **{"deid.enabled": False, "store.index_url": pg_url, "store.duplicate_policy": "reject"})
    svc = Service(cfg)
    try:
        study_uid, series_uid = generate_uid(), generate_uid()
        sent = [phantom_dataset(32, 32, seed=20 + k, study_uid=study_uid, series_uid=series_uid, patient_id="P20",
                                instance_number=k + 1) for k in range(4)]
        clash = phantom_dataset(32, 32, seed=30, sop_uid=sent[0].SOPInstanceUID, study_uid=study_uid, series_uid=series_uid)
        results = svc.store.put_batch([part10(ds) for ds in [*sent, clash]], source="dicomweb")
        assert [getattr(r, "outcome", None) for r in results[:4]] == ["stored"] * 4
        assert results[4].reason == "duplicate_rejected"
        assert {svc.store.index.get(str(ds.SOPInstanceUID)).study_uid for ds in sent} == {str(study_uid)}
        assert len(svc.client().search_for_instances(str(study_uid))) == 4
    finally:
        svc.close()
