"""A bounded DIMSE/PDU fuzzer for synthpacs' DICOM listener: ``python -m bench.fuzz_dicom [--inputs N]``.

Real conversations are recorded once through a loopback proxy (C-ECHO; C-STORE on the direct loop; C-STORE
and C-FIND on pynetdicom's path; a deflated C-STORE), then replayed with mutations against ``synthpacs scp``
running as its own process: PDU lengths and types rewritten (zero, one past, 1 GiB, 4 GiB), presentation
data values resized or re-flagged, bytes flipped, inserted, deleted, PDUs dropped, duplicated, truncated or
spliced from another conversation (PS3.8 §9.3 PDU structure, Annex E PDVs). Each input is one connection:
everything is sent, answers are read until the server closes or goes quiet, the connection is closed.

Every run ends with the checks a hospital would make: a C-ECHO that must succeed, ``synthpacs store
verify`` that must be clean, and an empty ``store/.tmp``. Findings are inputs after which the server died
or stopped answering, internal errors in its log (``association_internal_error``, ``instance_store_crashed``),
a failed echo or verify, and temporary files left. It prints the figures: inputs tried, the server's memory
and thread high-water marks, findings. ``make fuzz`` runs thousands; ``tests/ingest/test_fuzz.py`` a few
hundred. ``--write`` records the figures in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1 << 30
INTERESTING_LENGTHS = (0, 1, 2, 5, 6, 0x7F, 0x80, 0xFFFF, 0x10000, 0x20000, 0x7FFFFFFF, 0xFFFFFFFF, GIB)
# Our own errors, and a thread that died of an exception nobody caught. (pynetdicom logs the PDUs it cannot
# decode with their tracebacks: those are expected here and not findings.)
INTERNAL_ERRORS = ("association_internal_error", "instance_store_crashed", "stream_cleanup_failed", "Exception in thread")


# -- the server ---------------------------------------------------------------------------------------

class Server:
    """``synthpacs scp`` in its own process on a free loopback port."""

    def __init__(self, home: Path, env: dict[str, str] | None = None):
        self.home = home
        self.port = _free_port()
        self.log_path = home.parent / f"fuzz-scp-{self.port}.log"
        self.env = dict(os.environ, SYNTHPACS_DEID_SECRET="fuzz-secret", SYNTHPACS_METRICS_ENABLED="false", **(env or {}))
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Server":
        with open(self.log_path, "ab") as log:
            cmd = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
                   "scp", "--home", str(self.home), "--port", str(self.port)]
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synthpacs scp exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("synthpacs scp did not listen")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, int]:
        """VmHWM (bytes) and Threads of the server process."""
        out = {}
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():  # type: ignore[union-attr]
                key, _, value = line.partition(":")
                if key == "VmHWM":
                    out["hwm"] = int(value.split()[0]) * 1024
                elif key == "Threads":
                    out["threads"] = int(value)
        except (OSError, AttributeError):
            pass
        return out

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- recording seeds ----------------------------------------------------------------------------------

def _record(server_port: int, scenario) -> bytes:
    """What a real SCU sends in ``scenario(port)``, captured by a one-connection loopback proxy."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    captured = bytearray()

    def proxy() -> None:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", server_port))

        def pump(src, dst, keep: bytearray | None) -> None:
            try:
                while data := src.recv(65536):
                    if keep is not None:
                        keep.extend(data)
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        back = threading.Thread(target=pump, args=(upstream, client, None), daemon=True)
        back.start()
        pump(client, upstream, captured)
        back.join(timeout=10)
        client.close()
        upstream.close()

    thread = threading.Thread(target=proxy, daemon=True)
    thread.start()
    try:
        scenario(listener.getsockname()[1])
    finally:
        thread.join(timeout=30)
        listener.close()
    return bytes(captured)


def record_seeds(server_port: int) -> dict[str, bytes]:
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind, Verification
    from pydicom.dataset import Dataset

    from service.data.phantom import CR_IMAGE_STORAGE, phantom_dataset

    def associate(port: int, contexts):
        ae = AE(ae_title="FUZZSEED")
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
        for abstract, syntax in contexts:
            ae.add_requested_context(abstract, syntax)
        return ae, ae.associate("127.0.0.1", port, ae_title="SYNTHPACS")

    def echo(port: int) -> None:
        ae, assoc = associate(port, [(Verification, ExplicitVRLittleEndian)])
        assoc.send_c_echo()
        assoc.release()
        ae.shutdown()

    def store(contexts, find: bool = False):
        def run(port: int) -> None:
            ae, assoc = associate(port, contexts)
            for seed in range(2):
                assoc.send_c_store(phantom_dataset(32, 32, seed=seed))
            if find:
                query = Dataset()
                query.QueryRetrieveLevel, query.StudyInstanceUID = "STUDY", ""
                for _ in assoc.send_c_find(query, StudyRootQueryRetrieveInformationModelFind):
                    pass
            assoc.release()
            ae.shutdown()
        return run

    return {
        "echo": _record(server_port, echo),
        "store_direct": _record(server_port, store([(CR_IMAGE_STORAGE, ExplicitVRLittleEndian)])),
        "store_qr": _record(server_port, store([(CR_IMAGE_STORAGE, ExplicitVRLittleEndian),
                                                 (StudyRootQueryRetrieveInformationModelFind, ExplicitVRLittleEndian)], find=True)),
        "store_deflated": _record(server_port, store([(CR_IMAGE_STORAGE, DeflatedExplicitVRLittleEndian)])),
    }


# -- mutation -----------------------------------------------------------------------------------------

def split_pdus(stream: bytes) -> list[bytes]:
    """A recorded stream cut into its PDUs (PS3.8 §9.3.1: type, reserved, 4-byte length)."""
    pdus, pos = [], 0
    while pos + 6 <= len(stream):
        length = struct.unpack_from(">I", stream, pos + 2)[0]
        pdus.append(stream[pos : pos + 6 + length])
        pos += 6 + length
    return pdus


def _set_length(pdu: bytes, length: int) -> bytes:
    return pdu[:2] + struct.pack(">I", length & 0xFFFFFFFF) + pdu[6:]


def mutate(rng: random.Random, seeds: dict[str, list[bytes]]) -> bytes:
    """One mutated conversation: a seed's PDUs with one to three mutations."""
    name = rng.choice(sorted(seeds))
    pdus = [bytearray(p) for p in seeds[name]]
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(pdus))
        pdu = pdus[i]
        op = rng.randrange(12)
        if op == 0:  # the PDU length field: an interesting value
            pdus[i] = bytearray(_set_length(bytes(pdu), rng.choice(INTERESTING_LENGTHS)))
        elif op == 1:  # the PDU length off by a little
            pdus[i] = bytearray(_set_length(bytes(pdu), max(0, len(pdu) - 6 + rng.randint(-8, 8))))
        elif op == 2:  # the PDU type
            pdu[0] = rng.choice((0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x00, 0x08, 0xFF))
        elif op == 3 and pdu[0] == 0x04 and len(pdu) >= 12:  # the first PDV's item length
            struct.pack_into(">I", pdu, 6, rng.choice(INTERESTING_LENGTHS) & 0xFFFFFFFF)
        elif op == 4 and pdu[0] == 0x04 and len(pdu) >= 12:  # the first PDV's context ID or control header
            pdu[10 + rng.randrange(2)] = rng.randrange(256)
        elif op == 5 and len(pdu) > 6:  # flip bytes
            for _ in range(rng.randint(1, 8)):
                pdu[rng.randrange(6, len(pdu))] ^= 1 << rng.randrange(8)
        elif op == 6 and len(pdu) > 6:  # an interesting 16/32-bit value somewhere in the body
            at = rng.randrange(6, len(pdu))
            value = rng.choice(INTERESTING_LENGTHS) & 0xFFFFFFFF
            pdu[at : at + 4] = struct.pack("<I" if rng.random() < 0.5 else ">I", value)[: len(pdu) - at]
        elif op == 7:  # truncate the PDU (and the conversation there)
            del pdus[i + 1 :]
            del pdu[rng.randrange(1, len(pdu) + 1) :]
        elif op == 8:  # drop a PDU
            if len(pdus) > 1:
                del pdus[i]
        elif op == 9:  # duplicate a PDU
            pdus.insert(i, bytearray(pdu))
        elif op == 10:  # insert random bytes
            at = rng.randrange(len(pdu) + 1)
            pdu[at:at] = rng.randbytes(rng.randint(1, 64))
        else:  # splice a PDU from another conversation
            other = rng.choice(seeds[rng.choice(sorted(seeds))])
            pdus.insert(i, bytearray(other))
    return b"".join(bytes(p) for p in pdus)


def send_once(port: int, payload: bytes, quiet_s: float = 0.3, bound_s: float = 15.0) -> None:
    """One connection: send ``payload``, read answers until the server closes or is quiet, close."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=bound_s)
    except OSError:
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.sendall(payload)
        except OSError:
            return  # the server closed on us mid-send: it refused what it had read
        sock.settimeout(quiet_s)
        deadline = time.monotonic() + bound_s
        while time.monotonic() < deadline:
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                return
            except OSError:
                return
    finally:
        sock.close()


# -- a run --------------------------------------------------------------------------------------------

@dataclass
class Report:
    inputs: int = 0
    seconds: float = 0.0
    baseline_hwm: int = 0
    hwm: int = 0
    threads_max: int = 0
    threads_after: int = 0
    echo_refusals: int = 0
    findings: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [
            f"inputs tried          {self.inputs} in {self.seconds:.0f} s",
            f"server memory (VmHWM) {self.baseline_hwm / 2**20:.0f} MiB before, {self.hwm / 2**20:.0f} MiB high-water",
            f"server threads        {self.threads_max} at most, {self.threads_after} after",
            f"mid-run C-ECHO        refused {self.echo_refusals} time(s) with every association slot taken, then served",
            f"findings              {len(self.findings)}" + "".join(f"\n  - {f}" for f in self.findings),
        ]


def _echo_ok(port: int) -> bool:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification

    ae = AE(ae_title="FUZZECHO")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.add_requested_context(Verification)
    try:
        assoc = ae.associate("127.0.0.1", port, ae_title="SYNTHPACS")
        if not assoc.is_established:
            return False
        rsp = assoc.send_c_echo()
        assoc.release()
        return rsp is not None and getattr(rsp, "Status", None) == 0
    finally:
        ae.shutdown()


# How long a mid-run C-ECHO may be refused before it counts as a finding. The fuzzer's four workers open
# associations from the same host as fast as the server ends them, and a mutated conversation can hold its
# slot for seconds (p90 3.3 s measured, up to 5 s), so under load all ``dicom.max_associations`` (16) can be
# taken at the moment of the check: that is the limit working ("local limit exceeded", which a PACS
# retries), not a listener that stopped serving. A slot must come free within this time.
ECHO_PATIENCE_S = 20.0


def _echo_within(port: int, patience_s: float) -> int | None:
    """Refusals before a C-ECHO succeeded within ``patience_s``; None when none did."""
    deadline = time.monotonic() + patience_s
    refusals = 0
    while True:
        if _echo_ok(port):
            return refusals
        refusals += 1
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def _store_verify(home: Path, env: dict[str, str]) -> tuple[bool, str]:
    cmd = [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
           "store", "verify", "--home", str(home)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    return out.returncode == 0, (out.stdout + out.stderr).strip()


def run(inputs: int, seed: int = 0, workers: int = 4, home: Path | None = None, echo_every: int = 100) -> Report:
    """Fuzz a fresh server with ``inputs`` mutated conversations; the report of what it survived."""
    report = Report()
    with tempfile.TemporaryDirectory(prefix="synthpacs-fuzz-") as scratch:
        home = home or Path(scratch) / "home"
        server = Server(home).start()
        try:
            seeds = {name: split_pdus(stream) for name, stream in record_seeds(server.port).items()}
            seeds = {name: pdus for name, pdus in seeds.items() if pdus}
            if len(seeds) < 4:
                report.findings.append(f"only {len(seeds)} of 4 seed conversations could be recorded")
            report.baseline_hwm = server.status().get("hwm", 0)
            rng = random.Random(seed)
            payloads = (mutate(rng, seeds) for _ in range(inputs))
            started = time.perf_counter()
            lock = threading.Lock()

            def one(payload: bytes) -> None:
                send_once(server.port, payload)
                st = server.status()
                with lock:
                    report.inputs += 1
                    report.threads_max = max(report.threads_max, st.get("threads", 0))
                    if report.inputs % echo_every == 0 and server.alive():
                        tries = _echo_within(server.port, ECHO_PATIENCE_S)
                        if tries is None:
                            report.findings.append(f"C-ECHO failed for {ECHO_PATIENCE_S:.0f} s after {report.inputs} inputs")
                        else:
                            report.echo_refusals += tries

            with ThreadPoolExecutor(max_workers=workers) as pool:
                for _ in pool.map(one, payloads):
                    if not server.alive():
                        break
            report.seconds = time.perf_counter() - started
            if not server.alive():
                report.findings.append(f"the server exited ({server.proc.returncode}) after {report.inputs} inputs")  # type: ignore[union-attr]
                return report
            if not _echo_ok(server.port):
                report.findings.append("the final C-ECHO failed")
            # Associations end by themselves (our side closed each connection): give them a bounded while.
            tmp = home / "store" / ".tmp"
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and tmp.exists() and any(tmp.iterdir()):
                time.sleep(0.2)
            st = server.status()
            report.hwm, report.threads_after = st.get("hwm", 0), st.get("threads", 0)
            left = sorted(p.name for p in tmp.iterdir()) if tmp.exists() else []
            if left:
                report.findings.append(f"{len(left)} temporary file(s) left in store/.tmp")
            log = server.log()
            for marker in INTERNAL_ERRORS:
                count = log.count(marker)
                if count:
                    report.findings.append(f"{count} '{marker}' in the server's log")
        finally:
            server.stop()
        ok, output = _store_verify(home, server.env)
        if not ok:
            report.findings.append(f"store verify is not clean: {output[-300:]}")
    return report


def results_markdown(report: Report, inputs: int, seed: int) -> str:
    return "\n".join([
        "## DICOM listener fuzzing (`bench/fuzz_dicom.py`)",
        "",
        f"`python -m bench.fuzz_dicom --inputs {inputs} --seed {seed}` (`make fuzz`): mutated A-ASSOCIATE-RQ, "
        "P-DATA-TF, A-RELEASE and A-ABORT conversations recorded from pynetdicom (C-ECHO, C-STORE on the direct "
        "loop and on pynetdicom's path with C-FIND, deflated C-STORE), each sent on its own connection to "
        "`synthpacs scp`; then a C-ECHO, `store verify` and `store/.tmp` checked.",
        "",
        "| inputs | seconds | server VmHWM before / high-water | threads at most / after | findings |",
        "|---|---|---|---|---|",
        f"| {report.inputs} | {report.seconds:.0f} | {report.baseline_hwm / 2**20:.0f} / {report.hwm / 2**20:.0f} MiB "
        f"| {report.threads_max} / {report.threads_after} | {len(report.findings)} |",
        "",
    ] + [f"- {f}" for f in report.findings])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz_dicom", description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=3000, help="mutated conversations to send (default 3000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (a run is reproducible)")
    parser.add_argument("--workers", type=int, default=4, help="connections at once (default 4)")
    parser.add_argument("--write", action="store_true", help="record the figures in bench/RESULTS.md")
    args = parser.parse_args(argv)
    report = run(args.inputs, args.seed, args.workers)
    print("\n".join(report.lines()))
    if args.write:
        from bench.results import write_section

        write_section("fuzz", results_markdown(report, args.inputs, args.seed))
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
