"""The server's CPU for a dataset header grows linearly with the header, however finely it is fragmented.

A header of tens of thousands of tiny private elements arrives in 4 KB PDUs (the server advertises a
maximum PDU of 4096). Parsing it again from its start on every fragment made its cost quadratic (0.49 MB:
18 s of CPU, 0.97 MB: 96 s). The server runs as its own process; its CPU (user + system, /proc/PID/stat)
is read around each association. CPU time, not wall time: a header four times larger must cost well under
the sixteen times a quadratic parse would (the bound, 8x, leaves room for load on a shared machine).
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from service.archive import status
from service.data.phantom import phantom_dataset
from tests.ingest.util import SCPProcess, chunked_sending, encode_body, send, write_raw_file

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("no_temp_left")]

SMALL_ELEMENTS = 12_000  # 10 bytes each: a 120 KB header
COPIES = 3


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tiny_elements(count: int) -> bytes:
    """``count`` private elements (0009,1000)... of VR LO and 2 bytes each, explicit VR little endian."""
    return b"".join(struct.pack("<HH2sH", 0x0009, 0x1000 + i, b"LO", 2) + b"AB" for i in range(count))


def _file(folder: Path, count: int, seed: int) -> Path:
    ds = phantom_dataset(32, 32, seed=seed)
    ds.SOPInstanceUID = generate_uid()
    low, high = Dataset(), Dataset()
    for elem in ds:
        (low if elem.tag.group < 0x0009 else high).add(elem)
    body = encode_body(low) + _tiny_elements(count) + encode_body(high)
    return write_raw_file(folder / f"{count}-{seed}.dcm", body, sop_class=ds.SOPClassUID, sop_uid=ds.SOPInstanceUID)


def test_fragmented_header_costs_cpu_linear_in_its_size(tmp_path):
    server = SCPProcess(tmp_path / "home", env={"SYNTHPACS_DICOM_MAX_PDU": "4096"}).start()
    try:
        pid = server.proc.pid  # type: ignore[union-attr]
        folder = tmp_path / "files"
        folder.mkdir()
        cost = {}
        with chunked_sending():
            assert send(server.port, [_file(folder, 100, 0)]) == [status.SUCCESS]  # warm up
            for count in (SMALL_ELEMENTS, 4 * SMALL_ELEMENTS):
                files = [_file(folder, count, seed) for seed in range(COPIES)]
                before = _cpu_seconds(pid)
                assert send(server.port, files) == [status.SUCCESS] * COPIES
                cost[count] = _cpu_seconds(pid) - before
        print(f"server CPU: {cost}")
        ratio = cost[4 * SMALL_ELEMENTS] / max(cost[SMALL_ELEMENTS], 0.05)
        assert ratio < 8, f"4x the header cost {ratio:.1f}x the CPU ({cost})"
    finally:
        server.stop()
