"""The receive fast path (service/dicom/fastpath/): the pynetdicom releases it was written against, and
the one switch that leaves every association to pynetdicom."""

from __future__ import annotations

import tomllib

from service.archive import status
from service.data.phantom import phantom_dataset
from service.dicom import fastpath
from service.dicom.fastpath.polling import ResponsiveAssociation
from tests.helpers import REPO, make_config
from tests.ingest.test_direct import _Server
from tests.ingest.util import send


def test_installed_pynetdicom_is_one_the_fast_path_was_written_against():
    low, high = fastpath.PYNETDICOM_TESTED
    assert fastpath.pynetdicom_tested(), (
        f"pynetdicom {fastpath.pynetdicom_version()} is installed, but service/dicom/fastpath/ reaches into the "
        f"internals of pynetdicom >={low},<{high}: check direct.py, streaming.py, polling.py, sockets.py and "
        f"frontdoor.py against the new release, then widen PYNETDICOM_TESTED and the bound in pyproject.toml")


def test_pyproject_bounds_pynetdicom_to_the_tested_releases():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (spec,) = [d for d in deps if d.startswith("pynetdicom")]
    low, high = fastpath.PYNETDICOM_TESTED
    assert spec.replace(" ", "") == f"pynetdicom>={low},<{high}"


def test_versions_outside_the_range_are_not_tested():
    assert fastpath.pynetdicom_tested("3.0.4") and fastpath.pynetdicom_tested("3.0.0")
    assert not fastpath.pynetdicom_tested("3.1.0") and not fastpath.pynetdicom_tested("2.1.1")
    assert not fastpath.pynetdicom_tested("4.0.0.dev1")


def test_one_switch_leaves_every_association_to_pynetdicom(home):
    server = _Server(make_config(home, **{"dicom.fast_path": False}))
    try:
        assert send(server.port, [phantom_dataset(32, 32, seed=1), phantom_dataset(32, 32, seed=2)]) == [status.SUCCESS] * 2
        (assoc,) = server.accepted
        assert getattr(assoc, "direct_loop", None) is None and not isinstance(assoc, ResponsiveAssociation)
        assert server.instances() == 2
        server.nothing_left_over()
    finally:
        server.stop()
