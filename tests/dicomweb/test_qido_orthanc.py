"""QIDO-RS against the oracle: Orthanc with its DICOMweb plugin (Debian orthanc-dicomweb) holding the same
studies answers the same queries. Matched UIDs must agree, and so must every attribute both return; what
only one side returns is limited to the differences listed as intended in docs/conformance.md 10.4."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request

import pytest

from tests.dicomweb.conftest import Service, fill_archive
from tests.helpers import make_config
from tests.peers import start_orthanc

pytestmark = [pytest.mark.integration]

STUDY, SERIES, INSTANCE, RETRIEVE_URL = "0020000D", "0020000E", "00080018", "00081190"

# Attributes only one side returns (docs/conformance.md 10.4): synthpacs adds what PS3.18 Table 10.6.3-3/4/5
# lists (Instance Availability, Timezone Offset From UTC), Study Description, the study's attributes at
# series and instance level, Performed Procedure Step Start Date/Time, Number of Frames; Orthanc always
# sends Specific Character Set.
ONLY_SYNTHPACS = {
    "00080056", "00080201", "00081030", "00080061", "00201206", "00201208", "00201209", "00280008", "00400244", "00400245",
    "00400275", "0008001C",
}
ONLY_ORTHANC = {"00080005"}
# Within one study (/studies/{s}/series, /studies/{s}/instances) or series, synthpacs answers the levels below
# the path (PS3.18 Table 10.6.3-2: the client named the study); Orthanc repeats the study's (series') attributes.
STUDY_ATTRIBUTES = {"00080020", "00080030", "00080050", "00080090", "00100010", "00100020", "00100030", "00100040", "00200010"}
SERIES_ATTRIBUTES = {"00080060", "0008103E", "00200011"}


def _only_orthanc(path: str) -> set[str]:
    scoped = path.split("?")[0]
    return ONLY_ORTHANC | (STUDY_ATTRIBUTES if scoped.startswith("/studies/") else set()) | (
        SERIES_ATTRIBUTES if "/series/" in scoped else set())


def _queries(studies: dict) -> list[tuple[str, str, str]]:
    """(id, path and query, the UID that identifies each match)."""
    a, b = studies["a"], studies["b"]
    syn = studies["synthetic"].study_instance_uid
    return [
        ("studies", "/studies", STUDY),
        ("studies-name-wildcard", "/studies?PatientName=ROE*", STUDY),
        ("studies-tag", "/studies?00100020=P2", STUDY),
        ("studies-patient-id", "/studies?PatientID=P2", STUDY),
        ("studies-date-range", "/studies?StudyDate=20240101-20240131", STUDY),
        ("studies-date-open-range", "/studies?StudyDate=20240201-", STUDY),
        ("studies-modalities", "/studies?ModalitiesInStudy=OT", STUDY),
        ("studies-uid-list", f"/studies?StudyInstanceUID={a.StudyInstanceUID},{syn}", STUDY),
        ("studies-includefield", "/studies?includefield=PatientSex&includefield=StudyDescription", STUDY),
        # What OHIF Viewer 2's study list asks (Modality at study level: the study's modalities in both).
        ("studies-includefield-modality", "/studies?includefield=00081030,00080060&fuzzymatching=false", STUDY),
        ("studies-none", "/studies?PatientID=NOBODY", STUDY),
        ("series", "/series", SERIES),
        ("series-modality", "/series?Modality=CR&includefield=BodyPartExamined", SERIES),
        ("series-body-part", "/series?BodyPartExamined=TIBIA", SERIES),
        ("study-series", f"/studies/{b.StudyInstanceUID}/series", SERIES),
        ("instances", "/instances", INSTANCE),
        ("study-instances", f"/studies/{b.StudyInstanceUID}/instances", INSTANCE),
        ("series-instances", f"/studies/{b.StudyInstanceUID}/series/{b.SeriesInstanceUID}/instances", INSTANCE),
        ("instances-number", f"/studies/{b.StudyInstanceUID}/instances?InstanceNumber=2", INSTANCE),
        ("instances-sop-class", "/instances?SOPClassUID=1.2.840.10008.5.1.4.1.1.7", INSTANCE),
    ]


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """synthpacs' DICOMweb and Orthanc's DICOMweb plugin over the same instances (the stored files)."""
    home = tmp_path_factory.mktemp("oracle-home")
    orthanc = start_orthanc(tmp_path_factory.mktemp("orthanc"), dicomweb=True)
    svc = Service(make_config(home, **{"deid.enabled": False}))
    try:
        studies = fill_archive(svc.cfg, svc.store)
        for record in svc.store.index.instances():
            orthanc.rest("POST", "/instances", svc.store.path_of(record).read_bytes())
        yield svc, orthanc, studies
    finally:
        svc.close()
        orthanc.stop()


def _qido(base: str, path: str) -> list[dict]:
    req = urllib.request.Request(base + path, headers={"Accept": "application/dicom+json"})
    with urllib.request.urlopen(req, timeout=60) as resp:
        body = resp.read()
    return json.loads(body) if body.strip() else []


def _uid(match: dict, tag: str) -> str:
    return match[tag]["Value"][0]


def _path_of(url: str) -> str:
    return urllib.parse.urlparse(url).path.split("/dicom-web", 1)[1].rstrip("/")


def test_qido_answers_agree_with_orthancs_dicomweb_plugin(both):
    svc, orthanc, studies = both
    disagreements: dict[str, list[str]] = {}
    only_ours: set[str] = set()
    for name, path, uid_tag in _queries(studies):
        ours = {_uid(m, uid_tag): m for m in _qido(svc.url, path)}
        theirs = {_uid(m, uid_tag): m for m in _qido(orthanc.url + "/dicom-web", path)}
        problems = []
        if set(ours) != set(theirs):
            problems.append(f"matches differ: synthpacs {sorted(ours)} Orthanc {sorted(theirs)}")
        for uid in set(ours) & set(theirs):
            a, b = ours[uid], theirs[uid]
            only_ours |= set(a) - set(b)
            unexpected = set(b) - set(a) - _only_orthanc(path)
            if unexpected:
                problems.append(f"only Orthanc returns {sorted(unexpected)}")
            for tag in set(a) & set(b):
                if tag == RETRIEVE_URL:  # each server's own base URL; the resource path must agree
                    same = [_path_of(u) for u in a[tag]["Value"]] == [_path_of(u) for u in b[tag]["Value"]]
                else:
                    same = a[tag].get("Value") == b[tag].get("Value") and a[tag]["vr"] == b[tag]["vr"]
                if not same:
                    problems.append(f"{tag} of {uid[-8:]}: synthpacs {a[tag]} Orthanc {b[tag]}")
        if problems:
            disagreements[name] = problems
    assert disagreements == {}
    assert only_ours <= ONLY_SYNTHPACS, sorted(only_ours - ONLY_SYNTHPACS)


def test_limit_and_offset_page_through_the_same_matches(both):
    svc, orthanc, studies = both
    for base in (svc.url, orthanc.url + "/dicom-web"):
        every = {_uid(m, INSTANCE) for m in _qido(base, "/instances")}
        pages = [_qido(base, f"/instances?limit=2&offset={offset}") for offset in (0, 2, 4)]
        assert [len(p) for p in pages] == [2, 2, 1], base
        assert {_uid(m, INSTANCE) for page in pages for m in page} == every, base


def test_the_intended_differences_are_what_the_conformance_statement_says(both):
    """docs/conformance.md 10.4. Synthetic Data (0008,001C) is computed by synthpacs for every study (YES/NO,
    matched); Orthanc 1.7 ignores the key and returns every study. An exact Person Name with its component
    separator (DOE^JANE) matches in synthpacs (PS3.4 C.2.2.2.1); Orthanc 1.7 finds nothing (a wildcard works
    in both)."""
    svc, orthanc, studies = both
    theirs = orthanc.url + "/dicom-web"
    everything = {_uid(m, STUDY) for m in _qido(theirs, "/studies")}
    real = {_uid(m, STUDY) for m in _qido(svc.url, "/studies?SyntheticData=NO")}
    assert real == {studies["a"].StudyInstanceUID, studies["b"].StudyInstanceUID}
    (ours,) = _qido(svc.url, "/studies?SyntheticData=YES")
    assert _uid(ours, STUDY) == studies["synthetic"].study_instance_uid and ours["0008001C"]["Value"] == ["YES"]
    for value in ("NO", "YES"):
        assert {_uid(m, STUDY) for m in _qido(theirs, f"/studies?SyntheticData={value}")} == everything
    (jane,) = _qido(svc.url, "/studies?PatientName=DOE%5EJANE")
    assert _uid(jane, STUDY) == studies["a"].StudyInstanceUID
    assert _qido(theirs, "/studies?PatientName=DOE%5EJANE") == []
    assert [_uid(m, STUDY) for m in _qido(theirs, "/studies?PatientName=DOE*")] == [studies["a"].StudyInstanceUID]
