"""`synthpacs synthesize` and `synthpacs outbox ls|retry`, run as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pydicom
import pytest

from service.archive.store import Store
from service.cli import main
from service.config import to_toml
from service.home import Home
from tests.helpers import free_port, make_config
from tests.synthetic.conftest import StoreSCP, export_tiny_dcgan


def _config_file(tmp_path: Path, home: Path, peers: list[tuple[str, int]]) -> Path:
    data = {
        "home": str(home),
        "deid": {"secret": "test-secret"},
        "outbox": {"backoff_initial_s": 0.2, "backoff_max_s": 1.0, "health_interval_s": 0},
        # The tiny model has no near-copy index and its training set is not here: the operator allows it.
        "synthetic": {"allow_unchecked": True},
        "dicom": {"peers": [{"ae_title": ae, "host": "127.0.0.1", "port": port} for ae, port in peers]},
    }
    path = tmp_path / "synthpacs.toml"
    path.write_text(to_toml(data))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["--log-level", "error", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def model(home):
    return export_tiny_dcgan(Home.at(home).models_dir)


def test_synthesize_into_the_archive(tmp_path, home, model, capsys):
    conf = _config_file(tmp_path, home, [])
    code, out, err = _run(capsys, "--config", str(conf), "synthesize", "--model", "tiny-dcgan", "--count", "3", "--seed", "40",
                          "--psi", "0.9", "--no-send", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == "tiny-dcgan:v1" and report["destination"] is None
    assert [i["seed"] for i in report["instances"]] == [40, 41, 42]
    assert all(i["status"] == "stored" for i in report["instances"])
    assert "generating with tiny-dcgan:v1: 3/3" in err  # progress with rate on stderr
    store = Store(make_config(home))
    try:
        ds = store.read(report["instances"][0]["sop_instance_uid"])
        assert ds.SyntheticData == "YES" and "seed=40" in ds.ImageComments and "psi=0.9" in ds.ImageComments
    finally:
        store.close()


@pytest.mark.integration
def test_synthesize_and_send(tmp_path, home, model, capsys):
    peer = StoreSCP(tmp_path / "pacs", ae_title="PACS")
    try:
        conf = _config_file(tmp_path, home, [("PACS", peer.port)])
        code, out, err = _run(capsys, "--config", str(conf), "synthesize", "--model", "tiny-dcgan", "--count", "2", "--send", "PACS",
                              "--burn-in-label", "--series-description", "wrist for teaching")
        assert code == 0, out + err
        assert "Study Instance UID" in out and out.count("queued") == 2 and out.count("-> sent") == 2
        received = [pydicom.dcmread(p) for p in peer.files()]
        assert len(received) == 2
        assert all(ds.BurnedInAnnotation == "YES" and ds.SeriesDescription == "SYNTHETIC wrist for teaching" for ds in received)
        code, out, _ = _run(capsys, "--config", str(conf), "outbox", "ls")
        assert code == 0 and "PACS: up; 2 sent" in out
    finally:
        peer.stop()


@pytest.mark.integration
def test_undelivered_sends_stay_queued_and_retry_sends_them(tmp_path, home, model, capsys):
    port = free_port()
    conf = _config_file(tmp_path, home, [("PACS", port)])
    code, out, _ = _run(capsys, "--config", str(conf), "synthesize", "--model", "tiny-dcgan", "--count", "2", "--send", "PACS", "--wait", "1.5")
    assert code == 1
    assert "not delivered within 1.5 s; they stay queued" in out
    code, out, _ = _run(capsys, "--config", str(conf), "outbox", "ls", "--state", "pending")
    assert "PACS: DOWN" in out and out.count(" pending ") == 2
    peer = StoreSCP(tmp_path / "pacs", ae_title="PACS", port=port)
    try:
        code, out, _ = _run(capsys, "--config", str(conf), "outbox", "retry", "--destination", "PACS", "--send", "--wait", "60")
        assert code == 0, out
        assert "2 outbox item(s) due now" in out and "2 sent, 0 failed, 0 still waiting" in out
        assert len(peer.files()) == 2
        code, out, _ = _run(capsys, "--config", str(conf), "outbox", "ls", "--json")
        listing = json.loads(out)
        assert listing["counts"] == {"PACS": {"sent": 2}} and listing["destinations"]["PACS"]["healthy"]
    finally:
        peer.stop()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--model", "no-such-model", "--count", "1"], "no model named 'no-such-model'"),
        (["--model", "tiny-dcgan", "--count", "0"], "--count must be at least 1"),
        (["--model", "tiny-dcgan", "--count", "1", "--send", "NOWHERE"], "not a dicom.peers entry"),
        (["--model", "tiny-dcgan", "--count", "2", "--seed", str(2**32 - 1)], "--seed must leave room"),
        (["--model", "tiny-dcgan", "--count", "1", "--device", "tpu"], "inference.device"),
    ],
)
def test_bad_synthesize_requests_say_what_to_change_and_write_nothing(tmp_path, home, model, capsys, argv, message):
    conf = _config_file(tmp_path, home, [])
    code, _out, err = _run(capsys, "--config", str(conf), "synthesize", *argv)
    assert code == 2 and message in err
    store = Store(make_config(home))
    try:
        assert list(store.index.instances()) == []
    finally:
        store.close()


def test_retry_of_an_unknown_destination_is_refused(tmp_path, home, capsys):
    conf = _config_file(tmp_path, home, [])
    code, _out, err = _run(capsys, "--config", str(conf), "outbox", "retry", "--destination", "GHOST")
    assert code == 2 and "no destination 'GHOST'" in err
