"""Security of the DICOMweb service: bearer tokens, TLS, binding, UIDs in paths, CORS, visibility, logs."""

from __future__ import annotations

import http.client
import subprocess
from pathlib import Path

import pytest
import requests

from service.config import ConfigError
from service.data.phantom import phantom_dataset
from service.dicomweb.server import DicomwebServer
from tests.dicomweb.conftest import Service, fill_archive, part10
from tests.helpers import make_config, require_tool

pytestmark = pytest.mark.integration


def test_bearer_tokens_from_the_grpc_token_store(home):
    svc = Service(make_config(home, **{"grpc.tokens": ["s3cret-token", "other"]}))
    try:
        r = requests.get(svc.url + "/studies")
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert requests.get(svc.url + "/studies", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert requests.get(svc.url + "/studies", headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
        assert requests.post(svc.url + "/studies", data=b"x", headers={"Content-Type": "multipart/related; boundary=x"}).status_code == 401
        ok = requests.get(svc.url + "/studies", headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json() == []
        client = svc.client(headers={"Authorization": "Bearer other"})
        assert client.search_for_studies() == []
    finally:
        svc.close()


def test_non_loopback_bind_needs_tokens_or_an_explicit_choice(home):
    cfg = make_config(home, **{"dicomweb.bind": "0.0.0.0"})
    with pytest.raises(ConfigError, match="not a loopback address"):
        DicomwebServer(cfg, store=None).start()
    for allowed in ({"grpc.tokens": ["t"]}, {"dicomweb.allow_unauthenticated_remote": True}):
        server = DicomwebServer(make_config(home, **{"dicomweb.bind": "0.0.0.0", **allowed}), store=None).start()
        server.stop()


def test_tls(home, tmp_path: Path):
    require_tool("openssl", "openssl")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"], cwd=tmp_path, check=True, capture_output=True, timeout=60)
    svc = Service(make_config(home, **{"dicomweb.tls_cert": str(tmp_path / "cert.pem"), "dicomweb.tls_key": str(tmp_path / "key.pem")}))
    try:
        assert svc.url.startswith("https://")
        assert requests.get(svc.url + "/studies", verify=str(tmp_path / "cert.pem")).status_code == 200
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(svc.url.replace("https://", "http://") + "/studies", timeout=5)
    finally:
        svc.close()


@pytest.mark.parametrize("path", [
    "/studies/..%2F..%2Fetc%2Fpasswd",
    "/studies/1.2.3%2F..%2F..",
    "/studies/..",
    "/studies/1.2.3/series/abc/instances/1.2",
    "/studies/1.02.3",
    "/studies/" + "1." * 40 + "1",
])
def test_path_traversal_in_uids_is_refused(home, path):
    svc = Service(make_config(home))
    try:
        host, port = svc.server.address
        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/dicom-web" + path)  # sent as written: requests would normalise the dots
        status = conn.getresponse().status
        conn.close()
        assert status in (400, 404)
        assert status == 400 or "%2F" in path or path.endswith("/..")
        assert requests.get(svc.url + "/studies").status_code == 200
    finally:
        svc.close()


def test_cors_for_a_viewer_on_another_origin(home):
    svc = Service(make_config(home, **{"dicomweb.cors_origins": ["http://viewer.example"], "grpc.tokens": ["t"]}))
    try:
        pre = requests.options(svc.url + "/studies", headers={
            "Origin": "http://viewer.example", "Access-Control-Request-Method": "GET",
            "Access-Control-Request-Headers": "authorization"})
        assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "http://viewer.example"
        r = requests.get(svc.url + "/studies", headers={"Origin": "http://viewer.example", "Authorization": "Bearer t"})
        assert r.headers["access-control-allow-origin"] == "http://viewer.example"
        other = requests.get(svc.url + "/studies", headers={"Origin": "http://evil.example", "Authorization": "Bearer t"})
        assert "access-control-allow-origin" not in other.headers
    finally:
        svc.close()


def test_synthetic_only_hides_received_studies(tmp_path):
    cfg = make_config(tmp_path / "h", **{"deid.enabled": False, "qr.synthetic_only": True})
    svc = Service(cfg)
    try:
        studies = fill_archive(cfg, svc.store)
        found = [r["0020000D"]["Value"][0] for r in requests.get(svc.url + "/studies").json()]
        assert found == [studies["synthetic"].study_instance_uid]
        a = studies["a"]
        assert requests.get(f"{svc.url}/studies/{a.StudyInstanceUID}").status_code == 404
        assert requests.get(f"{svc.url}/studies/{a.StudyInstanceUID}/metadata").status_code == 404
        assert requests.get(f"{svc.url}/instances", params={"PatientID": "P1"}).json() == []
    finally:
        svc.close()


def test_no_patient_data_in_logs(home, capsys):
    svc = Service(make_config(home))
    try:
        ds = phantom_dataset(32, 32, seed=21, patient_name="SECRET^PATIENT", patient_id="MRN-99887")
        boundary = "b0"
        body = f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part10(ds) + f"\r\n--{boundary}--\r\n".encode()
        requests.post(svc.url + "/studies", data=body, headers={"Content-Type": f"multipart/related; type=\"application/dicom\"; boundary={boundary}"})
        requests.get(svc.url + "/studies", params={"PatientName": "SECRET*"})
        requests.get(f"{svc.url}/studies/{ds.StudyInstanceUID}")
    finally:
        svc.close()
    out = capsys.readouterr()
    logs = out.out + out.err
    assert "stow_request" in logs
    for secret in ("SECRET", "MRN-99887", ds.StudyInstanceUID, ds.SOPInstanceUID):
        assert secret not in logs
