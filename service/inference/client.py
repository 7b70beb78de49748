"""A small client for the Synthesizer API: what ``synthpacs client`` uses, and an example for integrators.

    from service.inference.client import SynthesizerClient

    with SynthesizerClient("127.0.0.1:50051", token="...") as client:
        for image in client.generate("demo-dcgan", count=4, first_seed=42, encoding="png16"):
            open(f"seed{image.seed}.png", "wb").write(image.data)

Tokens travel as ``authorization: Bearer <token>`` metadata on every call (the server's grpc.tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc

ENCODINGS = {
    "png8": pb.ENCODING_PNG_8,
    "png16": pb.ENCODING_PNG_16,
    "raw8": pb.ENCODING_RAW_UINT8,
    "raw16": pb.ENCODING_RAW_UINT16,
    "dicom8": pb.ENCODING_DICOM_SC_8,
    "dicom16": pb.ENCODING_DICOM_SC_16,
}
SUFFIXES = {
    pb.ENCODING_UNSPECIFIED: ".png",
    pb.ENCODING_PNG_8: ".png",
    pb.ENCODING_PNG_16: ".png",
    pb.ENCODING_RAW_UINT8: ".raw",
    pb.ENCODING_RAW_UINT16: ".raw",
    pb.ENCODING_DICOM_SC_8: ".dcm",
    pb.ENCODING_DICOM_SC_16: ".dcm",
}


def open_channel(
    target: str, tls_ca: str | None = None, tls_cert: str | None = None, tls_key: str | None = None, server_name: str | None = None
) -> grpc.Channel:
    """A channel to ``host:port``: plain, TLS (``tls_ca`` verifies the server; the system roots when it
    is empty and a client certificate is given), or mutual TLS (``tls_cert`` and ``tls_key``)."""
    options = [("grpc.max_receive_message_length", 64 * 1024 * 1024)]
    if server_name:
        options.append(("grpc.ssl_target_name_override", server_name))
    if not (tls_ca or tls_cert or tls_key):
        return grpc.insecure_channel(target, options=options)
    if bool(tls_cert) != bool(tls_key):
        raise ValueError("a client certificate needs both --tls-cert and --tls-key")
    ca = Path(tls_ca).read_bytes() if tls_ca else None
    cert = Path(tls_cert).read_bytes() if tls_cert else None
    key = Path(tls_key).read_bytes() if tls_key else None
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(target, creds, options=options)


class SynthesizerClient:
    def __init__(self, target: str, token: str | None = None, timeout: float | None = None, channel: grpc.Channel | None = None, **tls: str | None):
        self.channel = channel if channel is not None else open_channel(target, **tls)
        self._own_channel = channel is None
        self.stub = pb_grpc.SynthesizerStub(self.channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def __enter__(self) -> "SynthesizerClient":
        return self

    def __exit__(self, *_exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own_channel:
            self.channel.close()

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Block until the channel connects; raises grpc.FutureTimeoutError after ``timeout`` seconds."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def health(self, service: str = "") -> str:
        """SERVING / NOT_SERVING of the server (``""``), the API, or a model (``synthpacs.v1.Synthesizer/<ref>``)."""
        stub = health_pb2_grpc.HealthStub(self.channel)
        resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=self.timeout, metadata=self.metadata)
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)

    def list_models(self, all_versions: bool = False, name: str = "") -> list[pb.ModelInfo]:
        resp = self.stub.ListModels(pb.ListModelsRequest(all_versions=all_versions, name=name), timeout=self.timeout, metadata=self.metadata)
        return list(resp.models)

    def get_model(self, model: str) -> pb.ModelInfo:
        return self.stub.GetModel(pb.GetModelRequest(model=model), timeout=self.timeout, metadata=self.metadata)

    def generate(
        self,
        model: str,
        count: int = 0,
        seeds: Sequence[int] = (),
        first_seed: int | None = None,
        psi: float | None = None,
        encoding: str | int = "png8",
        request_id: str = "",
        body_part: str | None = None,
        view: str | None = None,
        finding: str | None = None,
    ) -> Iterator[pb.GeneratedImage]:
        """Stream one GeneratedImage per image, in request order. Breaking out of the loop cancels the
        rest of the request on the server. ``body_part``/``view``/``finding``: a conditional model's condition."""
        req = pb.GenerateRequest(model=model, count=count, seeds=list(seeds), encoding=_encoding(encoding), request_id=request_id)
        for name, value in (("body_part", body_part), ("view", view), ("finding", finding)):
            if value is not None:
                setattr(req, name, value)
        if first_seed is not None:
            req.first_seed = first_seed
        if psi is not None:
            req.truncation_psi = psi
        call = self.stub.Generate(req, timeout=self.timeout, metadata=self.metadata)
        try:
            yield from call
        finally:
            call.cancel()  # a no-op after the last message; stops the server's work when we stop early


def _encoding(value: str | int) -> int:
    if isinstance(value, int):
        return value
    try:
        return ENCODINGS[value.lower()]
    except KeyError:
        raise ValueError(f"encoding {value!r} is not one of {', '.join(ENCODINGS)}") from None
