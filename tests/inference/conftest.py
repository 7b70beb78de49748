"""Fixtures for the inference tests: a model registry of tiny test generators, and a running gRPC server
on an ephemeral loopback port with a real channel to it (stopped after each test)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import grpc
import pytest

from models import registry as reg
from models.architectures import Architecture
from models.registry import Registry
from service.inference.server import InferenceServer
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc
from tests.helpers import make_config
from tests.inference.nets import BrokenGenerator, CrashingGenerator, Gate, GatedGenerator, SlowGenerator, TinyGenerator


@pytest.fixture(autouse=True)
def _test_architectures(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setitem(reg.ARCHITECTURES, "test-tiny", Architecture("tests.inference.nets:TinyGenerator"))
    monkeypatch.setitem(reg.ARCHITECTURES, "test-slow", Architecture("tests.inference.nets:SlowGenerator"))
    monkeypatch.setitem(reg.ARCHITECTURES, "test-gated", Architecture("tests.inference.nets:GatedGenerator"))
    monkeypatch.setitem(reg.ARCHITECTURES, "test-broken", Architecture("tests.inference.nets:BrokenGenerator"))
    monkeypatch.setitem(reg.ARCHITECTURES, "test-crashing", Architecture("tests.inference.nets:CrashingGenerator"))
    Gate.reset(open_=True)
    yield
    Gate.reset(open_=True)  # never leave a server thread waiting


@pytest.fixture
def models_root(home: Path) -> Path:
    return home / "models"


@pytest.fixture
def export(models_root: Path) -> Callable[..., reg.ModelVersion]:
    """export(name, kind="tiny"|"slow"|"gated"|"broken"|"crashing", **generator kwargs) -> the new version."""
    classes = {"tiny": TinyGenerator, "slow": SlowGenerator, "gated": GatedGenerator, "broken": BrokenGenerator, "crashing": CrashingGenerator}

    def _export(name: str, kind: str = "tiny", **kwargs) -> reg.ModelVersion:
        net = classes[kind](**kwargs)
        card = {"architecture": f"test-{kind}", "dataset": {"name": "phantoms", "version": 1}}
        return Registry([models_root]).export(net, card, name)

    return _export


class Running:
    """A started InferenceServer, a channel to it, and the Synthesizer stub."""

    def __init__(self, server: InferenceServer, channel: grpc.Channel):
        self.server = server
        self.channel = channel
        self.stub = pb_grpc.SynthesizerStub(channel) if channel is not None else None

    @property
    def address(self) -> str:
        return self.server.address


@pytest.fixture
def start_server(home: Path, models_root: Path):
    """start_server(**config overrides) -> Running; models load before it returns (preload empty by default)."""
    started: list[Running] = []

    def _start(wait_for: tuple[str, ...] = (), channel: bool = True, **overrides) -> Running:
        overrides.setdefault("inference.preload", [])
        overrides.setdefault("inference.reload_interval_s", 0)
        overrides.setdefault("inference.max_batch", 8)
        cfg = make_config(home, **overrides)
        server = InferenceServer(cfg, registry=Registry([models_root]))
        server.start()
        ch = grpc.insecure_channel(server.address) if channel else None
        running = Running(server, ch)
        started.append(running)
        if ch is not None:
            grpc.channel_ready_future(ch).result(timeout=10)
        for ref in wait_for:
            server.cache.get(ref)
        return running

    yield _start
    for r in started:
        if r.channel is not None:
            r.channel.close()
        r.server.stop(grace=1.0)
