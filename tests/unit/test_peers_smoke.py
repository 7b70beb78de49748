"""The test peers themselves start, answer and stop (so a failure elsewhere is not a harness problem)."""

import subprocess

import pytest

from tests.helpers import make_config, require_tool
from tests.peers import RunningSCP


@pytest.mark.integration
def test_orthanc_fixture_answers(orthanc):
    assert orthanc.get("/system")["DicomAet"] == "ORTHANC"
    assert orthanc.instances() == []


@pytest.mark.integration
def test_echoscu_against_our_scp(home):
    echoscu = require_tool("echoscu", "dcmtk")
    scp = RunningSCP(make_config(home, **{"deid.enabled": False}))
    try:
        out = subprocess.run([echoscu, "-aec", scp.ae_title, scp.host, str(scp.port)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
    finally:
        scp.stop()
