"""``synthpacs ingest``, ``store stats|ls|verify`` and ``echo`` as a user runs them."""

from __future__ import annotations

import json
import shutil

import pydicom
import pytest

from service.archive.index import Index
from service.cli import main
from service.data.phantom import phantom_dataset
from tests.helpers import free_port, make_config
from tests.ingest.util import PHI, jpeg_as_dicom, phantom_files
from tests.peers import RunningSCP


@pytest.fixture
def cli_env(home, monkeypatch):
    monkeypatch.setenv("SYNTHPACS_HOME", str(home))
    monkeypatch.setenv("SYNTHPACS_DEID_SECRET", "test-secret")
    monkeypatch.setenv("SYNTHPACS_LOG_LEVEL", "warning")
    return home


def test_ingest_walks_folders_and_reports_what_happened(cli_env, tmp_path, capsys):
    root = tmp_path / "import"
    phantom_files(root / "a" / "nested", 4)
    phantom_files(root / "b", 2)
    shutil.copy(root / "b" / "0000.dcm", root / "a" / "copy.dcm")  # the same instance twice
    (root / "notes.txt").write_text("not DICOM")
    (root / "b" / "empty.dcm").write_bytes(b"")
    bad = phantom_dataset(16, 16)
    bad.SeriesInstanceUID = "1.2.3.4.x"
    bad.save_as(root / "bad.dcm", enforce_file_format=True)

    rc = main(["ingest", "--quiet", "--json", str(root)])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1  # something was refused
    assert summary["files"] == 10 and summary["imported"] == 6 and summary["duplicates"] == 1
    assert sum(summary["skipped"].values()) == 2 and summary["refused"] == {"invalid_uid": 1}
    assert "SeriesInstanceUID" in summary["refused_examples"]["invalid_uid"]

    assert main(["ingest", str(root / "a")]) == 0  # everything there is already stored
    out, err = capsys.readouterr()
    assert "duplicates  5" in out and "ingest: 5/5 files (100%)" in err and "ETA" not in err.splitlines()[-1]

    assert main(["store", "stats", "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["instances"] == 6 and stats["by_source_ae"] == {"": 6}
    assert main(["store", "ls", "--level", "instance", "--json", "--limit", "0"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(rows) == 6 and all(r["source"] == "import" for r in rows)
    assert main(["store", "ls"]) == 0
    listing = capsys.readouterr().out
    assert listing.startswith("study_uid") and "ANON-" in listing and PHI["PatientID"] not in listing
    assert main(["store", "verify"]) == 0


def test_ingest_of_a_missing_path_is_a_clear_error(cli_env, tmp_path, capsys):
    assert main(["ingest", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_store_commands_without_a_store(cli_env, capsys):
    assert main(["store", "stats"]) == 2
    assert "no store at" in capsys.readouterr().err


def test_echo_command(home, capsys, monkeypatch):
    monkeypatch.setenv("SYNTHPACS_LOG_LEVEL", "warning")
    scp = RunningSCP(make_config(home))
    try:
        assert main(["echo", "127.0.0.1", str(scp.port), "-aec", "SYNTHPACS", "--repeat", "2"]) == 0
        out = capsys.readouterr().out
        assert out.count("success (status 0x0000)") == 2
        assert main(["echo", "127.0.0.1", str(scp.port), "-aec", "SYNTHPACS", "-aet", "BAD\\AE"]) == 1
        assert "not valid" in capsys.readouterr().err
    finally:
        scp.stop()
    assert main(["echo", "127.0.0.1", str(free_port()), "-aec", "SYNTHPACS", "--timeout", "2"]) == 1
    assert "connection refused: nothing listens on" in capsys.readouterr().err


def test_shared_radiographs_wrapped_as_dicom_are_ingested(cli_env, shared_radiographs, tmp_path, capsys):
    folder = tmp_path / "fracatlas"
    folder.mkdir()
    jpegs = sorted(shared_radiographs.glob("*.jpg"))[:6]
    for i, jpeg in enumerate(jpegs):
        jpeg_as_dicom(jpeg, folder / f"{i}.dcm", "2.25.4242")  # one study and series, new SOP UIDs
    assert main(["ingest", "--quiet", str(folder)]) == 0
    capsys.readouterr()
    index = Index(cli_env / "store" / "index.sqlite")
    try:
        records = list(index.instances())
    finally:
        index.close()
    assert len(records) == len(jpegs) and len({r.study_uid for r in records}) == 1
    for rec in records:
        data = (cli_env / "store" / rec.path).read_bytes()
        assert not any(v.encode() in data for v in PHI.values())
        assert pydicom.dcmread(cli_env / "store" / rec.path).BodyPartExamined == "EXTREMITY"


def test_ingest_skips_a_file_it_cannot_decode_and_imports_the_rest(cli_env, tmp_path, capsys):
    root = tmp_path / "import"
    phantom_files(root, 5)
    # First in walking order: a File Meta Transfer Syntax UID that is not a transfer syntax (it raised
    # ValueError out of the whole import before), and one whose File Meta Information is garbage.
    bad = phantom_dataset(16, 16)
    bad.save_as(root / "0-bad-syntax.dcm", enforce_file_format=True)
    raw = (root / "0-bad-syntax.dcm").read_bytes()
    assert raw.count(b"1.2.840.10008.1.2.1\x00") == 1
    (root / "0-bad-syntax.dcm").write_bytes(raw.replace(b"1.2.840.10008.1.2.1\x00", b"1.2.3.4.5.6.7.8.9.1\x00"))
    (root / "0-bad-meta.dcm").write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"\x07" * 64)

    rc = main(["ingest", "--quiet", "--json", str(root)])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1  # two DICOM files could not be imported
    assert summary["imported"] == 5 and summary["files"] == 7
    assert summary["refused"].get("unknown_transfer_syntax") == 1 and sum(summary["refused"].values()) == 2, summary
    assert "not a transfer syntax" in summary["refused_examples"]["unknown_transfer_syntax"]

    assert main(["ingest", "--quiet", str(root / "0-bad-syntax.dcm")]) == 1
    out = capsys.readouterr().out
    assert "refused     1" in out and "unknown_transfer_syntax" in out and "imported    0" in out
    assert main(["ingest", "--quiet", str(root / "0000.dcm")]) == 0  # a duplicate is no failure


def test_ingest_refuses_a_deflated_file_that_inflates_beyond_the_cap(cli_env, tmp_path, capsys):
    """A Part 10 file's deflated dataset (PS3.5 §A.5) is inflated as a counted stream, as on the network."""
    import tracemalloc

    from tests.ingest.test_limits import _deflate_bomb

    root = tmp_path / "import"
    phantom_files(root, 2)
    bomb = _deflate_bomb(root / "bomb.dcm", 512 << 20)
    assert bomb.stat().st_size < 1 << 20
    tracemalloc.start()
    try:
        rc = main(["ingest", "--quiet", "--json", str(root)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    summary = json.loads(capsys.readouterr().out)
    assert rc == 1 and summary["imported"] == 2 and summary["refused"] == {"too_large": 1}, summary
    assert "inflates beyond" in summary["refused_examples"]["too_large"]
    assert peak < 64 << 20, f"ingest's traced memory peaked at {peak >> 20} MiB"
