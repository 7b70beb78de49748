"""QIDO-RS (PS3.18 10.6) with dicomweb-client, and the same answers as the C-FIND engine."""

from __future__ import annotations

import pytest
import requests
from pydicom.dataset import Dataset

from service.archive.query import QueryEngine
from service.dicomweb import qido

pytestmark = pytest.mark.integration


def _uids(results, tag="0020000D"):
    return sorted(r[tag]["Value"][0] for r in results)


def test_search_studies_returns_every_study_with_the_default_attributes(service):
    client = service.client()
    studies = client.search_for_studies()
    s = service.studies
    assert _uids(studies) == sorted([s["a"].StudyInstanceUID, s["b"].StudyInstanceUID, s["synthetic"].study_instance_uid])
    by_uid = {r["0020000D"]["Value"][0]: r for r in studies}
    b = by_uid[s["b"].StudyInstanceUID]
    assert b["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "ROE^RICHARD"}]}
    assert b["00201208"]["Value"] == [2]  # Number of Study Related Instances
    assert b["00080061"]["Value"] == ["CR"]  # Modalities in Study
    assert b["00081190"]["Value"][0] == f"{service.url}/studies/{s['b'].StudyInstanceUID}"  # Retrieve URL
    assert "00080052" not in b and "00080054" not in b  # C-FIND's Query/Retrieve Level and Retrieve AE Title


def test_matching_is_the_c_find_engine_s(service):
    """Wildcards, ranges, person names: the same matches as the engine C-FIND uses, on the same keys."""
    client = service.client()
    queries = [
        {"PatientName": "roe*"},
        {"StudyDate": "20240201-20240301"},
        {"StudyDate": "-20240131"},
        {"ModalitiesInStudy": "CR"},
        {"SyntheticData": "YES"},
        {"SyntheticData": "NO"},
        {"PatientID": "P?"},
    ]
    engine = QueryEngine(service.store.index, service.store.root, "SYNTHPACS")
    for query in queries:
        ident = Dataset()
        ident.StudyInstanceUID = ""
        for k, v in query.items():
            setattr(ident, k, v)
        expected = sorted(ds.StudyInstanceUID for ds in engine.find(ident, "STUDY"))
        got = _uids(client.search_for_studies(search_filters=query))
        assert got == expected, query
        assert got or query == {"PatientName": "nobody"}


def test_series_and_instance_forms(service):
    client = service.client()
    s = service.studies
    b_study, b_series = s["b"].StudyInstanceUID, s["b"].SeriesInstanceUID
    series = client.search_for_series(study_instance_uid=b_study)
    assert _uids(series, "0020000E") == [b_series]
    assert series[0]["00201209"]["Value"] == [2]  # Number of Series Related Instances
    assert "00100010" not in series[0]  # study-level defaults only in the all-series form
    all_series = client.search_for_series()
    assert len(all_series) == 3 and all("00100010" in r for r in all_series)
    instances = client.search_for_instances(study_instance_uid=b_study, series_instance_uid=b_series)
    assert sorted(r["00080018"]["Value"][0] for r in instances) == sorted([s["b"].SOPInstanceUID, s["b2"].SOPInstanceUID])
    assert {r["00280010"]["Value"][0] for r in instances} == {48}  # Rows
    assert instances[0]["00081190"]["Value"][0].endswith(f"/series/{b_series}/instances/{instances[0]['00080018']['Value'][0]}")
    assert len(client.search_for_instances(study_instance_uid=b_study)) == 2
    assert len(client.search_for_instances()) == 5
    assert len(client.search_for_instances(search_filters={"SOPInstanceUID": s["a"].SOPInstanceUID})) == 1


def test_includefield_limit_offset(service):
    client = service.client()
    some = client.search_for_studies(fields=["StudyDescription", "00100030", "SyntheticData"])
    assert all("00100030" in r and "0008001C" in r for r in some)
    every = client.search_for_studies(fields=["all"])
    assert all("00081030" in r and "0008001C" in r and "00201206" in r for r in every)
    all_uids = _uids(client.search_for_studies())
    first = client.search_for_studies(limit=2)
    rest = client.search_for_studies(offset=2)
    assert len(first) == 2 and len(rest) == 1
    assert sorted(_uids(first) + _uids(rest)) == all_uids
    assert client.search_for_studies(offset=5) == []


def test_uid_lists_take_commas(service):
    s = service.studies
    r = requests.get(f"{service.url}/studies", params={"StudyInstanceUID": f"{s['a'].StudyInstanceUID},{s['b'].StudyInstanceUID}"})
    assert r.status_code == 200 and len(r.json()) == 2
    assert r.headers["content-type"].startswith("application/dicom+json")


def test_sequence_keys_and_tags_in_hex(service):
    r = requests.get(f"{service.url}/studies", params={"00100020": "P1", "includefield": "ProcedureCodeSequence"})
    assert r.status_code == 200
    (match,) = r.json()
    assert match["00081032"] == {"vr": "SQ"}


def test_fuzzy_matching_is_declined_with_a_warning(service):
    r = requests.get(f"{service.url}/studies", params={"PatientName": "ROE*", "fuzzymatching": "true"})
    assert r.status_code == 200 and len(r.json()) == 1
    assert "fuzzymatching" in r.headers["warning"]
    assert "warning" not in requests.get(f"{service.url}/studies", params={"fuzzymatching": "false"}).headers


def test_no_match_is_200_and_an_empty_array(service):
    r = requests.get(f"{service.url}/studies", params={"PatientID": "nobody"})
    assert r.status_code == 200 and r.json() == []


def test_server_limit_warns(home):
    from tests.dicomweb.conftest import Service, fill_archive
    from tests.helpers import make_config

    cfg = make_config(home, **{"deid.enabled": False, "dicomweb.default_limit": 2})
    svc = Service(cfg)
    try:
        fill_archive(cfg, svc.store)
        r = requests.get(f"{svc.url}/studies")
        assert len(r.json()) == 2 and "exceeded" in r.headers["warning"]
        assert len(requests.get(f"{svc.url}/studies", params={"limit": 3}).json()) == 3
    finally:
        svc.close()


@pytest.mark.parametrize("params, words", [
    ({"NoSuchKeyword": "x"}, "neither a DICOM keyword"),
    ({"limit": "-1"}, "limit"),
    ({"offset": "many"}, "offset"),
    ({"fuzzymatching": "maybe"}, "fuzzymatching"),
    ({"Rows": "tall"}, "number"),
    ({"PatientName.FamilyName": "x"}, "not a sequence"),
])
def test_bad_queries_are_400(service, params, words):
    r = requests.get(f"{service.url}/studies", params=params)
    assert r.status_code == 400 and words in r.text


def test_wrong_accept_is_406(service):
    r = requests.get(f"{service.url}/studies", headers={"Accept": 'multipart/related; type="application/dicom+xml"'})
    assert r.status_code == 406
    assert requests.get(f"{service.url}/studies", headers={"Accept": "application/json"}).headers["content-type"].startswith("application/json")


@pytest.mark.parametrize("search_name, params, expected", [
    ("ALL_INSTANCES", [("SOPInstanceUID", "1.2.3")], True),
    ("ALL_INSTANCES", [("00080018", "1.2.3"), ("includefield", "all"), ("limit", "1")], True),
    ("STUDIES", [("StudyInstanceUID", "1.2.3"), ("PatientID", "P1")], True),
    ("ALL_INSTANCES", [("SOPInstanceUID", "1.2.3,1.2.4")], False),  # a UID list
    ("ALL_INSTANCES", [("SOPInstanceUID", "1.2.3\\1.2.4")], False),
    ("ALL_INSTANCES", [("SOPInstanceUID", "1.2.3"), ("SOPInstanceUID", "1.2.4")], False),
    ("ALL_INSTANCES", [("SOPInstanceUID", "1.2.*")], False),
    ("ALL_INSTANCES", [("SOPInstanceUID", "")], False),
    ("STUDIES", [("SOPInstanceUID", "1.2.3")], False),  # not the unique key of the study level
    ("STUDY_SERIES", [], False),
    ("STUDIES", [("NoSuchKeyword", "x"), ("StudyInstanceUID", "1.2.3")], False),  # left to the search's 400
])
def test_searches_for_one_entity_by_uid_are_recognised(search_name, params, expected):
    """These are answered on the event loop (service/dicomweb/app.py); anything else in a worker thread."""
    assert qido.at_most_one_match(getattr(qido, search_name), params) is expected
