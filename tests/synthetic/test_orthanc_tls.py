"""DICOM TLS both ways with Orthanc (DicomTlsEnabled, certificates required on both sides): our outbox
stores into Orthanc over TLS, and Orthanc echoes and stores into our SCP over TLS."""

from __future__ import annotations

import io

import pytest

from service.data.phantom import phantom_dataset
from tests.helpers import free_port, make_config
from tests.peers import start_orthanc
from tests.synthetic.conftest import RunningService, wait_for, write_synthetic_study
from tests.tls_certs import make_pki

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_pair(tmp_path, home):
    pki = make_pki(tmp_path / "pki")
    our_port = free_port()
    orthanc = start_orthanc(
        tmp_path / "orthanc",
        modalities={"synthpacs": {"AET": "SYNTHPACS", "Host": "127.0.0.1", "Port": our_port, "UseDicomTls": True}},
        extra={"DicomTlsEnabled": True, "DicomTlsCertificate": str(pki.server.cert), "DicomTlsPrivateKey": str(pki.server.key),
               "DicomTlsTrustedCertificates": str(pki.ca), "DicomTlsRemoteCertificateRequired": True},
    )
    client = pki.clients["modality-a"]
    cfg = make_config(home, **{
        "dicom.port": our_port, "dicom.tls_cert": str(pki.server.cert), "dicom.tls_key": str(pki.server.key),
        "dicom.tls_ca": str(pki.ca), "dicom.tls_require_client_cert": True, "dicom.allow_loopback": False,
        "outbox.health_interval_s": 0,
        # Orthanc presents its certificate (CN localhost, SAN 127.0.0.1): the peer's host names it.
        "dicom.peers": [{"ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port, "tls": True,
                         "tls_ca": str(pki.ca), "tls_cert": str(client.cert), "tls_key": str(client.key)}],
    })
    svc = RunningService(cfg)
    yield svc, orthanc
    svc.stop()
    orthanc.stop()


def test_outbox_to_orthanc_and_orthanc_to_us_over_tls(tls_pair):
    svc, orthanc = tls_pair
    out = write_synthetic_study(svc.cfg, svc.store, count=2, destination="ORTHANC")
    rows = svc.sender.drain(timeout=60, sop_instance_uids=[i.sop_instance_uid for i in out.instances])
    assert [r.state for r in rows] == ["sent"] * 2, rows
    assert len(orthanc.instances()) == 2

    assert orthanc.post("/modalities/synthpacs/echo", {}) is not None
    ds = phantom_dataset(32, 32, seed=7)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    uploaded = orthanc.rest("POST", "/instances", buf.getvalue())
    orthanc.post("/modalities/synthpacs/store", {"Resources": [uploaded["ID"]], "Synchronous": True})
    assert wait_for(lambda: svc.store.index.stats()["instances"] == 3, timeout=30)
