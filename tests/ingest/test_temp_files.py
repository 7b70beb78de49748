"""No temporary file outlives its association, whatever ends it, on both receive paths.

A C-STORE's dataset is written to ``store/.tmp`` while it arrives (service/dicom/fastpath/streaming.py). Half of a
dataset is sent, its file is seen in ``store/.tmp``, then the association ends: released, aborted, closed
without a word, by a protocol error, or by an exception while storing. Storage-only associations are served
by the direct loop, those that also carry Query/Retrieve by pynetdicom; both must leave ``store/.tmp`` empty.
"""

from __future__ import annotations

import time

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind
from structlog.testing import capture_logs

from service.archive import status
from service.data.phantom import CR_IMAGE_STORAGE, phantom_dataset
from tests.helpers import make_config
from tests.ingest.test_direct import _Server, _encoded, _store_fragments, _wait
from tests.ingest.util import assert_no_temp_files, scu, send

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("no_temp_left")]

PATHS = {
    "direct": [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)],
    "pynetdicom": [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian), (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)],
}
ENDINGS = ["release", "abort", "close", "protocol error", "exception"]


@pytest.mark.parametrize("path", sorted(PATHS))
@pytest.mark.parametrize("ending", ENDINGS)
def test_no_temp_file_outlives_its_association(home, path, ending, monkeypatch):
    server = _Server(make_config(home), with_qr=True)
    try:
        if ending == "exception":
            def broken(*_args, **_kwargs):
                raise RuntimeError("storage failed")

            monkeypatch.setattr(server.store, "commit_streamed", broken)
        ae = scu("LEAKER", PATHS[path])
        ds = phantom_dataset(256, 256, seed=7)
        with capture_logs() as logs:
            try:
                assoc = ae.associate("127.0.0.1", server.port, ae_title="SYNTHPACS")
                assert assoc.is_established
                fragments = [_encoded(p) for p in _store_fragments(assoc, ds)]
                sent = fragments if ending == "exception" else fragments[: len(fragments) // 2]
                for raw in sent:
                    assoc.dul.socket.send(raw)
                if ending != "exception":
                    assert _wait(lambda: any(server.store.tmp.iterdir())), "the dataset's file was never started"
                ender = {
                    "release": lambda: assoc.dul.socket.send(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
                    "abort": lambda: assoc.dul.socket.send(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
                    "close": lambda: assoc.dul.socket.socket.close(),
                    "protocol error": lambda: assoc.dul.socket.send(b"\x09\x00\x00\x00\x00\x02\x00\x00"),
                    "exception": lambda: time.sleep(0.5) or assoc.dul.socket.send(b"\x07\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
                }[ending]
                ender()
                ended = ("association_released", "association_aborted")
                assert _wait(lambda: any(e["event"] in ended for e in logs)), "the server never ended the association"
            finally:
                ae.shutdown()
        assert _wait(lambda: not any(server.store.tmp.iterdir())), "a temporary file outlived its association"
        assert_no_temp_files(home)
        assert server.instances() == 0
        monkeypatch.undo()
        assert send(server.port, [phantom_dataset(16, 16)]) == [status.SUCCESS]
    finally:
        server.stop()
    assert_no_temp_files(home)
