"""A conditional model (body part and view) through every door: gRPC Generate and GenerateStudy over a real
channel, `synthpacs generate`, `synthesize` and `client generate`, a study arriving in Orthanc with the
condition in Body Part Examined and View Position, and exact regeneration from a stored instance."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import grpc
import numpy as np
import pydicom
import pytest
from PIL import Image

from models.registry import Registry
from service.home import Home
from service.runtime import Runtime
from service.synthetic.studies import generate, regenerate
from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc
from tests.helpers import free_port
from tests.peers import start_orthanc
from tests.synthetic.conftest import CONDITIONS, config_with_peers, export_tiny_conditional_dcgan, export_tiny_dcgan

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FAST = {"outbox.backoff_initial_s": 0.3, "outbox.backoff_max_s": 2.0, "outbox.health_interval_s": 0, "deid.enabled": False}


@pytest.fixture
def served(home, tmp_path):
    """`synthpacs serve` in-process (SCP, outbox, gRPC) with Orthanc as the PACS; a conditional and an
    unconditional model in the registry."""
    our_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", modalities={"synthpacs": ["SYNTHPACS", "127.0.0.1", our_port]})
    export_tiny_conditional_dcgan(home)
    export_tiny_dcgan(Home.at(home).models_dir)
    cfg = config_with_peers(
        home, [("ORTHANC", "127.0.0.1", orthanc.dicom_port)],
        **FAST, **{"dicom.port": our_port, "inference.preload": ["tiny-cdcgan"], "inference.reload_interval_s": 0, "inference.device": "cpu"},
    )
    runtime = Runtime(cfg)
    runtime.add_scp()
    sender = runtime.add_outbox()
    grpc_server = runtime.add_grpc()
    runtime.start()
    channel = grpc.insecure_channel(grpc_server.address)
    grpc.channel_ready_future(channel).result(timeout=30)
    yield cfg, runtime, sender, pb_grpc.SynthesizerStub(channel), orthanc, grpc_server.address
    channel.close()
    runtime.stop()
    orthanc.stop()


def _png(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im)


def test_conditional_generation_over_grpc_the_cli_and_orthanc(served, home, tmp_path):
    cfg, runtime, sender, stub, orthanc, address = served
    registry = Registry.with_bundled(Home.at(home).models_dir)
    net, mv = registry.load("tiny-cdcgan")

    # ModelInfo lists the conditions; the card says how many training images each value had.
    info = stub.GetModel(pb.GetModelRequest(model="tiny-cdcgan"), timeout=30)
    assert {c.name: list(c.values) for c in info.conditions} == CONDITIONS
    assert json.loads(info.card_json)["conditions"]["images_per_value"] == {"body_part": {"HAND": 8, "LEG": 8}, "view": {"AP": 8, "LATERAL": 8}}
    assert not stub.GetModel(pb.GetModelRequest(model="tiny-dcgan"), timeout=30).conditions

    # Generate: the condition is echoed, changes the pixels, and matches local generation bit for bit.
    hand = list(stub.Generate(pb.GenerateRequest(model="tiny-cdcgan", seeds=[5, 6, 7], body_part="hand", view="AP"), timeout=60))
    leg = list(stub.Generate(pb.GenerateRequest(model="tiny-cdcgan", seeds=[5, 6, 7], body_part="LEG", view="AP"), timeout=60))
    assert [(m.body_part, m.view, m.finding) for m in hand] == [("HAND", "AP", "")] * 3
    local = generate(net, [5, 6, 7], condition={"body_part": "HAND", "view": "AP"})
    assert np.array_equal(np.stack([_png(m.data) for m in hand]), local)
    assert not np.array_equal(np.stack([_png(m.data) for m in leg]), local)

    # Bad conditions are INVALID_ARGUMENT naming what the model knows.
    for request, expected in (
        (pb.GenerateRequest(model="tiny-cdcgan", count=1, body_part="SKULL", view="AP"), "known: HAND, LEG"),
        (pb.GenerateRequest(model="tiny-cdcgan", count=1, body_part="HAND"), "needs a view (one of AP, LATERAL)"),
        (pb.GenerateRequest(model="tiny-cdcgan", count=1, body_part="HAND", view="AP", finding="FRACTURE"), "no condition 'finding'"),
        (pb.GenerateRequest(model="tiny-dcgan", count=1, body_part="HAND"), "unconditional"),
    ):
        with pytest.raises(grpc.RpcError) as err:
            list(stub.Generate(request, timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and expected in err.value.details(), err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        stub.GenerateStudy(pb.GenerateStudyRequest(model="tiny-cdcgan", count=1, body_part="HAND", view="PA"), timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "known: AP, LATERAL" in err.value.details()

    # A DICOM encoding carries the condition in its attributes and its provenance.
    (sc,) = stub.Generate(pb.GenerateRequest(model="tiny-cdcgan", seeds=[9], body_part="LEG", view="LATERAL", encoding=pb.ENCODING_DICOM_SC_8), timeout=60)
    ds = pydicom.dcmread(io.BytesIO(sc.data))
    assert (ds.BodyPartExamined, ds.ViewPosition) == ("LEG", "LATERAL") and "Laterality" not in ds or not ds.Laterality
    assert "body_part=LEG view=LATERAL" in ds.ImageComments

    # GenerateStudy arrives in Orthanc with the right Body Part Examined and View Position.
    resp = stub.GenerateStudy(pb.GenerateStudyRequest(model="tiny-cdcgan", seeds=[1, 2], body_part="LEG", view="LATERAL",
                                                      destination_ae_title="ORTHANC"), timeout=120)
    uids = [i.sop_instance_uid for i in resp.instances]
    assert [i.state for i in resp.instances] == [pb.InstanceStatus.STATE_QUEUED] * 2
    rows = sender.drain(timeout=60, sop_instance_uids=uids)
    assert [r.state for r in rows] == ["sent"] * 2, rows
    for oid in orthanc.instances():
        tags = orthanc.get(f"/instances/{oid}/simplified-tags")
        assert (tags["BodyPartExamined"], tags["ViewPosition"]) == ("LEG", "LATERAL")
        assert "LEG LATERAL" in tags["SeriesDescription"] and not tags.get("Laterality")
        sent = pydicom.dcmread(io.BytesIO(orthanc.get(f"/instances/{oid}/file")))
        # The stored instance regenerates bit for bit, condition included.
        assert np.array_equal(regenerate(sent, registry), sent.pixel_array)

    # The CLI: generate and client generate accept the condition; a bad one names the known values.
    out = tmp_path / "gen"
    cli = [sys.executable, "-m", "service", "--home", str(home)]
    done = subprocess.run([*cli, "generate", "tiny-cdcgan", "--count", "3", "--seed", "5", "--body-part", "HAND", "--view", "ap",
                           "--out", str(out), "--sheet", str(tmp_path / "sheet.png")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"tiny-cdcgan_v1_HAND-AP_seed{s:010d}.png" for s in (5, 6, 7)]
    assert np.array_equal(np.stack([np.asarray(Image.open(f)) for f in files]), local)
    assert (tmp_path / "sheet.png").is_file()
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {(r["body_part"], r["view"]) for r in rows} == {("HAND", "AP")}
    bad = subprocess.run([*cli, "generate", "tiny-cdcgan", "--body-part", "SKULL", "--view", "AP", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "known: HAND, LEG" in bad.stderr
    bad = subprocess.run([*cli, "generate", "tiny-dcgan", "--view", "AP", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "unconditional" in bad.stderr and "--view" in bad.stderr
    host, port = address.rsplit(":", 1)
    client_out = tmp_path / "client"
    done = subprocess.run([*cli, "client", "generate", "--host", host, "--port", port, "--model", "tiny-cdcgan", "--seeds", "5,6,7",
                           "--body-part", "HAND", "--view", "AP", "--out", str(client_out)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    got = sorted(client_out.glob("*.png"))
    assert np.array_equal(np.stack([np.asarray(Image.open(f)) for f in got]), local)
    bad = subprocess.run([*cli, "client", "generate", "--host", host, "--port", port, "--model", "tiny-cdcgan", "--count", "1",
                          "--body-part", "HAND", "--out", str(client_out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "view" in bad.stderr


def test_synthesize_writes_the_condition_into_the_study(home, tmp_path):
    export_tiny_conditional_dcgan(home)
    cli = [sys.executable, "-m", "service", "--home", str(home)]
    done = subprocess.run([*cli, "synthesize", "--model", "tiny-cdcgan", "--count", "2", "--seed", "3", "--body-part", "HAND",
                           "--view", "LATERAL", "--no-send", "--json"], capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout[done.stdout.index("{\n"):])  # the report follows the log lines
    assert report["condition"] == {"body_part": "HAND", "view": "LATERAL"}
    from service.archive.store import Store
    from tests.helpers import make_config

    store = Store(make_config(home))
    try:
        registry = Registry.with_bundled(Home.at(home).models_dir)
        stored = [store.read(i["sop_instance_uid"]) for i in report["instances"]]
        for ds in stored:
            assert (ds.BodyPartExamined, ds.ViewPosition) == ("HAND", "LATERAL")
            assert np.array_equal(regenerate(ds, registry), ds.pixel_array)
    finally:
        store.close()
    bad = subprocess.run([*cli, "synthesize", "--model", "tiny-cdcgan", "--count", "1", "--body-part", "HAND", "--no-send"],
                         capture_output=True, text=True, timeout=180)
    assert bad.returncode != 0 and "--view" in bad.stderr
