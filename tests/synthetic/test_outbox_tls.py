"""The outbox and C-ECHO over DICOM TLS (PS3.15 Annex B) to dcmtk's storescp +tls: per-peer
``tls``, ``tls_ca``, ``tls_cert``, ``tls_key`` and ``tls_name`` in ``[[dicom.peers]]``."""

from __future__ import annotations

import pydicom
import pytest

from service.archive.store import Store
from service.dicom.scu import echo
from service.synthetic.outbox import OutboxSender
from tests.helpers import make_config
from tests.synthetic.conftest import StoreSCP, write_synthetic_study
from tests.tls_certs import make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def tls_storescp(tmp_path, pki):
    # storescp requires and verifies our client certificate (-rc is its default with +tls).
    peer = StoreSCP(tmp_path / "received", extra=("+tls", str(pki.server.key), str(pki.server.cert), "+cf", str(pki.ca)))
    yield peer
    peer.stop()


def _config(home, port, pki, **peer):
    client = pki.clients["modality-a"]
    entry = {"ae_title": "STORESCP", "host": "127.0.0.1", "port": port, "tls": True, "tls_ca": str(pki.ca),
             "tls_cert": str(client.cert), "tls_key": str(client.key)}
    entry.update(peer)
    return make_config(home, **{"dicom.peers": [entry], "outbox.backoff_initial_s": 0.2, "outbox.backoff_max_s": 1.0,
                                "outbox.health_interval_s": 0})


def test_the_outbox_delivers_a_study_over_tls(home, tls_storescp, pki):
    cfg = _config(home, tls_storescp.port, pki)
    store = Store(cfg)
    sender = OutboxSender(cfg, store)
    try:
        out = write_synthetic_study(cfg, store, count=3, destination="STORESCP")
        sender.start()
        rows = sender.drain(timeout=60, sop_instance_uids=[i.sop_instance_uid for i in out.instances])
        assert [r.state for r in rows] == ["sent"] * 3, rows
        assert {pydicom.dcmread(p).SOPInstanceUID for p in tls_storescp.files()} == {i.sop_instance_uid for i in out.instances}
    finally:
        sender.stop()
        store.index.close()


def test_echo_over_tls_checks_the_peers_certificate(home, tls_storescp, pki):
    good = _config(home, tls_storescp.port, pki)
    assert echo(good, good.peer("STORESCP"), timeout=10).ok
    # A CA that did not sign storescp's certificate, and a name its certificate does not carry.
    for peer in ({"tls_ca": str(pki.rogue_ca)}, {"tls_name": "pacs.example.org"}):
        cfg = _config(home, tls_storescp.port, pki, **peer)
        result = echo(cfg, cfg.peer("STORESCP"), timeout=10)
        assert not result.ok and "certificate of 127.0.0.1" in result.detail and "not accepted" in result.detail, result.detail
    # Without our client certificate storescp refuses the handshake.
    cfg = _config(home, tls_storescp.port, pki, tls_cert="", tls_key="")
    result = echo(cfg, cfg.peer("STORESCP"), timeout=10)
    assert not result.ok and "client certificate" in result.detail, result.detail


def test_a_plain_peer_is_not_reached_over_tls_and_items_wait(home, tmp_path, pki):
    plain = StoreSCP(tmp_path / "plain")
    cfg = _config(home, plain.port, pki)
    store = Store(cfg)
    sender = OutboxSender(cfg, store)
    try:
        out = write_synthetic_study(cfg, store, count=1, destination="STORESCP")
        sender.start()
        from tests.synthetic.conftest import wait_for

        item = wait_for(lambda: next((r for r in sender.outbox.items() if r.attempts > 0), None), timeout=30)
        assert item is not None and item.state == "pending" and item.sop_instance_uid == out.instances[0].sop_instance_uid
        assert plain.files() == []
    finally:
        sender.stop()
        store.index.close()
        plain.stop()


def test_c_find_and_c_move_over_tls_both_ways(home, tls_storescp, pki, tmp_path):
    """A Query/Retrieve association over TLS to our SCP (served by pynetdicom's reactors: findscu +tls, and
    pynetdicom for C-MOVE, as dcmtk 3.6.7's movescu has no TLS); our C-MOVE sub-association is TLS too."""
    import ssl
    import subprocess

    from pydicom.dataset import Dataset
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove

    from tests.helpers import require_tool
    from tests.synthetic.conftest import RunningService

    cfg = _config(home, tls_storescp.port, pki)
    cfg = make_config(home, **{"dicom.peers": [dict(p.__dict__) for p in cfg.dicom.peers], "dicom.tls_cert": str(pki.server.cert),
                               "dicom.tls_key": str(pki.server.key), "dicom.tls_ca": str(pki.ca), "dicom.tls_require_client_cert": True})
    svc = RunningService(cfg, outbox=False)
    try:
        syn = write_synthetic_study(cfg, svc.store, count=2)
        client = pki.clients["modality-b"]
        found = subprocess.run([require_tool("findscu", "dcmtk"), "+tls", str(client.key), str(client.cert), "+cf", str(pki.ca),
                                "-S", "-aec", svc.ae_title, "127.0.0.1", str(svc.port), "-k", "QueryRetrieveLevel=STUDY",
                                "-k", f"StudyInstanceUID={syn.study_instance_uid}", "-k", "NumberOfStudyRelatedInstances"],
                               capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert syn.study_instance_uid in found.stdout + found.stderr, found.stdout + found.stderr

        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca))
        context.load_cert_chain(str(client.cert), str(client.key))
        ae = AE(ae_title="MOVESCU")
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        try:
            assoc = ae.associate("127.0.0.1", svc.port, ae_title=svc.ae_title, tls_args=(context, "localhost"))
            assert assoc.is_established
            query = Dataset()
            query.QueryRetrieveLevel = "STUDY"
            query.StudyInstanceUID = syn.study_instance_uid
            statuses = [int(status.Status) for status, _ in assoc.send_c_move(query, "STORESCP", StudyRootQueryRetrieveInformationModelMove)]
            assoc.release()
        finally:
            ae.shutdown()
        assert statuses[-1] == 0, statuses
        moved = {pydicom.dcmread(p).SOPInstanceUID for p in tls_storescp.files()}
        assert moved == {i.sop_instance_uid for i in syn.instances}
    finally:
        svc.stop()
