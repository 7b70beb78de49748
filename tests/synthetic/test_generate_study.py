"""GenerateStudy end to end over a real gRPC channel, wired as `synthpacs serve` wires it: the study is
stored, queued, delivered to the PACS, found by C-FIND on our Q/R SCP, and regenerates bit for bit."""

from __future__ import annotations

import subprocess

import grpc
import numpy as np
import pydicom
import pytest

from models.registry import Registry
from service.home import Home
from service.runtime import Runtime
from service.synthetic.studies import regenerate
from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc
from tests.helpers import free_port, require_tool
from tests.synthetic.conftest import StoreSCP, config_with_peers, export_tiny_dcgan

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def served(home, tmp_path):
    """`synthpacs serve` in-process: SCP with Q/R, outbox sender, gRPC; storescp as the PACS."""
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS")
    export_tiny_dcgan(Home.at(home).models_dir)
    cfg = config_with_peers(
        home, [("PACS", "127.0.0.1", pacs.port)],
        **{"dicom.port": free_port(), "inference.preload": ["tiny-dcgan"], "inference.reload_interval_s": 0,
           "inference.device": "cpu", "outbox.backoff_initial_s": 0.2, "outbox.backoff_max_s": 1.0, "outbox.health_interval_s": 0},
    )
    runtime = Runtime(cfg)
    scp = runtime.add_scp()
    sender = runtime.add_outbox()
    grpc_server = runtime.add_grpc()
    runtime.start()
    channel = grpc.insecure_channel(grpc_server.address)
    grpc.channel_ready_future(channel).result(timeout=30)
    yield cfg, runtime, scp, sender, pb_grpc.SynthesizerStub(channel), pacs
    channel.close()
    runtime.stop()
    pacs.stop()


def test_generate_study_reaches_the_pacs_and_our_qr(served, tmp_path):
    cfg, runtime, scp, sender, stub, pacs = served
    resp = stub.GenerateStudy(
        pb.GenerateStudyRequest(model="tiny-dcgan", seeds=[10, 11, 12], truncation_psi=0.8, destination_ae_title="PACS",
                                series_description="tibia for teaching", burn_in_label=True),
        timeout=120,
    )
    assert resp.model == "tiny-dcgan:v1" and resp.destination == "PACS" and resp.study_instance_uid
    assert [(i.seed, i.state) for i in resp.instances] == [(s, pb.InstanceStatus.STATE_QUEUED) for s in (10, 11, 12)]
    uids = [i.sop_instance_uid for i in resp.instances]

    # Delivered by the running outbox sender.
    rows = sender.drain(timeout=60, sop_instance_uids=uids)
    assert [r.state for r in rows] == ["sent"] * 3
    received = {pydicom.dcmread(p).SOPInstanceUID: pydicom.dcmread(p) for p in pacs.files()}
    assert set(received) == set(uids)
    for ds in received.values():
        assert ds.StudyInstanceUID == resp.study_instance_uid
        assert ds.SeriesDescription == "SYNTHETIC tibia for teaching" and ds.BurnedInAnnotation == "YES"

    # Found by findscu on synthpacs' own Q/R SCP.
    out = tmp_path / "find"
    out.mkdir()
    subprocess.run([require_tool("findscu", "dcmtk"), "-S", "-X", "-od", str(out), "127.0.0.1", str(scp.address[1]),
                    "-k", "QueryRetrieveLevel=STUDY", "-k", f"StudyInstanceUID={resp.study_instance_uid}",
                    "-k", "NumberOfStudyRelatedInstances", "-k", "PatientName"], capture_output=True, timeout=60)
    (found,) = [pydicom.dcmread(p) for p in out.glob("rsp*.dcm")]
    assert found.NumberOfStudyRelatedInstances == 3 and str(found.PatientName).startswith("SYNTHETIC^")

    # The provenance in each stored instance regenerates its pixels exactly on the CPU.
    registry = Registry.with_bundled(Home.at(cfg.home_path).models_dir)
    for uid in uids:
        ds = runtime.store.read(uid)
        assert np.array_equal(regenerate(ds, registry), ds.pixel_array)


def test_generate_study_bad_destination_is_invalid_argument(served):
    _cfg, runtime, _scp, _sender, stub, _pacs = served
    with pytest.raises(grpc.RpcError) as info:
        stub.GenerateStudy(pb.GenerateStudyRequest(model="tiny-dcgan", count=1, destination_ae_title="NOWHERE"), timeout=60)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "PACS" in info.value.details()
    assert list(runtime.store.index.instances()) == []
