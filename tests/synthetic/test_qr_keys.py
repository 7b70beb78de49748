"""Query keys beyond the plain ones: sequence keys (PS3.4 C.2.2.2.6), keys of a lower level than the query's,
Synthetic Data for real and synthetic studies, and the Study Root PATIENT-level retrieve that Orthanc sends."""

from __future__ import annotations

import dataclasses
import subprocess

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from service.archive.query import sequence_answer, sequence_matches
from service.archive.store import Store
from service.data.phantom import phantom_dataset
from service.dicom.qr import QueryRetrieveSCP
from tests.helpers import free_port, require_tool
from tests.peers import start_orthanc
from tests.synthetic.conftest import RunningService, config_with_peers, wait_for, write_synthetic_study


def _item(**attrs) -> Dataset:
    ds = Dataset()
    for k, v in attrs.items():
        setattr(ds, k, v)
    return ds


STORED = Sequence([
    _item(Manufacturer="synthpacs", ManufacturerModelName="wrist-gan", SoftwareVersions=["wrist-gan:v3", "synthpacs 0.1"],
          PurposeOfReferenceCodeSequence=Sequence([_item(CodeValue="109100", CodingSchemeDesignator="DCM")])),
    _item(Manufacturer="Highdicom open-source contributors", ManufacturerModelName="highdicom"),
])


# -- sequence matching (PS3.4 C.2.2.2.6) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "key_items, expected",
    [
        ([], True),  # zero items: universal
        ([_item()], True),  # one empty item: universal
        ([_item(Manufacturer="")], True),  # item keys without values: return keys only
        ([_item(Manufacturer="synthpacs")], True),
        ([_item(Manufacturer="SYNTHPACS")], False),  # LO matches case-sensitively
        ([_item(Manufacturer="High*")], True),
        ([_item(Manufacturer="synthpacs", ManufacturerModelName="highdicom")], False),  # one item must match every key
        ([_item(SoftwareVersions="wrist-gan:*")], True),  # any value of a multi-valued attribute
        ([_item(PurposeOfReferenceCodeSequence=Sequence([_item(CodeValue="109100")]))], True),  # nested
        ([_item(PurposeOfReferenceCodeSequence=Sequence([_item(CodeValue="121000")]))], False),
    ],
)
def test_sequence_matching(key_items, expected):
    assert sequence_matches(Sequence(key_items), STORED) is expected


def test_sequence_matching_against_an_absent_sequence():
    assert sequence_matches(Sequence([]), None) and sequence_matches(Sequence([_item()]), None)
    assert not sequence_matches(Sequence([_item(Manufacturer="x")]), None)
    assert len(sequence_answer(Sequence([_item()]), None)) == 0


def test_sequence_answers_whole_items_for_universal_keys_and_only_requested_keys_otherwise():
    whole = sequence_answer(Sequence([]), STORED)
    assert len(whole) == 2 and whole[0].SoftwareVersions == ["wrist-gan:v3", "synthpacs 0.1"]
    assert whole[0] is not STORED[0]  # a copy: answers never alias the stored header
    asked = sequence_answer(Sequence([_item(Manufacturer="", DeviceSerialNumber="")]), STORED)
    assert [set(i.dir()) for i in asked] == [{"Manufacturer", "DeviceSerialNumber"}] * 2
    assert asked[0].Manufacturer == "synthpacs" and asked[0].DeviceSerialNumber in (None, "")
    (only,) = sequence_answer(Sequence([_item(Manufacturer="High*", ManufacturerModelName="")]), STORED)
    assert only.ManufacturerModelName == "highdicom"
    nested = sequence_answer(Sequence([_item(PurposeOfReferenceCodeSequence=Sequence([_item(CodeValue="")]))]), STORED)
    assert nested[0].PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    assert len(nested) == 2 and len(nested[1].PurposeOfReferenceCodeSequence) == 0  # no condition: every item answers


# -- in process over a store --------------------------------------------------------------------------


@pytest.fixture
def archive(home):
    """A received study of two series (CR and DX, different Image Comments), a received instance that says it
    is synthetic, and a synthetic study made here."""
    cfg = config_with_peers(home, [], **{"deid.enabled": False})
    store = Store(cfg)
    cr = phantom_dataset(16, 16, seed=1, patient_id="P1", body_part="KNEE")
    cr.ImageComments, cr.PatientAge = "first knee", "054Y"
    dx = phantom_dataset(16, 16, seed=2, patient_id="P1", body_part="KNEE", modality="DX", study_uid=cr.StudyInstanceUID)
    dx.ImageComments, dx.PatientAge = "second knee", "054Y"
    elsewhere = phantom_dataset(16, 16, seed=3, patient_id="P9")
    elsewhere.SyntheticData = "YES"  # made by another generator, received by C-STORE
    put = {name: store.put(ds, source="cstore", source_ae="MODALITY").record for name, ds in
           (("cr", cr), ("dx", dx), ("elsewhere", elsewhere))}
    synthetic = write_synthetic_study(cfg, store, count=2)
    yield cfg, store, put, synthetic
    store.close()


def _find(cfg, store, level, **keys) -> list[Dataset]:
    ident = Dataset()
    ident.QueryRetrieveLevel = level
    for k, v in keys.items():
        setattr(ident, k, v)
    return QueryRetrieveSCP(cfg, store).find(ident, level)


def test_contributing_equipment_comes_back_and_is_matched(archive):
    cfg, store, _put, syn = archive
    found = _find(cfg, store, "IMAGE", StudyInstanceUID=syn.study_instance_uid, SOPInstanceUID="",
                  ContributingEquipmentSequence=Sequence([]))
    assert len(found) == 2
    for ds in found:
        ours = ds.ContributingEquipmentSequence[0]
        assert ours.Manufacturer == "synthpacs" and ours.PurposeOfReferenceCodeSequence[0].CodeValue == "109100"
    asked = _find(cfg, store, "IMAGE", StudyInstanceUID=syn.study_instance_uid, SOPInstanceUID="",
                  ContributingEquipmentSequence=Sequence([_item(Manufacturer="synthpacs", ManufacturerModelName="")]))
    assert len(asked) == 2 and all(len(ds.ContributingEquipmentSequence) == 1 for ds in asked)
    assert asked[0].ContributingEquipmentSequence[0].ManufacturerModelName == "fixture-model"
    assert _find(cfg, store, "IMAGE", StudyInstanceUID=syn.study_instance_uid, SOPInstanceUID="",
                 ContributingEquipmentSequence=Sequence([_item(Manufacturer="nobody")])) == []
    # An instance without the sequence answers it with zero items; matching on it fails.
    (cr,) = _find(cfg, store, "IMAGE", SOPInstanceUID=archive[2]["cr"].sop_instance_uid, ContributingEquipmentSequence=Sequence([]))
    assert "ContributingEquipmentSequence" in cr and len(cr.ContributingEquipmentSequence) == 0


def test_keys_of_a_lower_level_are_answered_empty_and_match_nothing(archive):
    cfg, store, put, syn = archive
    studies = _find(cfg, store, "STUDY", StudyInstanceUID="", ImageComments="", Modality="", ModalitiesInStudy="",
                    ContributingEquipmentSequence=Sequence([]))
    assert len(studies) == 3
    for ds in studies:
        # Never one instance's value chosen by chance: the study has two different Image Comments.
        assert ds.ImageComments in (None, "") and ds.Modality in (None, "") and len(ds.ContributingEquipmentSequence) == 0
    by_uid = {ds.StudyInstanceUID: ds for ds in studies}
    assert sorted(by_uid[put["cr"].study_uid].ModalitiesInStudy) == ["CR", "DX"]
    assert _find(cfg, store, "STUDY", StudyInstanceUID="", ImageComments="first*") == []
    assert _find(cfg, store, "STUDY", StudyInstanceUID="", Modality="DX") == []
    assert _find(cfg, store, "SERIES", StudyInstanceUID=put["cr"].study_uid, SeriesInstanceUID="", ImageComments="x*") == []
    # A study-level attribute read from a header is answered and matched at STUDY level and below.
    (knee,) = _find(cfg, store, "STUDY", StudyInstanceUID="", PatientAge="054Y")
    assert knee.StudyInstanceUID == put["cr"].study_uid and knee.PatientAge == "054Y"
    images = _find(cfg, store, "IMAGE", StudyInstanceUID=put["cr"].study_uid, SOPInstanceUID="", ImageComments="second*", PatientAge="")
    assert [(ds.SOPInstanceUID, ds.PatientAge) for ds in images] == [(put["dx"].sop_instance_uid, "054Y")]


def test_synthetic_data_no_finds_the_real_studies_and_yes_the_synthetic_ones(archive):
    cfg, store, put, syn = archive
    real = _find(cfg, store, "STUDY", StudyInstanceUID="", SyntheticData="NO")
    assert [ds.StudyInstanceUID for ds in real] == [put["cr"].study_uid] and real[0].SyntheticData == "NO"
    synthetic = _find(cfg, store, "STUDY", StudyInstanceUID="", SyntheticData="YES")
    # Ours and the one received with Synthetic Data YES (it also stays out of training sets).
    assert {ds.StudyInstanceUID for ds in synthetic} == {syn.study_instance_uid, put["elsewhere"].study_uid}
    assert store.index.get(put["elsewhere"].sop_instance_uid).synthetic
    everything = _find(cfg, store, "SERIES", SeriesInstanceUID="", SyntheticData="")
    assert sorted(ds.SyntheticData for ds in everything) == ["NO", "NO", "YES", "YES"]
    images = _find(cfg, store, "IMAGE", StudyInstanceUID=put["cr"].study_uid, SOPInstanceUID="", SyntheticData="NO")
    assert len(images) == 2


def test_a_received_synthetic_instance_stays_synthetic_through_de_identification(home):
    store = Store(config_with_peers(home, []))
    try:
        ds = phantom_dataset(16, 16, seed=4)
        ds.SyntheticData = "YES"
        rec = store.put(ds, source="cstore", source_ae="MODALITY").record
        assert rec.synthetic and store.read(rec.sop_instance_uid).SyntheticData == "YES"
    finally:
        store.close()


# -- Study Root PATIENT-level retrieve: Orthanc's "retrieve patient" -----------------------------------------


@pytest.fixture
def pacs(tmp_path, home):
    our_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"synthpacs": ["SYNTHPACS", "127.0.0.1", our_port]})
    cfg = config_with_peers(home, [("ORTHANC", "127.0.0.1", orthanc.dicom_port)],
                            **{"deid.enabled": False, "dicom.port": our_port, "outbox.health_interval_s": 0})
    svc = RunningService(cfg, outbox=False)
    for n in range(2):  # one patient, two studies
        svc.store.put(phantom_dataset(16, 16, seed=n, patient_name="ROE^RICHARD", patient_id="P2"), source="import")
    svc.store.put(phantom_dataset(16, 16, seed=9, patient_name="DOE^JANE", patient_id="P1"), source="import")
    yield orthanc, svc
    svc.stop()
    orthanc.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_orthanc_retrieves_a_whole_patient(pacs):
    """Orthanc's REST API: query synthpacs at patient level, then retrieve the answer (a Study Root C-MOVE at
    PATIENT level)."""
    orthanc, svc = pacs
    query = orthanc.post("/modalities/synthpacs/query", {"Level": "Patient", "Query": {"PatientID": "P2", "PatientName": ""}})
    answers = orthanc.get(f"/queries/{query['ID']}/answers?expand&simplify")
    assert [a["PatientID"] for a in answers] == ["P2"]
    orthanc.post(f"/queries/{query['ID']}/answers/0/retrieve", {"TargetAet": "ORTHANC", "Synchronous": True})
    assert wait_for(lambda: len(orthanc.instances()) == 2, timeout=60)
    assert {orthanc.get(f"/instances/{i}/simplified-tags")["PatientID"] for i in orthanc.instances()} == {"P2"}


@pytest.mark.integration
def test_the_leniency_can_be_turned_off(home, tmp_path):
    storescp_dir = tmp_path / "moved"
    from tests.synthetic.conftest import StoreSCP

    peer = StoreSCP(storescp_dir)
    cfg = config_with_peers(home, [("STORESCP", "127.0.0.1", peer.port)],
                            **{"deid.enabled": False, "dicom.port": free_port(), "outbox.health_interval_s": 0})
    strict = dataclasses.replace(cfg, qr=dataclasses.replace(cfg.qr, lenient_patient_level_study_root=False))
    for config, moved in ((cfg, 1), (strict, 0)):
        svc = RunningService(config, outbox=False)
        try:
            svc.store.put(phantom_dataset(16, 16, seed=len(peer.files()) + 1, patient_id="P5"), source="import")
            log = subprocess.run([require_tool("movescu", "dcmtk"), "-v", "-S", "-aem", "STORESCP", "127.0.0.1", str(svc.port),
                                  "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=P5"],
                                 capture_output=True, text=True, timeout=60)
            output = (log.stdout + log.stderr).lower()
            got = tmp_path / f"got-{moved}"
            got.mkdir()
            subprocess.run([require_tool("getscu", "dcmtk"), "-S", "-od", str(got), "127.0.0.1", str(svc.port),
                            "-k", "QueryRetrieveLevel=PATIENT", "-k", "PatientID=P5"], capture_output=True, text=True, timeout=60)
            assert len(list(got.iterdir())) == moved  # C-GET follows the same setting
            if moved:
                assert len(peer.files()) == 1, output
            else:
                assert len(peer.files()) == 1 and "datasetdoesnotmatchsopclass" in output, output
        finally:
            svc.stop()
    peer.stop()
    assert pydicom.dcmread(peer.files()[0]).PatientID == "P5"


@pytest.mark.integration
def test_findscu_asks_for_the_contributing_equipment(home, tmp_path):
    """dcmtk findscu with a sequence key and an item key inside it, against the running service."""
    cfg = config_with_peers(home, [], **{"dicom.port": free_port(), "outbox.health_interval_s": 0})
    svc = RunningService(cfg, outbox=False)
    try:
        syn = write_synthetic_study(cfg, svc.store, count=1)
        out = tmp_path / "find"
        out.mkdir()
        base = [require_tool("findscu", "dcmtk"), "-S", "-X", "-od", str(out), "127.0.0.1", str(svc.port),
                "-k", "QueryRetrieveLevel=IMAGE", "-k", f"StudyInstanceUID={syn.study_instance_uid}", "-k", "SOPInstanceUID"]
        proc = subprocess.run([*base, "-k", "ContributingEquipmentSequence[0].Manufacturer=synthpacs",
                               "-k", "ContributingEquipmentSequence[0].ManufacturerModelName"], capture_output=True, text=True, timeout=60)
        (found,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")] or [proc.stdout + proc.stderr]
        (item,) = found.ContributingEquipmentSequence
        assert item.Manufacturer == "synthpacs" and item.ManufacturerModelName == "fixture-model"
        for p in out.glob("rsp*.dcm"):
            p.unlink()
        subprocess.run([*base, "-k", "ContributingEquipmentSequence[0].Manufacturer=nobody"], capture_output=True, text=True, timeout=60)
        assert list(out.glob("rsp*.dcm")) == []
    finally:
        svc.stop()


def test_odd_keys_answer_without_failing(archive):
    cfg, store, put, _syn = archive
    assert len(_find(cfg, store, "STUDY", StudyInstanceUID="", ModalitiesInStudy="\\")) == 3
    assert len(_find(cfg, store, "STUDY", StudyInstanceUID="", ContributingEquipmentSequence=Sequence([_item(Manufacturer="*")]))) == 3
    (study,) = _find(cfg, store, "STUDY", StudyInstanceUID=put["cr"].study_uid, SOPClassesInStudy="", NumberOfStudyRelatedInstances="7")
    assert study.NumberOfStudyRelatedInstances == 2  # counts are return keys, never matched


@pytest.mark.parametrize("level", ["PATIENT", "STUDY", "SERIES", "IMAGE"])
def test_synthetic_data_yes_and_no_split_every_level(archive, level):
    cfg, store, _put, _syn = archive
    unique = {"PATIENT": "PatientID", "STUDY": "StudyInstanceUID", "SERIES": "SeriesInstanceUID", "IMAGE": "SOPInstanceUID"}[level]
    everything = _find(cfg, store, level, **{unique: "", "SyntheticData": ""})
    yes = _find(cfg, store, level, **{unique: "", "SyntheticData": "YES"})
    no = _find(cfg, store, level, **{unique: "", "SyntheticData": "no"})
    wild = _find(cfg, store, level, **{unique: "", "SyntheticData": "Y*"})
    assert {d[unique].value for d in yes} == {d[unique].value for d in everything if d.SyntheticData == "YES"} == {d[unique].value for d in wild}
    assert {d[unique].value for d in no} == {d[unique].value for d in everything if d.SyntheticData == "NO"}
    assert yes and no and len(yes) + len(no) == len(everything)


# -- computed keys of a higher level (PS3.4 C.3.4) asked at a lower one ---------------------------------------


def test_computed_keys_of_a_higher_level_answer_for_the_entity_holding_the_match(archive):
    cfg, store, put, _syn = archive
    knee = put["cr"].study_uid
    keys = {"ModalitiesInStudy": "", "SOPClassesInStudy": "", "NumberOfStudyRelatedInstances": "", "NumberOfStudyRelatedSeries": "",
            "NumberOfPatientRelatedStudies": "", "NumberOfPatientRelatedInstances": "", "NumberOfSeriesRelatedInstances": ""}
    series = _find(cfg, store, "SERIES", StudyInstanceUID=knee, SeriesInstanceUID="", Modality="", **keys)
    images = _find(cfg, store, "IMAGE", StudyInstanceUID=knee, SOPInstanceUID="", **keys)
    (study,) = _find(cfg, store, "STUDY", StudyInstanceUID=knee, **keys)
    assert len(series) == 2 and len(images) == 2
    for ds in [*series, *images]:
        # The study's values, not the series' or the instance's own.
        assert sorted(ds.ModalitiesInStudy) == ["CR", "DX"] and len(ds.SOPClassesInStudy) == 2
        assert ds.NumberOfStudyRelatedInstances == 2 and ds.NumberOfStudyRelatedSeries == 2
        assert ds.NumberOfPatientRelatedStudies == 1 and ds.NumberOfPatientRelatedInstances == 2
        assert ds.NumberOfSeriesRelatedInstances == 1
    # At STUDY level the patient's counts are the patient's, the series' is a lower-level key: empty.
    assert study.NumberOfPatientRelatedStudies == 1 and study.NumberOfStudyRelatedInstances == 2
    assert study.NumberOfSeriesRelatedInstances in (None, "")
    # Matching on Modalities in Study at SERIES level keeps every series of a study that has the modality.
    assert len(_find(cfg, store, "SERIES", StudyInstanceUID="", SeriesInstanceUID="", ModalitiesInStudy="DX")) == 2


def test_higher_level_counts_see_only_what_synthetic_only_shows(archive):
    cfg, store, put, _syn = archive
    # A synthetic instance received into the real knee study: with qr.synthetic_only it is all that study shows.
    marked = phantom_dataset(16, 16, seed=5, patient_id="P1", modality="DX", study_uid=put["cr"].study_uid)
    marked.SyntheticData = "YES"
    store.put(marked, source="cstore", source_ae="MODALITY")
    hidden = dataclasses.replace(cfg, qr=dataclasses.replace(cfg.qr, synthetic_only=True))
    (image,) = _find(hidden, store, "IMAGE", StudyInstanceUID=put["cr"].study_uid, SOPInstanceUID="", ModalitiesInStudy="",
                     NumberOfStudyRelatedInstances="", NumberOfPatientRelatedInstances="")
    assert (image.ModalitiesInStudy, image.NumberOfStudyRelatedInstances, image.NumberOfPatientRelatedInstances) == ("DX", 1, 1)
    everything = _find(cfg, store, "IMAGE", StudyInstanceUID=put["cr"].study_uid, SOPInstanceUID="", NumberOfStudyRelatedInstances="")
    assert [ds.NumberOfStudyRelatedInstances for ds in everything] == [3, 3, 3]


@pytest.mark.integration
def test_findscu_asks_for_study_keys_at_series_and_image_level(home, tmp_path):
    """dcmtk findscu with Modalities in Study and the study's counts at SERIES and IMAGE level: answered with
    the study's values over the network (these keys used to end the query with an IndexError)."""
    cfg = config_with_peers(home, [], **{"deid.enabled": False, "dicom.port": free_port(), "outbox.health_interval_s": 0})
    svc = RunningService(cfg, outbox=False)
    try:
        cr = phantom_dataset(16, 16, seed=1, patient_id="P7")
        dx = phantom_dataset(16, 16, seed=2, patient_id="P7", modality="DX", study_uid=cr.StudyInstanceUID)
        for ds in (cr, dx):
            svc.store.put(ds, source="cstore", source_ae="MODALITY")
        for level, unique, expected in (("SERIES", "SeriesInstanceUID", 2), ("IMAGE", "SOPInstanceUID", 2)):
            out = tmp_path / level
            out.mkdir()
            proc = subprocess.run([require_tool("findscu", "dcmtk"), "-S", "-X", "-od", str(out), "127.0.0.1", str(svc.port),
                                   "-k", f"QueryRetrieveLevel={level}", "-k", f"StudyInstanceUID={cr.StudyInstanceUID}", "-k", unique,
                                   "-k", "ModalitiesInStudy", "-k", "NumberOfStudyRelatedInstances", "-k", "NumberOfStudyRelatedSeries",
                                   "-k", "NumberOfPatientRelatedStudies"], capture_output=True, text=True, timeout=60)
            found = [pydicom.dcmread(p) for p in sorted(out.glob("rsp*.dcm"))]
            assert len(found) == expected, proc.stdout + proc.stderr
            for ds in found:
                assert sorted(ds.ModalitiesInStudy) == ["CR", "DX"], ds
                assert (ds.NumberOfStudyRelatedInstances, ds.NumberOfStudyRelatedSeries, ds.NumberOfPatientRelatedStudies) == (2, 2, 1)
    finally:
        svc.stop()


def test_synthetic_and_received_studies_answer_a_study_id(home):
    """Study ID (needed by a DICOMDIR's STUDY record): SYN<token> for a synthetic study, shared by its instances;
    a keyed dummy for a received, de-identified one (PS3.15 Table E.1-1 allows a dummy for Z)."""
    cfg = config_with_peers(home, [])
    store = Store(cfg)
    try:
        syn = write_synthetic_study(cfg, store, count=2)
        received = phantom_dataset(16, 16, seed=6)
        received.StudyID = "LOCAL-17"
        store.put(received, source="cstore", source_ae="MODALITY")
        studies = {ds.StudyInstanceUID: ds.StudyID for ds in _find(cfg, store, "STUDY", StudyInstanceUID="", StudyID="")}
        assert len(studies) == 2
        assert studies[syn.study_instance_uid].startswith("SYN") and len(studies[syn.study_instance_uid]) <= 16
        (other,) = [sid for uid, sid in studies.items() if uid != syn.study_instance_uid]
        assert other.startswith("ANON-") and other != "LOCAL-17"
        images = _find(cfg, store, "IMAGE", StudyInstanceUID=syn.study_instance_uid, SOPInstanceUID="")
        assert {store.read(ds.SOPInstanceUID).StudyID for ds in images} == {studies[syn.study_instance_uid]}
    finally:
        store.close()
