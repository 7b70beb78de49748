"""Helpers for the ingest tests: Part 10 bytes, hand-made broken files, SCU senders, an SCP process."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification

from service.archive.encoded import file_meta_bytes
from service.data.phantom import CR_IMAGE_STORAGE, phantom_dataset
from tests.helpers import REPO, free_port

# Patient data the PHI tests look for everywhere: none of it may survive de-identification or reach a log.
PHI = {
    "PatientName": "DOE^JANE^Q",
    "PatientID": "MRN-7734-2291",
    "PatientBirthDate": "19610317",
    "AccessionNumber": "ACC99887766",
    "InstitutionName": "Saint Elsewhere Hospital",
    "ReferringPhysicianName": "HOUSE^GREGORY",
    "OperatorsName": "NURSE^RATCHED",
    "StudyDescription": "KNEE DOE JANE",
    "OtherPatientIDs": "OLDMRN-4455",
    "PatientAddress": "221B Baker Street",
}


def part10(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def encode_body(ds: Dataset) -> bytes:
    """The dataset alone, Explicit VR Little Endian, as a C-STORE carries it."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return fp.getvalue()


def with_phi(ds: Dataset) -> Dataset:
    for keyword, value in PHI.items():
        setattr(ds, keyword, value)
    return ds


def write_raw_file(path: Path, body: bytes, sop_class: str = CR_IMAGE_STORAGE, sop_uid: str | None = None) -> Path:
    """A Part 10 file whose dataset is exactly ``body`` (garbage included), for sending it unparsed."""
    path.write_bytes(file_meta_bytes(sop_class, sop_uid or generate_uid(), ExplicitVRLittleEndian, "1.2.3.4", "TEST") + body)
    return path


@contextmanager
def chunked_sending() -> Iterator[None]:
    """pynetdicom sends files without parsing them: broken datasets reach the SCP as they are."""
    old = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        yield
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = old


def scu(calling: str = "TESTSCU", contexts: list[tuple[str, str]] | None = None) -> AE:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    for abstract, syntax in contexts or [(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)]:
        ae.add_requested_context(abstract, syntax)
    return ae


def send(port: int, items: list, calling: str = "TESTSCU", called: str = "SYNTHPACS") -> list[int]:
    """C-STORE each dataset or file over one association; the statuses in order (-1: no response)."""
    ae = scu(calling)
    assoc = ae.associate("127.0.0.1", port, ae_title=called)
    assert assoc.is_established, "the SCP did not accept the association"
    statuses = []
    try:
        for item in items:
            rsp = assoc.send_c_store(item)
            statuses.append(int(rsp.Status) if rsp is not None and "Status" in rsp else -1)
        assoc.release()
    finally:
        if assoc.is_established:
            assoc.abort()
        ae.shutdown()
    return statuses


def echo_ok(port: int, calling: str = "TESTSCU") -> bool:
    ae = scu(calling)
    assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHPACS")
    try:
        if not assoc.is_established:
            return False
        rsp = assoc.send_c_echo()
        assoc.release()
        return rsp is not None and rsp.Status == 0
    finally:
        ae.shutdown()


def storescu(port: int, *paths: Path, called: str = "SYNTHPACS", calling: str = "STORESCU", extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    cmd = ["storescu", "-aet", calling, "-aec", called, *extra, "+sd", "+r", "127.0.0.1", str(port), *map(str, paths)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ, TCP_NODELAY="1"))


def phantom_files(folder: Path, count: int, size: int = 64, **kwargs) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    study, series = generate_uid(), generate_uid()
    out = []
    for i in range(count):
        ds = phantom_dataset(size, size, seed=i % 4, study_uid=study, series_uid=series, instance_number=i + 1, **kwargs)
        path = folder / f"{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        out.append(path)
    return out


def jpeg_as_dicom(jpeg: Path, out: Path, seed_uid: str) -> Path:
    """A real radiograph JPEG (../shared/data/radiographs) wrapped as a CR instance carrying :data:`PHI`."""
    from service.data.images_import import wrap_pixels

    with Image.open(jpeg) as im:
        pixels = np.asarray(im.convert("L"), dtype=np.uint8)
    ds = wrap_pixels(pixels, "CR", seed_uid + ".1", seed_uid + ".2", generate_uid(), 1, 1, body_part="EXTREMITY")
    with_phi(ds)
    ds.save_as(out, enforce_file_format=True)
    return out


class SCPProcess:
    """``synthpacs scp`` as its own process on a free loopback port, stdout and stderr to a log file."""

    def __init__(self, home: Path, port: int | None = None, env: dict[str, str] | None = None):
        self.home, self.port = home, port or free_port()
        self.log_path = home.parent / f"scp-{self.port}.log"
        self.env = dict(os.environ, SYNTHPACS_DEID_SECRET="test-secret", SYNTHPACS_METRICS_ENABLED="false", **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "SCPProcess":
        log = open(self.log_path, "ab")
        cmd = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
               "scp", "--home", str(self.home), "--port", str(self.port), "--log-level", "debug"]
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synthpacs scp exited with {self.proc.returncode}:\n{self.log()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"synthpacs scp did not listen within {timeout} s:\n{self.log()[-2000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def assert_no_temp_files(home: Path) -> None:
    """Nothing of an association may outlive it: ``store/.tmp`` is empty once the server is done with it."""
    from service.home import Home

    tmp = Home(Path(home)).tmp_dir
    left = sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
    assert left == [], f"temporary files left in {tmp}: {left}"
