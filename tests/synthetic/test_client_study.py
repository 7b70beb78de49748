"""``synthpacs client study``: GenerateStudy from the command line over a real gRPC channel, with a conditional
model's --body-part/--view, into the archive and through the outbox to dcmtk's storescp."""

from __future__ import annotations

import json

import grpc
import pydicom
import pytest

from service.cli import main
from service.runtime import Runtime
from tests.helpers import free_port
from tests.synthetic.conftest import StoreSCP, config_with_peers, export_tiny_conditional_dcgan, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def served(home, tmp_path):
    """The gRPC server, archive and outbox of `synthpacs serve`, in process; storescp as the PACS."""
    pacs = StoreSCP(tmp_path / "pacs", ae_title="PACS")
    export_tiny_conditional_dcgan(home)
    cfg = config_with_peers(
        home, [("PACS", "127.0.0.1", pacs.port)],
        **{"dicom.port": free_port(), "outbox.health_interval_s": 0, "outbox.backoff_initial_s": 0.3, "deid.enabled": False,
           "inference.preload": ["tiny-cdcgan"], "inference.reload_interval_s": 0, "inference.device": "cpu"},
    )
    runtime = Runtime(cfg)
    runtime.add_outbox()
    server = runtime.add_grpc()
    runtime.start()
    port = server.address.rsplit(":", 1)[1]
    channel = grpc.insecure_channel(server.address)
    grpc.channel_ready_future(channel).result(timeout=30)
    channel.close()
    yield cfg, runtime, pacs, port
    runtime.stop()
    pacs.stop()


def test_client_study_sends_a_conditional_study_to_the_pacs(served, capsys):
    cfg, runtime, pacs, port = served
    rc = main(["client", "study", "--port", port, "--model", "tiny-cdcgan", "--seeds", "4,5", "--body-part", "hand",
               "--view", "AP", "--send", "PACS", "--request-id", "plan-7", "--json"])
    out = capsys.readouterr().out
    assert rc == 0, out
    report = json.loads(out)
    assert report["destination"] == "PACS" and report["model"] == "tiny-cdcgan:v1" and report["request_id"] == "plan-7"
    assert [(i["seed"], i["state"]) for i in report["instances"]] == [(4, "queued"), (5, "queued")]
    assert report["condition"] == {"body_part": "hand", "view": "AP"}
    assert wait_for(lambda: len(pacs.files()) == 2, timeout=60), "the outbox did not deliver the study"
    for path in pacs.files():
        ds = pydicom.dcmread(path)
        assert ds.StudyInstanceUID == report["study_instance_uid"] and ds.SyntheticData == "YES"
        assert (ds.BodyPartExamined, ds.ViewPosition) == ("HAND", "AP")
        assert "body_part=HAND view=AP" in ds.ImageComments


def test_client_study_stays_in_the_archive_and_prints_each_instance(served, capsys):
    cfg, runtime, pacs, port = served
    rc = main(["client", "study", "--port", port, "--model", "tiny-cdcgan", "--count", "1", "--first-seed", "11",
               "--body-part", "LEG", "--view", "LATERAL", "--bits", "16"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "(archive only)" in out and "stored" in out and "seed         11" in out
    study_uid = out.split("Study Instance UID", 1)[1].split()[0]
    (record,) = [r for r in runtime.store.index.instances() if r.study_uid == study_uid]
    ds = runtime.store.read(record.sop_instance_uid)
    assert (ds.BodyPartExamined, ds.ViewPosition, ds.BitsStored) == ("LEG", "LATERAL", 16)
    assert pacs.files() == []


def test_client_study_bad_requests_are_clear(served, capsys):
    cfg, runtime, pacs, port = served
    for argv, expected in (
        (["--count", "1", "--body-part", "SKULL", "--view", "AP"], "known: HAND, LEG"),
        (["--count", "1", "--body-part", "HAND"], "needs a view"),
        (["--count", "1", "--body-part", "HAND", "--view", "AP", "--send", "NOWHERE"], "NOWHERE"),
        (["--seeds", "1,x"], "comma-separated integers"),
        (["--body-part", "HAND", "--view", "AP"], "--count N or --seeds"),
        (["--model", "nope", "--count", "1"], "NOT_FOUND"),
    ):
        model = [] if "--model" in argv else ["--model", "tiny-cdcgan"]
        assert main(["client", "study", "--port", port, *model, *argv]) == 2, argv
        assert expected in capsys.readouterr().err, argv
    assert main(["client", "study", "--port", str(free_port()), "--timeout", "5", "--model", "tiny-cdcgan", "--count", "1",
                 "--body-part", "HAND", "--view", "AP"]) == 2
    assert "UNAVAILABLE" in capsys.readouterr().err
