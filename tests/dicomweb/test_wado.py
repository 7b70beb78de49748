"""WADO-RS (PS3.18 10.4) with dicomweb-client and raw HTTP: instances byte for byte, metadata, frames, rendered."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest
import requests
from PIL import Image

from service.dicomweb import media

pytestmark = pytest.mark.integration

ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def parts_of(response: requests.Response) -> list[tuple[dict, bytes]]:
    ctype = media.parse_media_type(response.headers["content-type"])
    body = response.content
    return [(p.headers, body[p.start:p.end]) for p in media.split_parts(body, media.boundary_of(ctype))]


def _stored_bytes(service, sop_uid: str) -> bytes:
    return service.store.path_of(service.store.index.get(sop_uid)).read_bytes()


def _url(service, ds) -> str:
    return f"{service.url}/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/instances/{ds.SOPInstanceUID}"


def test_instances_come_byte_identical_from_disk(service):
    b, b2 = service.studies["b"], service.studies["b2"]
    r = requests.get(f"{service.url}/studies/{b.StudyInstanceUID}", headers={"Accept": ANY_SYNTAX})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith('multipart/related; type="application/dicom"')
    parts = parts_of(r)
    assert [body for _, body in parts] == [_stored_bytes(service, b.SOPInstanceUID), _stored_bytes(service, b2.SOPInstanceUID)]
    assert all(h["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1" for h, _ in parts)
    single = requests.get(_url(service, b), headers={"Accept": "application/dicom"})
    assert single.content == _stored_bytes(service, b.SOPInstanceUID)


@pytest.mark.parametrize("inline_bytes", [1 << 20, 0], ids=["read-on-the-event-loop", "read-in-a-worker-thread"])
def test_a_single_instance_is_the_stored_file_whichever_thread_reads_it(service, monkeypatch, inline_bytes):
    from service.dicomweb import app

    monkeypatch.setattr(app, "INLINE_BYTES", inline_bytes)
    a = service.studies["a"]
    stored = _stored_bytes(service, a.SOPInstanceUID)
    r = requests.get(_url(service, a), headers={"Accept": ANY_SYNTAX})
    assert r.status_code == 200
    ((headers, body),) = parts_of(r)
    assert body == stored
    assert headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    assert headers["content-location"] == _url(service, a)
    assert r.content.endswith(b"--\r\n") and int(r.headers["content-length"]) == len(r.content)
    single = requests.get(_url(service, a), headers={"Accept": "application/dicom"})
    assert single.status_code == 200 and single.content == stored
    assert single.headers["content-type"] == "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    url = _url(service, a)
    unknown = url[:-1] + ("8" if url.endswith("9") else "9")  # another UID, whatever digit the random one ends in
    assert requests.get(unknown, headers={"Accept": ANY_SYNTAX}).status_code == 404
    assert requests.get(_url(service, a), headers={"Accept": "image/png"}).status_code == 406


def test_dicomweb_client_retrieves_study_series_and_instance(service):
    client = service.client()
    syn = service.studies["synthetic"]
    study = client.retrieve_study(syn.study_instance_uid)
    assert len(study) == 2 and all(ds.SyntheticData == "YES" for ds in study)
    series = client.retrieve_series(syn.study_instance_uid, syn.series_instance_uid)
    assert sorted(ds.SOPInstanceUID for ds in series) == sorted(ds.SOPInstanceUID for ds in study)
    a = service.studies["a"]
    ds = client.retrieve_instance(a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID)
    assert np.array_equal(ds.pixel_array, a.pixel_array)
    explicit = client.retrieve_instance(a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID,
                                        media_types=(("application/dicom", "1.2.840.10008.1.2.1"),))
    assert explicit.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"


def test_transcoding_to_implicit_vr(service):
    a = service.studies["a"]
    r = requests.get(_url(service, a), headers={"Accept": 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2'})
    assert r.status_code == 200
    ((headers, body),) = parts_of(r)
    assert headers["content-type"].endswith("transfer-syntax=1.2.840.10008.1.2")
    ds = pydicom.dcmread(io.BytesIO(body))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2" and np.array_equal(ds.pixel_array, a.pixel_array)


def test_metadata_has_bulk_data_uris_that_resolve(service):
    client = service.client()
    b = service.studies["b"]
    metadata = client.retrieve_study_metadata(b.StudyInstanceUID)
    assert len(metadata) == 2
    first = next(m for m in metadata if m["00080018"]["Value"][0] == b.SOPInstanceUID)
    assert first["00100010"]["Value"][0]["Alphabetic"] == "ROE^RICHARD"
    uri = first["7FE00010"]["BulkDataURI"]
    assert uri == _url(service, b) + "/bulk/7FE00010"
    (value,) = client.retrieve_bulkdata(uri)
    assert value == b.PixelData
    assert len(client.retrieve_series_metadata(b.StudyInstanceUID, b.SeriesInstanceUID)) == 2
    one = client.retrieve_instance_metadata(b.StudyInstanceUID, b.SeriesInstanceUID, b.SOPInstanceUID)
    assert one["00280010"]["Value"] == [48]


def test_frames_uncompressed(service):
    client = service.client()
    a = service.studies["a"]
    (frame,) = client.retrieve_instance_frames(a.StudyInstanceUID, a.SeriesInstanceUID, a.SOPInstanceUID, frame_numbers=[1])
    assert frame == a.PixelData
    r = requests.get(_url(service, a) + "/frames/2", headers={"Accept": 'multipart/related; type="application/octet-stream"'})
    assert r.status_code == 404
    # The parameter unquoted, as OHIF Viewer and PS3.18's own examples write it (a "/" is not a token character).
    r = requests.get(_url(service, a) + "/frames/1", headers={"Accept": "multipart/related; type=application/octet-stream; transfer-syntax=*"})
    assert r.status_code == 200
    ((headers, value),) = parts_of(r)
    assert value == a.PixelData and headers["content-type"].startswith("application/octet-stream")
    assert requests.get(_url(service, a) + "/frames/x").status_code == 400


def test_rendered_jpeg_and_png_with_window_and_viewport(service):
    client = service.client()
    b = service.studies["b"]
    jpeg = client.retrieve_instance_rendered(b.StudyInstanceUID, b.SeriesInstanceUID, b.SOPInstanceUID)
    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (40, 48)
    r = requests.get(_url(service, b) + "/rendered", params={"viewport": "20,20", "window": "100,50,linear"},
                     headers={"Accept": "image/png"})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    small = Image.open(io.BytesIO(r.content))
    assert small.format == "PNG" and max(small.size) == 20 and small.size[0] < small.size[1]
    middle = float(np.median(b.pixel_array))
    wide = requests.get(_url(service, b) + "/rendered", params={"window": f"{middle},200000"}, headers={"Accept": "image/png"})
    narrow = requests.get(_url(service, b) + "/rendered", params={"window": f"{middle},2"}, headers={"Accept": "image/png"})
    assert np.asarray(Image.open(io.BytesIO(wide.content))).std() < np.asarray(Image.open(io.BytesIO(narrow.content))).std()
    frame = requests.get(_url(service, b) + "/frames/1/rendered", headers={"Accept": "image/jpeg"})
    assert frame.status_code == 200 and frame.content[:2] == b"\xff\xd8"


def test_thumbnails(service):
    syn = service.studies["synthetic"]
    for path in (f"/studies/{syn.study_instance_uid}/thumbnail",
                 f"/studies/{syn.study_instance_uid}/series/{syn.series_instance_uid}/thumbnail"):
        r = requests.get(service.url + path)
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert max(Image.open(io.BytesIO(r.content)).size) == 128


@pytest.mark.parametrize("suffix, accept", [
    ("", 'multipart/related; type="application/dicom+xml"'),
    ("", 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.4.90'),
    ("/metadata", "application/dicom+xml"),
    ("/rendered", "image/gif"),
    ("/frames/1", 'multipart/related; type="image/jp2"'),
    ("/bulk/7FE00010", "text/plain"),
])
def test_wrong_accept_is_406(service, suffix, accept):
    r = requests.get(_url(service, service.studies["a"]) + suffix, headers={"Accept": accept})
    assert r.status_code == 406, r.text


@pytest.mark.parametrize("path", [
    "/studies/1.2.3.4",
    "/studies/1.2.3.4/series/1.2.3",
    "/studies/1.2.3.4/metadata",
    "/studies/1.2.3.4/series/1.2.3/instances/1.2.5/frames/1",
    "/studies/1.2.3.4/thumbnail",
])
def test_unknown_uids_are_404(service, path):
    assert requests.get(service.url + path).status_code == 404


def test_bulk_of_an_absent_tag_is_404(service):
    assert requests.get(_url(service, service.studies["a"]) + "/bulk/00420011").status_code == 404


@pytest.mark.parametrize("params", [{"window": "1,0"}, {"viewport": "0,10"}, {"viewport": "a,b"}, {"quality": "101"},
                                    {"viewport": "10,10,0,0,1000,1000"}])
def test_bad_render_parameters_are_400(service, params):
    assert requests.get(_url(service, service.studies["a"]) + "/rendered", params=params).status_code == 400
