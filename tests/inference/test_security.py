"""Bearer tokens and TLS / mutual TLS over real channels, certificates made by the openssl tool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from models.registry import Registry
from service.config import ConfigError, load_config
from service.inference.client import SynthesizerClient
from service.inference.server import InferenceServer
from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc
from tests.helpers import require_tool

pytestmark = pytest.mark.integration


def _code(fn) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code()


def test_bearer_tokens(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",), **{"grpc.tokens": ["s3cret-one", "s3cret-two"]})
    stub = srv.stub
    req = pb.GenerateRequest(model="m", count=1)
    assert _code(lambda: list(stub.Generate(req))) == grpc.StatusCode.UNAUTHENTICATED
    for bad in ("Bearer wrong", "Basic czNjcmV0LW9uZQ==", "Bearer ", "s3cret-one"):
        assert _code(lambda: list(stub.Generate(req, metadata=(("authorization", bad),)))) == grpc.StatusCode.UNAUTHENTICATED, bad
    assert _code(lambda: stub.ListModels(pb.ListModelsRequest())) == grpc.StatusCode.UNAUTHENTICATED
    for token in ("s3cret-one", "s3cret-two"):
        assert len(list(stub.Generate(req, metadata=(("authorization", f"Bearer {token}"),)))) == 1
    with pytest.raises(grpc.RpcError) as info:
        stub.GetModel(pb.GetModelRequest(model="m"))
    assert "Bearer" in info.value.details()
    # Health stays open for probes; reflection does not.
    health = health_pb2_grpc.HealthStub(srv.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service="")).status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError):
        ProtoReflectionDescriptorDatabase(srv.channel).get_services()
    client = SynthesizerClient(srv.address, token="s3cret-two")
    assert [m.ref for m in client.list_models()] == ["m:v1"]
    client.close()


def test_tokens_from_the_environment(home: Path, models_root: Path, export) -> None:
    export("m")
    cfg = load_config(env={"SYNTHPACS_GRPC_TOKENS": "env-token", "SYNTHPACS_HOME": str(home)},
                      overrides={"home": str(home), "grpc.port": 0, "metrics.enabled": False, "inference.preload": []})
    assert cfg.grpc.tokens == ("env-token",)
    server = InferenceServer(cfg, registry=Registry([models_root]))
    server.start()
    try:
        with SynthesizerClient(server.address, token="env-token", timeout=30) as good, SynthesizerClient(server.address, timeout=30) as anonymous:
            assert len(list(good.generate("m", count=1))) == 1
            assert _code(lambda: anonymous.list_models()) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        server.stop(grace=0.5)


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, all signed by it."""
    require_tool("openssl", "openssl")
    d = tmp_path / "pki"
    d.mkdir()
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=synthpacs test CA", cwd=d)
    (d / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for who in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{who}.key", "-out", f"{who}.csr", "-subj", f"/CN=synthpacs test {who}", cwd=d)
        _openssl("x509", "-req", "-in", f"{who}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{who}.pem", "-days", "1", "-extfile", f"{who}.ext", cwd=d)
    return d


def test_tls(start_server, export, pki: Path) -> None:
    export("m")
    srv = start_server(wait_for=("m",), channel=False, **{"grpc.tls_cert": str(pki / "server.pem"), "grpc.tls_key": str(pki / "server.key")})
    with SynthesizerClient(srv.address, timeout=30, tls_ca=str(pki / "ca.pem")) as client:
        client.wait_ready()
        assert len(list(client.generate("m", count=2))) == 2
    plain = grpc.insecure_channel(srv.address)
    try:
        assert _code(lambda: pb_grpc.SynthesizerStub(plain).ListModels(pb.ListModelsRequest(), timeout=5)) == grpc.StatusCode.UNAVAILABLE
    finally:
        plain.close()
    # A client that does not trust the server's CA refuses it.
    with SynthesizerClient(srv.address, timeout=5, tls_ca=str(pki / "client.pem")) as wrong_ca:
        assert _code(lambda: wrong_ca.list_models()) == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(start_server, export, pki: Path) -> None:
    export("m")
    srv = start_server(
        wait_for=("m",), channel=False,
        **{"grpc.tls_cert": str(pki / "server.pem"), "grpc.tls_key": str(pki / "server.key"), "grpc.tls_client_ca": str(pki / "ca.pem")},
    )
    with SynthesizerClient(srv.address, timeout=5, tls_ca=str(pki / "ca.pem")) as no_cert:
        assert _code(lambda: no_cert.list_models()) == grpc.StatusCode.UNAVAILABLE
    with SynthesizerClient(srv.address, timeout=30, tls_ca=str(pki / "ca.pem"), tls_cert=str(pki / "client.pem"), tls_key=str(pki / "client.key")) as client:
        assert [m.ref for m in client.list_models()] == ["m:v1"]


def test_tls_settings_errors(home: Path, models_root: Path, tmp_path: Path) -> None:
    from tests.helpers import make_config

    half = InferenceServer(make_config(home, **{"grpc.tls_cert": str(tmp_path / "x.pem"), "inference.preload": []}), registry=Registry([models_root]))
    with pytest.raises(ConfigError, match="go together"):
        half.start()
    missing = InferenceServer(
        make_config(home, **{"grpc.tls_cert": str(tmp_path / "x.pem"), "grpc.tls_key": str(tmp_path / "x.key"), "inference.preload": []}),
        registry=Registry([models_root]),
    )
    with pytest.raises(ConfigError, match="grpc.tls_cert: cannot read"):
        missing.start()


def test_two_authorization_entries_are_refused(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",), **{"grpc.tokens": ["s3cret-one"]})
    req = pb.ListModelsRequest()
    good = ("authorization", "Bearer s3cret-one")
    for metadata in ((good, good), (good, ("authorization", "Bearer wrong")), (("authorization", "Bearer wrong"), good)):
        with pytest.raises(grpc.RpcError) as info:
            srv.stub.ListModels(req, metadata=metadata)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "2 'authorization' metadata entries" in info.value.details()
        assert "s3cret" not in info.value.details()
    assert [m.ref for m in srv.stub.ListModels(req, metadata=(good,)).models] == ["m:v1"]


MALICIOUS = "<script>alert(1)</script>" + "A" * 5000 + "\x1b[2J\n\x00" + "Z" * 5000


def test_error_messages_quote_only_a_short_prefix_of_client_input(start_server, export) -> None:
    from service.inference.validate import ECHO_LIMIT

    export("m")
    srv = start_server(wait_for=("m",))
    stub = srv.stub
    calls = {
        "GetModel model": lambda: stub.GetModel(pb.GetModelRequest(model=MALICIOUS)),
        "GetModel name:version": lambda: stub.GetModel(pb.GetModelRequest(model="m:" + MALICIOUS)),
        "ListModels name": lambda: stub.ListModels(pb.ListModelsRequest(name=MALICIOUS)),
        "Generate model": lambda: list(stub.Generate(pb.GenerateRequest(model=MALICIOUS, count=1))),
        "Generate request_id": lambda: list(stub.Generate(pb.GenerateRequest(model="m", count=1, request_id=MALICIOUS))),
        "GenerateStudy destination": lambda: stub.GenerateStudy(pb.GenerateStudyRequest(model="m", count=1, destination_ae_title=MALICIOUS)),
    }
    for what, call in calls.items():
        with pytest.raises(grpc.RpcError) as info:
            call()
        details = info.value.details() or ""
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, info.value.code())
        assert "A" * (ECHO_LIMIT + 1) not in details and "Z" * 10 not in details, (what, details[:300])
        assert "\x1b" not in details and "\x00" not in details and "\n" not in details, what
        assert len(details) < 400, (what, len(details))
