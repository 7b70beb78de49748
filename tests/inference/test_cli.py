"""``synthpacs client`` against a running server, and ``synthpacs inference`` / ``synthpacs serve`` as
real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from PIL import Image

from models.registry import Registry
from service.cli import main
from service.inference.client import SynthesizerClient
from service.inference.encode import decode_raw
from tests.helpers import REPO, free_port

pytestmark = pytest.mark.integration


def test_client_generate_writes_files_and_manifest(start_server, export, tmp_path: Path, capsys) -> None:
    export("m")
    srv = start_server(wait_for=("m",))
    out = tmp_path / "out"
    rc = main(["client", "generate", "--port", str(srv.server.port), "--model", "m", "--count", "3", "--first-seed", "7",
               "--encoding", "png16", "--out", str(out), "--request-id", "cli-1"])
    assert rc == 0
    files = sorted(p.name for p in out.glob("*.png"))
    assert files == [f"m_v1_seed{s:010d}.png" for s in (7, 8, 9)]
    assert np.array(Image.open(out / files[0])).dtype == np.uint16
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in rows] == [7, 8, 9] and rows[0]["model"] == "m:v1" and rows[0]["request_id"] == "cli-1"
    assert "3/3 images" in capsys.readouterr().err
    rc = main(["client", "generate", "--port", str(srv.server.port), "--model", "m", "--seeds", "7,100", "--psi", "0.5",
               "--encoding", "raw8", "--out", str(out)])
    assert rc == 0
    raw = out / "m_v1_seed0000000100_16x16x1_u8le.raw"
    assert decode_raw(raw.read_bytes(), 16, 16, 1, 8).shape == (16, 16)


def test_client_errors(start_server, export, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    export("m")
    srv = start_server(wait_for=("m",), **{"grpc.tokens": ["tok"]})
    port = str(srv.server.port)
    assert main(["client", "generate", "--port", port, "--model", "m", "--count", "1", "--out", str(tmp_path)]) == 2
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    token = tmp_path / "token"
    token.write_text("tok\n")
    assert main(["client", "generate", "--port", port, "--token-file", str(token), "--model", "nope", "--count", "1", "--out", str(tmp_path)]) == 2
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["client", "generate", "--port", port, "--token-file", str(token), "--model", "m", "--seeds", "1,x", "--out", str(tmp_path)]) == 2
    assert "--seeds" in capsys.readouterr().err
    assert main(["client", "generate", "--port", port, "--token-file", str(tmp_path / "absent"), "--model", "m", "--count", "1", "--out", str(tmp_path)]) == 2
    assert "--token-file" in capsys.readouterr().err
    monkeypatch.setenv("SYNTHPACS_CLIENT_TOKEN", "tok")
    assert main(["client", "models", "--port", port, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["model"] == "m:v1"


def _dcgan_home(home: Path) -> None:
    dcgan = pytest.importorskip("models.dcgan", reason="the DCGAN architecture (models/dcgan/) is not here")
    net = dcgan.Generator(z_dim=16, resolution=64, base_channels=8, max_channels=32)
    Registry([home / "models"]).export(net, {"architecture": "dcgan"}, "small-dcgan")


def _wait_serving(port: int, proc: subprocess.Popen, timeout: float = 120) -> SynthesizerClient:
    client = SynthesizerClient(f"127.0.0.1:{port}", timeout=10)
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else "the server exited"
        try:
            if client.health("synthpacs.v1.Synthesizer/small-dcgan") == "SERVING":
                return client
        except grpc.RpcError:
            pass
        if time.monotonic() > deadline:
            client.close()
            raise AssertionError("the server did not report small-dcgan SERVING in time")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("command", [["inference"], ["serve", "--port", "0"]])
def test_server_process(home: Path, tmp_path: Path, command: list[str]) -> None:
    _dcgan_home(home)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SYNTHPACS_")}
    env.update(SYNTHPACS_METRICS_ENABLED="false", SYNTHPACS_INFERENCE_RELOAD_INTERVAL_S="0", SYNTHPACS_DICOMWEB_PORT="0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", *command, "--home", str(home), "--grpc-port", str(port), "--preload", "small-dcgan"]
        if command[0] == "inference" else
        [sys.executable, "-m", "service", *command, "--home", str(home), "--grpc-port", str(port)],
        cwd=REPO, env=dict(env, SYNTHPACS_INFERENCE_PRELOAD='["small-dcgan"]'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        client = _wait_serving(port, proc)
        with client:
            images = list(client.generate("small-dcgan", count=2, first_seed=1, encoding="raw8"))
            assert [(i.seed, i.width, i.height, len(i.data)) for i in images] == [(1, 64, 64, 4096), (2, 64, 64, 4096)]
    finally:
        out = _stop(proc)
    assert proc.returncode == 0, out[-3000:]
    assert '"event": "grpc_stopped"' in out
