"""The store's free-space watermark through the network: below it, dcmtk's storescu gets 0xA700 and nothing
is written; the metric, a log line and ``store stats`` say why; when space returns, storing resumes."""

from __future__ import annotations

import json
import os

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from service.archive.watermark import Watermark, free_space
from service.cli import main
from tests.helpers import make_config, require_tool
from tests.ingest.util import echo_ok, phantom_files, storescu
from tests.peers import RunningSCP
from tests.synthetic.conftest import wait_for

pytestmark = pytest.mark.integration


def _failures(reason: str) -> float:
    return REGISTRY.get_sample_value("synthpacs_store_failures_total", {"reason": reason}) or 0.0


def test_below_the_watermark_c_store_is_refused_and_recovers_by_itself(home, tmp_path):
    require_tool("storescu", "dcmtk")
    free = os.statvfs(home).f_bavail * os.statvfs(home).f_frsize
    # A watermark above the free space now: the disk counts as full.
    scp = RunningSCP(make_config(home, **{"store.min_free_bytes": free + 2**40, "store.min_free_percent": 0}))
    try:
        files = phantom_files(tmp_path / "in", 3)
        before = _failures("low_disk")
        with capture_logs() as logs:
            out = storescu(scp.port, tmp_path / "in", extra=("-v",))
        # Refused: Out of Resources (0xA700); storescu stops sending at the first such answer.
        assert "Refused: OutOfResources" in out.stdout + out.stderr, out.stdout + out.stderr
        refused = [e["reason"] for e in logs if e["event"] == "instance_refused"]
        assert refused and set(refused) == {"low_disk"}
        assert _failures("low_disk") == before + len(refused)
        assert REGISTRY.get_sample_value("synthpacs_store_below_watermark") == 1
        assert REGISTRY.get_sample_value("synthpacs_store_free_bytes") > 0
        assert any(e["event"] == "store_low_disk" for e in logs)
        assert scp.store.index.stats()["instances"] == 0
        assert list(scp.store.root.rglob("*.dcm")) == [] and list(scp.store.tmp.iterdir()) == []
        assert echo_ok(scp.port)  # the server itself is fine

        # Space returns (here: the watermark drops below the free space); no restart needed.
        scp.store.watermark.min_free_bytes = 0
        with capture_logs() as logs:
            stored = wait_for(lambda: storescu(scp.port, tmp_path / "in").returncode == 0 and scp.store.index.stats()["instances"] == len(files), timeout=30, interval=0.2)
        assert stored
        assert any(e["event"] == "store_disk_recovered" for e in logs)
        assert REGISTRY.get_sample_value("synthpacs_store_below_watermark") == 0
    finally:
        scp.stop()


def test_below_the_watermark_a_resend_of_stored_instances_still_succeeds(home, tmp_path):
    """A PACS that lost our response re-sends: the instance is held, so the answer is success, not 0xA700."""
    require_tool("storescu", "dcmtk")
    scp = RunningSCP(make_config(home))
    try:
        phantom_files(tmp_path / "held", 2)
        assert storescu(scp.port, tmp_path / "held").returncode == 0
        assert scp.store.index.stats()["instances"] == 2
        scp.store.watermark.interval_s = 0  # every instance reads the free space: the cached sample said "room"
        scp.store.watermark.min_free_bytes = 2**60  # the disk counts as full from now on
        with capture_logs() as logs:
            again = storescu(scp.port, tmp_path / "held", extra=("-v",))
        assert again.returncode == 0 and "Refused" not in again.stdout + again.stderr, again.stdout + again.stderr
        assert not [e for e in logs if e["event"] == "instance_refused"]
        assert any(e["event"] == "store_low_disk" for e in logs)  # the re-send was judged below the watermark
        phantom_files(tmp_path / "new", 1)
        new = storescu(scp.port, tmp_path / "new", extra=("-v",))
        assert "Refused: OutOfResources" in new.stdout + new.stderr
        assert scp.store.index.stats()["instances"] == 2 and list(scp.store.tmp.iterdir()) == []
    finally:
        scp.stop()


def test_free_space_is_sampled_at_most_once_per_interval(home, monkeypatch):
    calls = []
    real = os.statvfs
    monkeypatch.setattr(os, "statvfs", lambda p: calls.append(p) or real(p))
    mark = Watermark(home, 0, 0.0, interval_s=3600)
    for _ in range(1000):
        assert mark.room() is None
    assert len(calls) == 1


def test_the_threshold_is_the_larger_of_bytes_and_percent(home):
    st = os.statvfs(home)
    total = st.f_blocks * st.f_frsize
    assert free_space(home, 1, 10.0).threshold_bytes == int(total * 0.10)
    assert free_space(home, total, 10.0).threshold_bytes == total


def test_store_stats_shows_free_space_and_the_watermark(home, capsys):
    scp = RunningSCP(make_config(home))
    scp.stop()
    assert main(["store", "stats", "--home", str(home)]) == 0
    out = capsys.readouterr().out
    assert "free of" in out and "watermark" in out and "accepting instances" in out
    assert main(["store", "stats", "--home", str(home), "--json"]) == 0
    disk = json.loads(capsys.readouterr().out)["disk"]
    assert disk["free_bytes"] > 0 and disk["min_free_bytes"] >= 2 * 1024**3 and disk["accepting"] is True
