"""The committed stubs match proto/synthpacs/v1/*.proto, and the package ships in wheels."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2

from tests.helpers import REPO

PROTO_ROOT = REPO / "proto"
PROTO = "synthpacs/v1/synthesizer.proto"
STALE = "the stubs in proto/synthpacs/v1 are stale: run `make proto` and commit the result"


def _protoc(*args: str) -> None:
    from grpc_tools import protoc

    include = str(Path(protoc.__file__).parent / "_proto")
    rc = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", *args, PROTO])
    assert rc == 0, f"protoc failed on {PROTO}"


def test_descriptor_matches_proto(tmp_path: Path) -> None:
    """What the committed synthesizer_pb2 registers is exactly what the .proto compiles to."""
    from synthpacs.v1 import synthesizer_pb2

    out = tmp_path / "set.pb"
    _protoc(f"--descriptor_set_out={out}")
    fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    compiled = fds.file[0]
    # protoc adds json_name to every field of a descriptor set; Python gencode leaves the defaults out.
    for message in _messages(compiled.message_type):
        for f in message.field:
            f.ClearField("json_name")
    committed = descriptor_pb2.FileDescriptorProto.FromString(synthesizer_pb2.DESCRIPTOR.serialized_pb)
    assert committed == compiled, STALE


def _messages(messages):
    for m in messages:
        yield m
        yield from _messages(m.nested_type)


def test_generated_files_are_current(tmp_path: Path) -> None:
    """Byte for byte, when the installed grpcio-tools is the version that generated them."""
    from synthpacs.v1 import synthesizer_pb2_grpc

    import grpc_tools

    tools_version = getattr(grpc_tools, "__version__", None)
    if tools_version is None:
        from importlib.metadata import version

        tools_version = version("grpcio-tools")
    if tools_version != synthesizer_pb2_grpc.GRPC_GENERATED_VERSION:
        pytest.skip(f"grpcio-tools {tools_version} is not {synthesizer_pb2_grpc.GRPC_GENERATED_VERSION}, which generated the stubs")
    _protoc(f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}")
    for name in ("synthesizer_pb2.py", "synthesizer_pb2.pyi", "synthesizer_pb2_grpc.py"):
        fresh = (tmp_path / "synthpacs" / "v1" / name).read_text()
        committed = (PROTO_ROOT / "synthpacs" / "v1" / name).read_text()
        assert fresh == committed, f"{name}: {STALE}"


def test_stub_methods() -> None:
    from synthpacs.v1 import synthesizer_pb2 as pb

    service = pb.DESCRIPTOR.services_by_name["Synthesizer"]
    assert service.full_name == "synthpacs.v1.Synthesizer"
    assert [m.name for m in service.methods] == ["ListModels", "GetModel", "Generate", "GenerateStudy"]
    assert service.methods_by_name["Generate"].server_streaming


@pytest.mark.slow
def test_wheel_ships_synthpacs_v1(tmp_path: Path) -> None:
    """A built wheel holds synthpacs/v1 (stubs and .proto) and imports from the wheel itself."""
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    wheel = next(tmp_path.glob("synthpacs-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for expected in ("synthpacs/__init__.py", "synthpacs/v1/__init__.py", "synthpacs/v1/synthesizer_pb2.py",
                     "synthpacs/v1/synthesizer_pb2_grpc.py", "synthpacs/v1/synthesizer.proto", "service/inference/server.py"):
        assert expected in names, f"{expected} missing from {wheel.name}"
    probe = subprocess.run(
        [sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import synthpacs.v1.synthesizer_pb2_grpc as m; print(m.__file__)", str(wheel)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert wheel.name in probe.stdout
