"""Side by side with Orthanc: the same C-FIND queries over the same studies, answered by both.

The same received studies (sent by C-STORE to each) and the same synthetic study (made by synthpacs,
then sent to Orthanc) sit in both archives; every query of :data:`QUERIES` goes to both through
pynetdicom, and the answers are compared key by key. Where the answers differ on purpose, the
difference is listed in :data:`INTENDED` with the reason, and docs/conformance.md says the same.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pynetdicom import AE, build_context
from pynetdicom.sop_class import (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
)

from service.data.phantom import phantom_dataset
from tests.helpers import free_port
from tests.peers import start_orthanc
from tests.synthetic.conftest import RunningService, config_with_peers, write_synthetic_study

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUR_AE = "SYNTHPACS"
CALLER_AE = "FINDSCU"


@dataclass
class Archives:
    orthanc: Any
    service: RunningService
    uids: dict[str, str] = field(default_factory=dict)


def _received_studies() -> list[Dataset]:
    """Three patients' worth of received radiographs: one study with two series (CR and DX), a second study
    of the same patient, and a study with a non-ASCII-free but wildcard-worthy name."""
    a = phantom_dataset(16, 16, seed=1, patient_name="DOE^JANE", patient_id="P1", body_part="KNEE")
    a.StudyDate, a.StudyTime, a.PatientSex, a.PatientBirthDate = "20240115", "101530", "F", "19700101"
    a.AccessionNumber, a.StudyDescription, a.StudyID = "ACC1", "KNEE AP", "S1"
    a.ImageComments = "first knee"
    a.ViewPosition = "AP"
    a.PatientAge = "054Y"
    a.ProtocolName = "KNEE PROTOCOL"
    a2 = phantom_dataset(16, 16, seed=2, patient_name="DOE^JANE", patient_id="P1", body_part="KNEE", modality="DX",
                         study_uid=a.StudyInstanceUID, instance_number=1)
    for kw in ("StudyDate", "StudyTime", "PatientSex", "PatientBirthDate", "AccessionNumber", "StudyDescription", "StudyID"):
        setattr(a2, kw, getattr(a, kw))
    a2.SeriesNumber = 2
    a2.PatientAge = "054Y"
    a2.ImageComments = "second knee"
    b = phantom_dataset(16, 16, seed=3, patient_name="ROE^RICHARD", patient_id="P2", body_part="TIBIA")
    b.StudyDate, b.StudyTime, b.PatientSex, b.AccessionNumber, b.StudyDescription = "20240220", "143000", "M", "ACC2", "TIBIA LAT"
    b2 = phantom_dataset(16, 16, seed=4, patient_name="ROE^RICHARD", patient_id="P2", body_part="TIBIA", study_uid=b.StudyInstanceUID,
                         series_uid=b.SeriesInstanceUID, instance_number=2)
    for kw in ("StudyDate", "StudyTime", "PatientSex", "AccessionNumber", "StudyDescription"):
        setattr(b2, kw, getattr(b, kw))
    c = phantom_dataset(16, 16, seed=5, patient_name="ROE^RICHARD", patient_id="P2", body_part="HAND")
    c.StudyDate, c.StudyTime, c.PatientSex, c.AccessionNumber, c.StudyDescription = "20231105", "080000", "M", "ACC3", "HAND PA"
    return [a, a2, b, b2, c]


def _send(datasets: list[Dataset], port: int, called: str) -> None:
    ae = AE(ae_title=CALLER_AE)
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, str(ds.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    try:
        for ds in datasets:
            st = assoc.send_c_store(ds)
            assert st.Status == 0x0000, hex(st.Status)
    finally:
        assoc.release()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    root = tmp_path_factory.mktemp("side-by-side")
    our_port = free_port()
    orthanc = start_orthanc(root / "orthanc", modalities={"findscu": [CALLER_AE, "127.0.0.1", free_port()],
                                                          "synthpacs": [OUR_AE, "127.0.0.1", our_port]})
    cfg = config_with_peers(root / "home", [("ORTHANC", "127.0.0.1", orthanc.dicom_port)],
                            **{"deid.enabled": False, "dicom.port": our_port, "outbox.health_interval_s": 0})
    svc = RunningService(cfg, outbox=False)
    try:
        received = _received_studies()
        _send(received, svc.port, OUR_AE)
        _send(received, orthanc.dicom_port, "ORTHANC")
        study = write_synthetic_study(cfg, svc.store, count=2)
        synthetic = [svc.store.read(i.sop_instance_uid) for i in study.instances]
        _send(synthetic, orthanc.dicom_port, "ORTHANC")
        uids = {
            "a": received[0].StudyInstanceUID, "a_cr": received[0].SeriesInstanceUID, "a_dx": received[1].SeriesInstanceUID,
            "b": received[2].StudyInstanceUID, "b_series": received[2].SeriesInstanceUID, "b1": received[2].SOPInstanceUID,
            "b2": received[3].SOPInstanceUID, "c": received[4].StudyInstanceUID,
            "syn": study.study_instance_uid, "syn_series": study.series_instance_uid, "syn1": study.instances[0].sop_instance_uid,
        }
        yield Archives(orthanc, svc, uids)
    finally:
        svc.stop()
        orthanc.stop()
        shutil.rmtree(root, ignore_errors=True)


def c_find(port: int, called: str, model: str, identifier: Dataset) -> list[Dataset]:
    ae = AE(ae_title=CALLER_AE)
    uid = PatientRootQueryRetrieveInformationModelFind if model == "P" else StudyRootQueryRetrieveInformationModelFind
    ae.add_requested_context(uid)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established
    found: list[Dataset] = []
    try:
        for st, ds in assoc.send_c_find(identifier, uid):
            if st and st.Status in (0xFF00, 0xFF01) and ds is not None:
                found.append(ds)
    finally:
        assoc.release()
    return found


# (id, model "P"/"S", level, keys): values are formatted with the study UIDs; a list is a sequence key
# whose dicts are its items.
QUERIES: list[tuple[str, str, str, dict[str, Any]]] = [
    ("patient-all", "P", "PATIENT", {"PatientID": "", "PatientName": "", "PatientSex": "", "PatientBirthDate": ""}),
    ("patient-wildcard", "P", "PATIENT", {"PatientName": "ROE*", "PatientID": ""}),
    ("patient-counts", "P", "PATIENT", {"PatientID": "P1", "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedSeries": "",
                                        "NumberOfPatientRelatedInstances": ""}),
    ("patient-name-case", "P", "PATIENT", {"PatientName": "doe^jane", "PatientID": ""}),
    ("patient-id-list", "P", "PATIENT", {"PatientID": "P1\\P2", "PatientName": ""}),
    ("patient-root-study", "P", "STUDY", {"PatientID": "P2", "StudyInstanceUID": "", "StudyDate": "", "AccessionNumber": ""}),
    ("patient-root-series", "P", "SERIES", {"PatientID": "P1", "StudyInstanceUID": "{a}", "SeriesInstanceUID": "", "Modality": ""}),
    ("patient-root-image", "P", "IMAGE", {"PatientID": "P2", "StudyInstanceUID": "{b}", "SeriesInstanceUID": "{b_series}",
                                          "SOPInstanceUID": "", "InstanceNumber": ""}),
    ("study-all", "S", "STUDY", {"StudyInstanceUID": "", "PatientName": "", "PatientID": "", "StudyDate": "", "StudyTime": "",
                                 "AccessionNumber": "", "StudyDescription": "", "ModalitiesInStudy": "",
                                 "NumberOfStudyRelatedSeries": "", "NumberOfStudyRelatedInstances": ""}),
    ("study-date-range", "S", "STUDY", {"StudyInstanceUID": "", "StudyDate": "20240101-20240301"}),
    ("study-date-until", "S", "STUDY", {"StudyInstanceUID": "", "StudyDate": "-20231231"}),
    ("study-date-from", "S", "STUDY", {"StudyInstanceUID": "", "StudyDate": "20240201-"}),
    ("study-date-single", "S", "STUDY", {"StudyInstanceUID": "", "StudyDate": "20240115"}),
    ("study-time-range", "S", "STUDY", {"StudyInstanceUID": "", "StudyTime": "1000-1500"}),
    ("study-description-wildcard", "S", "STUDY", {"StudyInstanceUID": "", "StudyDescription": "*AP"}),
    ("study-description-question-mark", "S", "STUDY", {"StudyInstanceUID": "", "StudyDescription": "?NEE AP"}),
    ("study-accession", "S", "STUDY", {"StudyInstanceUID": "", "AccessionNumber": "ACC2"}),
    ("study-uid-list", "S", "STUDY", {"StudyInstanceUID": "{a}\\{b}", "PatientID": ""}),
    ("study-modalities-dx", "S", "STUDY", {"StudyInstanceUID": "", "ModalitiesInStudy": "DX"}),
    ("study-modalities-list", "S", "STUDY", {"StudyInstanceUID": "", "ModalitiesInStudy": "DX\\OT"}),
    ("study-patient-sex", "S", "STUDY", {"StudyInstanceUID": "", "PatientSex": "M"}),
    ("study-modality-above-level", "S", "STUDY", {"StudyInstanceUID": "", "Modality": ""}),
    ("study-image-comments-above-level", "S", "STUDY", {"StudyInstanceUID": "", "ImageComments": ""}),
    ("study-body-part-above-level", "S", "STUDY", {"StudyInstanceUID": "", "BodyPartExamined": ""}),
    ("study-sop-classes", "S", "STUDY", {"StudyInstanceUID": "", "SOPClassesInStudy": ""}),
    ("study-synthetic-return", "S", "STUDY", {"StudyInstanceUID": "", "SyntheticData": ""}),
    ("study-synthetic-yes", "S", "STUDY", {"StudyInstanceUID": "", "SyntheticData": "YES"}),
    ("study-synthetic-no", "S", "STUDY", {"StudyInstanceUID": "", "SyntheticData": "NO"}),
    ("study-id", "S", "STUDY", {"StudyInstanceUID": "", "StudyID": ""}),
    ("study-patient-age", "S", "STUDY", {"StudyInstanceUID": "", "PatientAge": ""}),
    ("study-patient-age-match", "S", "STUDY", {"StudyInstanceUID": "", "PatientAge": "054Y"}),
    ("study-image-comments-filter-above-level", "S", "STUDY", {"StudyInstanceUID": "", "ImageComments": "first*"}),
    ("study-modality-filter-above-level", "S", "STUDY", {"StudyInstanceUID": "", "Modality": "DX"}),
    ("study-body-part-filter-above-level", "S", "STUDY", {"StudyInstanceUID": "", "BodyPartExamined": "KNEE"}),
    ("study-synthetic-patient", "S", "STUDY", {"StudyInstanceUID": "", "PatientName": "SYNTHETIC*", "StudyDescription": ""}),
    ("series-of-study", "S", "SERIES", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "", "Modality": "", "SeriesNumber": "",
                                        "BodyPartExamined": "", "NumberOfSeriesRelatedInstances": ""}),
    ("series-modality", "S", "SERIES", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "", "Modality": "DX"}),
    ("series-relational", "S", "SERIES", {"SeriesInstanceUID": "", "Modality": "OT", "SeriesDescription": ""}),
    ("series-description-wildcard", "S", "SERIES", {"StudyInstanceUID": "{syn}", "SeriesInstanceUID": "", "SeriesDescription": "SYNTHETIC*"}),
    ("series-image-comments-above-level", "S", "SERIES", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "", "ImageComments": ""}),
    ("series-protocol", "S", "SERIES", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "", "ProtocolName": ""}),
    ("series-protocol-match", "S", "SERIES", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "", "ProtocolName": "KNEE*"}),
    ("series-patient-name", "S", "SERIES", {"StudyInstanceUID": "{b}", "SeriesInstanceUID": "", "PatientName": ""}),
    ("image-of-series", "S", "IMAGE", {"StudyInstanceUID": "{b}", "SeriesInstanceUID": "{b_series}", "SOPInstanceUID": "",
                                       "InstanceNumber": "", "SOPClassUID": "", "Rows": "", "Columns": ""}),
    ("image-uid-list", "S", "IMAGE", {"StudyInstanceUID": "{b}", "SeriesInstanceUID": "{b_series}", "SOPInstanceUID": "{b1}\\{b2}"}),
    ("image-number", "S", "IMAGE", {"StudyInstanceUID": "{b}", "SeriesInstanceUID": "{b_series}", "SOPInstanceUID": "", "InstanceNumber": "2"}),
    ("image-comments", "S", "IMAGE", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "{a_cr}", "SOPInstanceUID": "", "ImageComments": ""}),
    ("image-comments-wildcard", "S", "IMAGE", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "{a_dx}", "SOPInstanceUID": "",
                                               "ImageComments": "second*"}),
    ("image-comments-no-match", "S", "IMAGE", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "{a_dx}", "SOPInstanceUID": "",
                                               "ImageComments": "first*"}),
    ("image-view-position", "S", "IMAGE", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "{a_cr}", "SOPInstanceUID": "",
                                           "ViewPosition": "AP"}),
    ("image-patient-age", "S", "IMAGE", {"StudyInstanceUID": "{a}", "SeriesInstanceUID": "{a_dx}", "SOPInstanceUID": "", "PatientAge": ""}),
    ("image-synthetic", "S", "IMAGE", {"StudyInstanceUID": "{syn}", "SeriesInstanceUID": "{syn_series}", "SOPInstanceUID": "{syn1}",
                                       "SyntheticData": "", "ConversionType": "", "BurnedInAnnotation": ""}),
    ("image-sequence-empty", "S", "IMAGE", {"StudyInstanceUID": "{syn}", "SeriesInstanceUID": "{syn_series}", "SOPInstanceUID": "{syn1}",
                                            "ContributingEquipmentSequence": []}),
    ("image-sequence-empty-item", "S", "IMAGE", {"StudyInstanceUID": "{syn}", "SeriesInstanceUID": "{syn_series}", "SOPInstanceUID": "{syn1}",
                                                 "ContributingEquipmentSequence": [{}]}),
    ("image-sequence-item-keys", "S", "IMAGE", {"StudyInstanceUID": "{syn}", "SeriesInstanceUID": "{syn_series}", "SOPInstanceUID": "",
                                                "ContributingEquipmentSequence": [{"Manufacturer": "", "ManufacturerModelName": ""}]}),
    ("image-sequence-item-match", "S", "IMAGE", {"StudyInstanceUID": "{syn}", "SeriesInstanceUID": "{syn_series}", "SOPInstanceUID": "",
                                                 "ContributingEquipmentSequence": [{"Manufacturer": "synthpacs*"}]}),
    ("image-sequence-item-no-match", "S", "IMAGE", {"StudyInstanceUID": "{syn}", "SeriesInstanceUID": "{syn_series}", "SOPInstanceUID": "",
                                                    "ContributingEquipmentSequence": [{"Manufacturer": "nobody*"}]}),
    ("image-sequence-absent", "S", "IMAGE", {"StudyInstanceUID": "{b}", "SeriesInstanceUID": "{b_series}", "SOPInstanceUID": "{b1}",
                                             "ContributingEquipmentSequence": []}),
]

IGNORED = frozenset({"QueryRetrieveLevel", "RetrieveAETitle", "SpecificCharacterSet", "InstanceAvailability"})


def identifier(level: str, keys: dict[str, Any], uids: dict[str, str]) -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = level
    for kw, value in keys.items():
        if isinstance(value, list):
            items = []
            for item_keys in value:
                item = Dataset()
                for ikw, ivalue in item_keys.items():
                    setattr(item, ikw, ivalue.format(**uids))
                items.append(item)
            setattr(ds, kw, Sequence(items))
        else:
            setattr(ds, kw, value.format(**uids))
    return ds


def normalized(value: Any) -> Any:
    """A value as text that both archives' encodings agree on (VR UN read back, numbers, multi-values)."""
    if value is None:
        return ""
    if isinstance(value, Sequence):
        return tuple(tuple(sorted((e.keyword or str(e.tag), normalized(e.value)) for e in item)) for item in value)
    if isinstance(value, bytes):
        return value.decode("ascii", "replace").strip(" \x00")
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        return tuple(sorted(str(normalized(v)) for v in value)) if len(value) != 1 else normalized(value[0])
    if isinstance(value, (int, float)):
        return str(int(value))
    text = str(value).strip()
    try:
        return str(int(text)) if text.lstrip("-").isdigit() else text
    except ValueError:
        return text


def answers(found: list[Dataset], keys: dict[str, Any]) -> list[tuple]:
    rows = []
    for ds in found:
        rows.append(tuple((kw, normalized(ds[kw].value) if kw in ds else "<absent>") for kw in keys if kw not in IGNORED))
    return sorted(rows)


def both(archives: Archives, model: str, level: str, keys: dict[str, Any]) -> tuple[list[tuple], list[tuple]]:
    ident = identifier(level, keys, archives.uids)
    ours = c_find(archives.service.port, OUR_AE, model, ident)
    theirs = c_find(archives.orthanc.dicom_port, "ORTHANC", model, ident)
    return answers(ours, keys), answers(theirs, keys)


def _column(rows: list[tuple], keyword: str) -> list[Any]:
    return [dict(row)[keyword] for row in rows]


def _items(rows: list[tuple]) -> list[tuple]:
    return [item for seq in _column(rows, "ContributingEquipmentSequence") for item in seq]


# Differences on purpose: query id -> (why, what synthpacs answers instead). docs/conformance.md lists
# each one under its id ("Differences from Orthanc").
INTENDED: dict[str, tuple[str, Any]] = {
    "study-synthetic-return": (
        "Synthetic Data is computed for every entity: NO for real studies, where Orthanc has no value to return",
        lambda ours, uids: sorted(_column(ours, "SyntheticData")) == ["NO", "NO", "NO", "YES"],
    ),
    "study-synthetic-no": (
        "a filter for SyntheticData NO finds the real studies; Orthanc matches only stored values and finds none",
        lambda ours, uids: sorted(_column(ours, "StudyInstanceUID")) == sorted([uids["a"], uids["b"], uids["c"]]),
    ),
    "image-sequence-item-keys": (
        "items hold only the requested item keys (PS3.4 C.2.2.2.6); Orthanc returns whole items",
        lambda ours, uids: len(ours) == 2 and all({k for k, _ in item} == {"Manufacturer", "ManufacturerModelName"} for item in _items(ours)),
    ),
    "image-sequence-item-match": (
        "only the matching items, with the requested keys (PS3.4 C.2.2.2.6); Orthanc returns every item whole",
        lambda ours, uids: len(ours) == 2 and _items(ours) == [(("Manufacturer", "synthpacs"),)] * 2,
    ),
    "image-sequence-item-no-match": (
        "item keys are matched (PS3.4 C.2.2.2.6); Orthanc ignores them and returns every instance",
        lambda ours, uids: ours == [],
    ),
    "image-sequence-absent": (
        "a requested sequence the instance lacks comes back with zero items (PS3.4 C.4.1.1.3.2); Orthanc leaves it out",
        lambda ours, uids: _column(ours, "ContributingEquipmentSequence") == [()],
    ),
}


def test_the_comparison_covers_every_level_model_and_kind_of_key():
    assert 30 <= len(QUERIES) <= 80 and len({q[0] for q in QUERIES}) == len(QUERIES)
    assert {q[2] for q in QUERIES} == {"PATIENT", "STUDY", "SERIES", "IMAGE"} and {q[1] for q in QUERIES} == {"P", "S"}
    assert set(INTENDED) <= {q[0] for q in QUERIES}


def test_every_intended_difference_is_in_the_conformance_statement():
    text = (Path(__file__).resolve().parents[2] / "docs" / "conformance.md").read_text()
    missing = [qid for qid in INTENDED if f"`{qid}`" not in text]
    assert not missing, f"docs/conformance.md does not list {missing}"


@pytest.mark.parametrize("qid, model, level, keys", QUERIES, ids=[q[0] for q in QUERIES])
def test_same_answers_as_orthanc(archives, qid, model, level, keys):
    ours, theirs = both(archives, model, level, keys)
    if qid in INTENDED:
        why, expected = INTENDED[qid]
        assert ours != theirs, f"{qid} no longer differs from Orthanc: remove it from INTENDED and docs/conformance.md"
        assert expected(ours, archives.uids), f"{why}\nsynthpacs: {ours}"
        return
    assert ours == theirs, f"\nsynthpacs: {ours}\northanc:   {theirs}"
