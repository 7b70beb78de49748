"""DICOM TLS (PS3.15 Annex B, BCP 195) on our SCP, against dcmtk's echoscu/storescu +tls and pynetdicom.

A throwaway CA signs the server and client certificates (tests/tls_certs.py). What a security review
checks: TLS callers with a trusted certificate are served; plain TCP callers, callers without a
certificate (when one is required) and callers with a certificate from another CA are refused; a listed
AE title must present its own certificate; a caller that never finishes its handshake holds up nobody.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import threading

import pytest
from prometheus_client import REGISTRY
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from service.cli import main
from service.config import ConfigError
from service.dicom.tls import server_context
from tests.helpers import make_config, require_tool
from tests.ingest.util import phantom_files
from tests.peers import RunningSCP
from tests.tls_certs import make_pki

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


def _tls_config(home, pki, **overrides):
    settings = {
        "dicom.tls_cert": str(pki.server.cert), "dicom.tls_key": str(pki.server.key), "dicom.tls_ca": str(pki.ca),
        "dicom.tls_require_client_cert": True,
    }
    settings.update(overrides)
    return make_config(home, **settings)


@pytest.fixture
def tls_scp(home, pki):
    running = RunningSCP(_tls_config(home, pki, **{"dicom.peers": [{"ae_title": "MODALITY", "host": "127.0.0.1", "tls_name": "modality-a"}]}))
    yield running
    running.stop()


def _dcmtk(tool: str, port: int, *args: str, calling: str = "ECHOSCU") -> subprocess.CompletedProcess:
    cmd = [require_tool(tool, "dcmtk"), "-aet", calling, "-aec", "SYNTHPACS", *args, "127.0.0.1", str(port)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, TCP_NODELAY="1"))


def _tls(identity, pki, ca=None) -> tuple[str, ...]:
    return ("+tls", str(identity.key), str(identity.cert), "+cf", str(ca or pki.ca))


def _counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("synthpacs_dicom_associations_total", {"outcome": outcome}) or 0.0


def test_echoscu_and_storescu_over_tls_are_served(tls_scp, pki, tmp_path):
    client = pki.clients["modality-b"]
    echo = _dcmtk("echoscu", tls_scp.port, *_tls(client, pki))
    assert echo.returncode == 0, echo.stdout + echo.stderr
    files = phantom_files(tmp_path / "in", 4)
    store = subprocess.run(
        [require_tool("storescu", "dcmtk"), "-aet", "STORESCU", "-aec", "SYNTHPACS", *_tls(client, pki), "+sd", "+r", "127.0.0.1", str(tls_scp.port), str(tmp_path / "in")],
        capture_output=True, text=True, timeout=120, env=dict(os.environ, TCP_NODELAY="1"),
    )
    assert store.returncode == 0, store.stdout + store.stderr
    assert tls_scp.store.index.stats()["instances"] == len(files)
    assert tls_scp.store.verify() == {"missing": [], "corrupt": [], "orphans": []}


def test_a_plain_tcp_caller_is_refused_and_the_server_goes_on(tls_scp, pki):
    before = _counter("rejected_tls")
    plain = _dcmtk("echoscu", tls_scp.port, "-to", "10")
    assert plain.returncode != 0
    assert _counter("rejected_tls") == before + 1
    assert _dcmtk("echoscu", tls_scp.port, *_tls(pki.clients["modality-b"], pki)).returncode == 0


def test_a_caller_without_a_certificate_is_refused_when_one_is_required(tls_scp, pki):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(str(pki.ca))
    ae = AE(ae_title="NOCERT")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = 10
    try:
        assoc = ae.associate("127.0.0.1", tls_scp.port, ae_title="SYNTHPACS", tls_args=(context, "localhost"))
        assert not assoc.is_established
    finally:
        ae.shutdown()
    # The same from dcmtk with a certificate of another CA.
    rogue = _dcmtk("echoscu", tls_scp.port, *_tls(pki.rogue_client, pki))
    assert rogue.returncode != 0
    assert _dcmtk("echoscu", tls_scp.port, *_tls(pki.clients["modality-b"], pki)).returncode == 0


def test_a_client_certificate_is_optional_when_not_required(home, pki):
    scp = RunningSCP(_tls_config(home, pki, **{"dicom.tls_require_client_cert": False}))
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(str(pki.ca))
        ae = AE(ae_title="NOCERT")
        ae.add_requested_context(Verification)
        try:
            assoc = ae.associate("127.0.0.1", scp.port, ae_title="SYNTHPACS", tls_args=(context, "127.0.0.1"))
            assert assoc.is_established
            assert assoc.send_c_echo().Status == 0
            assoc.release()
        finally:
            ae.shutdown()
        # A certificate that is offered is still checked.
        assert _dcmtk("echoscu", scp.port, *_tls(pki.rogue_client, pki)).returncode != 0
    finally:
        scp.stop()


def test_a_listed_ae_title_must_present_its_own_certificate(tls_scp, pki):
    before = _counter("rejected_certificate")
    # MODALITY is listed with tls_name modality-a: modality-b's certificate cannot use that AE title ...
    spoofed = _dcmtk("echoscu", tls_scp.port, *_tls(pki.clients["modality-b"], pki), calling="MODALITY")
    assert spoofed.returncode != 0
    assert "Rejected" in spoofed.stdout + spoofed.stderr or "rejected" in (spoofed.stdout + spoofed.stderr).lower()
    assert _counter("rejected_certificate") == before + 1
    # ... modality-a's can, and an unlisted AE title on loopback needs only a certificate of our CA.
    assert _dcmtk("echoscu", tls_scp.port, *_tls(pki.clients["modality-a"], pki), calling="MODALITY").returncode == 0
    assert _dcmtk("echoscu", tls_scp.port, *_tls(pki.clients["modality-b"], pki), calling="OTHER").returncode == 0


def test_a_caller_that_never_finishes_its_handshake_blocks_nobody(home, pki):
    scp = RunningSCP(_tls_config(home, pki, **{"dicom.tls_handshake_timeout": 1.0}))
    try:
        silent = [socket.create_connection(("127.0.0.1", scp.port)) for _ in range(3)]
        try:
            # Served while three connections sit in their handshake.
            assert _dcmtk("echoscu", scp.port, *_tls(pki.clients["modality-b"], pki)).returncode == 0
            # And the silent ones are closed by the server once the handshake timeout passes.
            for conn in silent:
                conn.settimeout(30)
                assert conn.recv(1) == b""
        finally:
            for conn in silent:
                conn.close()
        # The timeout bounds the whole handshake: a ClientHello dribbled a byte at a time is cut off too.
        dribbler = socket.create_connection(("127.0.0.1", scp.port))
        stop = threading.Event()

        def dribble() -> None:
            hello = b"\x16\x03\x01\x02\x00" + b"\x01" * 512
            for byte in hello:
                if stop.wait(0.2):
                    return
                try:
                    dribbler.send(bytes([byte]))
                except OSError:
                    return

        thread = threading.Thread(target=dribble, daemon=True)
        thread.start()
        try:
            dribbler.settimeout(30)
            try:
                assert dribbler.recv(1) == b""
            except ConnectionResetError:
                pass
        finally:
            stop.set()
            thread.join(timeout=5)
            dribbler.close()
        assert _dcmtk("echoscu", scp.port, *_tls(pki.clients["modality-b"], pki)).returncode == 0
    finally:
        scp.stop()


def test_unusable_certificate_files_stop_the_start_with_the_setting_named(home, pki, tmp_path):
    missing = make_config(home, **{"dicom.tls_cert": str(tmp_path / "nope.pem"), "dicom.tls_key": str(pki.server.key)})
    with pytest.raises(ConfigError, match="dicom.tls_cert"):
        server_context(missing)
    swapped = make_config(home, **{"dicom.tls_cert": str(pki.server.key), "dicom.tls_key": str(pki.server.cert)})
    with pytest.raises(ConfigError, match="tls_cert / tls_key"):
        server_context(swapped)
    with pytest.raises(ConfigError, match="tls_require_client_cert needs dicom.tls_ca"):
        make_config(home, **{"dicom.tls_cert": str(pki.server.cert), "dicom.tls_key": str(pki.server.key), "dicom.tls_require_client_cert": True})
    with pytest.raises(ConfigError, match="go together"):
        make_config(home, **{"dicom.tls_cert": str(pki.server.cert)})


def test_synthpacs_echo_speaks_tls_and_says_why_a_handshake_fails(tls_scp, pki, capsys):
    client = pki.clients["modality-b"]
    args = ["echo", "127.0.0.1", str(tls_scp.port), "-aec", "SYNTHPACS", "--home", str(tls_scp.cfg.home), "--timeout", "10"]
    tls = ["--tls", "--tls-ca", str(pki.ca), "--tls-cert", str(client.cert), "--tls-key", str(client.key)]
    assert main(args + tls) == 0
    assert "success" in capsys.readouterr().out
    # A CA that did not sign the server's certificate.
    assert main(args + ["--tls", "--tls-ca", str(pki.rogue_ca), "--tls-cert", str(client.cert), "--tls-key", str(client.key)]) == 1
    assert "certificate of 127.0.0.1" in capsys.readouterr().err
    # No client certificate while the SCP requires one.
    assert main(args + ["--tls", "--tls-ca", str(pki.ca)]) == 1
    err = capsys.readouterr().err
    assert "C-ECHO failed: " in err and "client certificate" in err.split("C-ECHO failed: ")[1], err
    # Plain echo against a TLS port.
    assert main(args) == 1
    capsys.readouterr()
    assert main(args + ["--tls-ca", str(pki.ca)]) != 0
    assert "--tls-ca needs --tls" in capsys.readouterr().err
