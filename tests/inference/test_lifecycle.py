"""Over a real channel: cancellation and deadlines stop work, the in-flight limit, health with per-model
readiness, reflection, metrics, and new model versions served without a restart."""

from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from google.protobuf import descriptor_pool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client import REGISTRY, generate_latest

from synthpacs.v1 import synthesizer_pb2 as pb
from tests.inference.nets import Gate

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _until(predicate, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def _metric(name: str, labels: dict | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_cancelled_stream_stops_its_work(start_server, export) -> None:
    export("m", kind="gated")
    srv = start_server(wait_for=("m",), **{"inference.max_batch": 8})
    before = _metric("synthpacs_grpc_requests_total", {"method": "Generate", "code": "CANCELLED"})
    Gate.reset(open_=False)
    call = srv.stub.Generate(pb.GenerateRequest(model="m", count=200, first_seed=0), timeout=60)
    assert Gate.entered.wait(30)  # the first batch (at most 8 of the 200) is in a forward pass
    call.cancel()
    Gate.opened.set()
    _until(lambda: _metric("synthpacs_grpc_requests_total", {"method": "Generate", "code": "CANCELLED"}) > before, what="the server to end the call")
    _until(lambda: srv.server.batcher.waiting() == 0, what="an empty queue")
    assert srv.server.batcher.stats.images <= 8, srv.server.batcher.stats


def test_deadline_is_honoured(start_server, export) -> None:
    export("m", kind="gated")
    srv = start_server(wait_for=("m",), **{"inference.max_batch": 8})
    Gate.reset(open_=False)
    with pytest.raises(grpc.RpcError) as info:
        list(srv.stub.Generate(pb.GenerateRequest(model="m", count=100), timeout=0.5))
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    Gate.opened.set()
    _until(lambda: srv.server.batcher.waiting() == 0, what="an empty queue")
    assert srv.server.batcher.stats.images <= 8


def test_too_many_requests_in_flight(start_server, export) -> None:
    export("m", kind="gated")
    srv = start_server(wait_for=("m",), **{"inference.max_inflight": 1})
    Gate.reset(open_=False)
    first = srv.stub.Generate(pb.GenerateRequest(model="m", count=1), timeout=60)
    assert Gate.entered.wait(30)
    with pytest.raises(grpc.RpcError) as info:
        list(srv.stub.Generate(pb.GenerateRequest(model="m", count=1), timeout=30))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "max_inflight" in info.value.details()
    assert srv.stub.ListModels(pb.ListModelsRequest(), timeout=30).models  # cheap calls still answered
    Gate.opened.set()
    assert len(list(first)) == 1
    assert len(list(srv.stub.Generate(pb.GenerateRequest(model="m", count=1), timeout=30))) == 1


def test_health_follows_model_readiness(start_server, export) -> None:
    export("good")
    broken = export("broken")
    (broken.path / "model.json").write_text("{")
    srv = start_server(**{"inference.preload": ["good", "broken", "absent"]})
    health = health_pb2_grpc.HealthStub(srv.channel)

    def status(service: str) -> int:
        return health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status

    assert status("") == SERVING and status("synthpacs.v1.Synthesizer") == SERVING
    _until(lambda: status("synthpacs.v1.Synthesizer/good") == SERVING, what="good to be ready")
    assert status("synthpacs.v1.Synthesizer/good:v1") == SERVING
    assert status("synthpacs.v1.Synthesizer/broken") == NOT_SERVING
    assert status("synthpacs.v1.Synthesizer/absent") == NOT_SERVING
    with pytest.raises(grpc.RpcError) as info:
        status("synthpacs.v1.Synthesizer/never-heard-of")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # On shutdown every service reports NOT_SERVING before the port closes.
    srv.server.health.enter_graceful_shutdown()
    assert status("") == NOT_SERVING


def test_reflection_lists_the_api(start_server) -> None:
    srv = start_server()
    db = ProtoReflectionDescriptorDatabase(srv.channel)
    services = set(db.get_services())
    assert {"synthpacs.v1.Synthesizer", "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= services
    pool = descriptor_pool.DescriptorPool(db)
    service = pool.FindServiceByName("synthpacs.v1.Synthesizer")
    assert [m.name for m in service.methods] == ["ListModels", "GetModel", "Generate", "GenerateStudy"]


def test_metrics(start_server, export) -> None:
    export("metered")
    srv = start_server(wait_for=("metered",))
    images = _metric("synthpacs_inference_images_total", {"model": "metered:v1"})
    ok = _metric("synthpacs_grpc_requests_total", {"method": "Generate", "code": "OK"})
    not_found = _metric("synthpacs_grpc_requests_total", {"method": "Generate", "code": "NOT_FOUND"})
    batches = _metric("synthpacs_inference_batch_size_count")
    list(srv.stub.Generate(pb.GenerateRequest(model="metered", count=3)))
    with pytest.raises(grpc.RpcError):
        list(srv.stub.Generate(pb.GenerateRequest(model="unmetered", count=1)))
    assert _metric("synthpacs_inference_images_total", {"model": "metered:v1"}) == images + 3
    assert _metric("synthpacs_grpc_requests_total", {"method": "Generate", "code": "OK"}) == ok + 1
    assert _metric("synthpacs_grpc_requests_total", {"method": "Generate", "code": "NOT_FOUND"}) == not_found + 1
    assert _metric("synthpacs_inference_batch_size_count") > batches
    assert _metric("synthpacs_inference_model_load_seconds_count", {"model": "metered:v1"}) >= 1
    assert _metric("synthpacs_inference_device_memory_bytes", {"device": "cpu", "kind": "weights"}) > 0
    text = generate_latest(REGISTRY).decode()
    for name in ("synthpacs_grpc_request_latency_seconds_bucket", "synthpacs_inference_queue_seconds_bucket",
                 "synthpacs_inference_forward_seconds_bucket", "synthpacs_inference_models_loaded", "synthpacs_grpc_inflight_requests"):
        assert name in text


def test_new_version_is_served_without_restart(start_server, export) -> None:
    export("m")
    srv = start_server(**{"inference.preload": ["m"], "inference.reload_interval_s": 0.1})
    _until(lambda: srv.stub.GetModel(pb.GetModelRequest(model="m")).state == pb.MODEL_STATE_READY, what="m:v1")
    old = list(srv.stub.Generate(pb.GenerateRequest(model="m", seeds=[1], encoding=pb.ENCODING_RAW_UINT16)))[0]
    assert old.model == "m:v1"
    export("m", seed=7)
    _until(lambda: srv.stub.GetModel(pb.GetModelRequest(model="m")).version == 2, what="m:v2 to take over")
    assert srv.stub.GetModel(pb.GetModelRequest(model="m")).state == pb.MODEL_STATE_READY
    new = list(srv.stub.Generate(pb.GenerateRequest(model="m", seeds=[1], encoding=pb.ENCODING_RAW_UINT16)))[0]
    assert new.model == "m:v2" and new.data != old.data
    pinned = list(srv.stub.Generate(pb.GenerateRequest(model="m:v1", seeds=[1], encoding=pb.ENCODING_RAW_UINT16)))[0]
    assert pinned.data == old.data


def test_stop_answers_unavailable_and_frees_the_port(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",))
    port = srv.server.port
    srv.server.stop(grace=0.5)
    with pytest.raises(grpc.RpcError) as info:
        list(srv.stub.Generate(pb.GenerateRequest(model="m", count=1), timeout=5))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    import socket

    with socket.socket() as s:
        # As a restarted server binds (gRPC sets SO_REUSEADDR): connections the stopped server closed
        # may sit in TIME_WAIT on this port for a minute, which only a listener still holding it would beat.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_port_in_use_and_missing_gpu_are_clear_errors(start_server, home, models_root) -> None:
    from models.registry import Registry
    from service.config import ConfigError
    from service.inference.server import InferenceServer
    from tests.helpers import make_config

    srv = start_server()
    taken = InferenceServer(make_config(home, **{"grpc.port": srv.server.port, "inference.preload": []}), registry=Registry([models_root]))
    with pytest.raises(ConfigError, match="cannot listen"):
        taken.start()
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            InferenceServer(make_config(home, **{"inference.device": "cuda"}), registry=Registry([models_root]))
    with pytest.raises(ConfigError, match="not a device"):
        InferenceServer(make_config(home, **{"inference.device": "tpu9"}), registry=Registry([models_root]))
