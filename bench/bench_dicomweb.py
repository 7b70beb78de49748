"""DICOMweb speed (issue 19): synthpacs' DICOMweb service against Orthanc's DICOMweb plugin, in one run.

* QIDO-RS latency: the same searches (all studies, a patient, a date range, a study's series, a series'
  instances, an instance by UID) against both servers holding the same instances (synthpacs' stored
  files, loaded into Orthanc through its REST API), alternating the servers request by request; the
  median latency of each search, and the geometric mean of the per-search ratios.
* WADO-RS instance throughput: every instance retrieved alone (``multipart/related;
  type="application/dicom"; transfer-syntax=*``, so neither server transcodes), MB/s of the bodies; and
  whole studies, for reference.
* STOW-RS: the studies POSTed one study per request (multipart/related, one part per instance) into a
  fresh server of each kind, a new set of UIDs for every repeat; images/s. synthpacs runs on its defaults:
  de-identification on and every instance fsynced and indexed before the answer (Orthanc does not fsync).

Both servers are separate processes on loopback (``synthpacs dicomweb``, and Orthanc 1.10 with Debian's
``orthanc-dicomweb`` 1.7 plugin, ``TCP_NODELAY=1``); the client is ``http.client`` in this process with
one kept-alive connection per server, the same code for both. Ratios are Orthanc's time / synthpacs' time
(above 1: synthpacs is faster); beside each, the server process's CPU time per request, which the load of
a shared machine changes much less than the wall clock. ``python -m bench dicomweb``, or ``python -m bench.bench_dicomweb
[--quick]``; environment ``BENCH_DICOMWEB_QUICK=1`` does the same as ``--quick``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from bench.results import write_section

REPO = Path(__file__).resolve().parent.parent
ANY_SYNTAX = 'multipart/related; type="application/dicom"; transfer-syntax=*'


@dataclass(frozen=True)
class Plan:
    studies: int
    per_study: int
    size: int
    qido_rounds: int
    repeats: int

    @property
    def instances(self) -> int:
        return self.studies * self.per_study


FULL = Plan(studies=20, per_study=5, size=512, qido_rounds=30, repeats=3)
QUICK = Plan(studies=8, per_study=4, size=512, qido_rounds=12, repeats=2)


# -- data ----------------------------------------------------------------------------------------------------


def make_studies(folder: Path, plan: Plan, seed: int) -> list[list[Path]]:
    """``plan.studies`` CR studies of ``plan.per_study`` phantom instances (16 bits allocated), new UIDs."""
    from pydicom.uid import generate_uid

    from service.data.phantom import phantom_dataset

    folder.mkdir(parents=True)
    templates = [phantom_dataset(plan.size, plan.size, bits_stored=12, seed=s) for s in range(plan.per_study)]
    studies = []
    for study in range(plan.studies):
        study_uid, series_uid = generate_uid(), generate_uid()
        files = []
        for k, ds in enumerate(templates):
            ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = study_uid, series_uid, generate_uid()
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.PatientID, ds.PatientName, ds.InstanceNumber = f"BENCH-{seed}-{study:03d}", f"BENCH^{study}", k + 1
            ds.StudyDate = f"2024{1 + study % 12:02d}{1 + study % 28:02d}"
            path = folder / f"{study:03d}-{k}.dcm"
            ds.save_as(path, enforce_file_format=True)
            files.append(path)
        studies.append(files)
    return studies


# -- servers ---------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    """One kept-alive HTTP/1.1 connection; ``get``/``post`` return (status, body bytes)."""

    def __init__(self, base: str):
        url = urllib.parse.urlparse(base)
        self.host, self.port, self.root = url.hostname, url.port, url.path.rstrip("/")
        self.conn = self._connect()

    def _connect(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request(method, self.root + path, body=body, headers=headers)
                resp = self.conn.getresponse()
                return resp.status, resp.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                if attempt:
                    raise
                self.conn.close()  # the server closed an idle kept-alive connection: open another
                self.conn = self._connect()
        raise AssertionError("unreachable")

    def get(self, path: str, accept: str = "application/dicom+json") -> tuple[int, bytes]:
        return self.request("GET", path, {"Accept": accept})

    def close(self) -> None:
        self.conn.close()


def _wait_http(base: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {log.read_text(errors='replace')[-1500:]}")
        try:
            client = Client(base)
            status, _ = client.get("/studies?limit=1")
            client.close()
            if status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"nothing answers at {base} after {timeout} s")


class Synthpacs:
    name = "synthpacs"

    def __init__(self, work: Path):
        self.home = work / "synthpacs-home"
        self.home.mkdir(parents=True)
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/dicom-web"
        self.log_path = work / "synthpacs.log"
        env = dict(os.environ, SYNTHPACS_METRICS_ENABLED="false", SYNTHPACS_LOG_LEVEL="warning")
        self._env = env
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
             "dicomweb", "--home", str(self.home), "--dicomweb-port", str(self.port)],
            env=env, cwd=REPO, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        _wait_http(self.url, self.proc, self.log_path)
        self.pid = self.proc.pid

    def stored_files(self) -> list[Path]:
        return sorted((self.home / "store").rglob("*.dcm"))

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Orthanc:
    name = "Orthanc"

    def __init__(self, work: Path):
        from tests.peers import start_orthanc

        self.orthanc = start_orthanc(work / "orthanc", dicomweb=True)
        self.url = self.orthanc.url + "/dicom-web"
        self.pid = self.orthanc.process.pid

    def load(self, files: list[Path]) -> None:
        for path in files:
            self.orthanc.rest("POST", "/instances", path.read_bytes())

    def stop(self) -> None:
        self.orthanc.stop()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` and its threads so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- measurements ----------------------------------------------------------------------------------------------


def _json(client: Client, path: str) -> list[dict]:
    status, body = client.get(path)
    if status != 200:
        raise RuntimeError(f"{path}: HTTP {status}: {body[:200]!r}")
    return json.loads(body) if body.strip() else []


def _uid(match: dict, tag: str) -> str:
    return match[tag]["Value"][0]


def searches(client: Client) -> dict[str, str]:
    """The QIDO-RS searches, built from what the server holds."""
    studies = _json(client, "/studies")
    first = studies[0]
    study = _uid(first, "0020000D")
    series = _uid(_json(client, f"/studies/{study}/series")[0], "0020000E")
    instance = _uid(_json(client, f"/studies/{study}/series/{series}/instances")[0], "00080018")
    patient = first["00100020"]["Value"][0]
    dates = sorted(m["00080020"]["Value"][0] for m in studies if m.get("00080020", {}).get("Value"))
    since = dates[len(dates) // 2] if dates else "20240101"
    return {
        "all studies": "/studies",
        "studies of a patient": f"/studies?PatientID={urllib.parse.quote(patient)}",
        "studies in a date range": f"/studies?StudyDate={since}-",
        "series of a study": f"/studies/{study}/series",
        "instances of a series": f"/studies/{study}/series/{series}/instances",
        "an instance by UID": f"/instances?SOPInstanceUID={instance}",
    }


def qido_latency(clients: dict[str, Client], queries: dict[str, str], rounds: int) -> tuple[dict[tuple[str, str], float], dict[str, int]]:
    """(median seconds per (server, search), matches per search), the servers alternating request by request."""
    counts = {}
    for name, client in clients.items():
        for label, path in queries.items():
            counts.setdefault(label, {})[name] = len(_json(client, path))  # and a warm-up
    for label, by_server in counts.items():
        if len(set(by_server.values())) != 1:
            raise RuntimeError(f"the servers disagree on {label!r}: {by_server}")
    times: dict[tuple[str, str], list[float]] = {}
    names = list(clients)
    for r in range(rounds):
        for label, path in queries.items():
            for name in (names if r % 2 == 0 else names[::-1]):
                started = time.perf_counter()
                status, _body = clients[name].get(path)
                times.setdefault((name, label), []).append(time.perf_counter() - started)
                if status != 200:
                    raise RuntimeError(f"{name} {label}: HTTP {status}")
    return {key: statistics.median(values) for key, values in times.items()}, {k: next(iter(v.values())) for k, v in counts.items()}


def qido_cpu(clients: dict[str, Client], pids: dict[str, int], queries: dict[str, str], rounds: int) -> dict[tuple[str, str], float]:
    """Server CPU seconds per request, for each (server, search): ``rounds`` requests back to back.

    CPU time is what a request costs the server whatever else the machine runs; the wall-clock latency
    of a loaded machine is mostly time spent waiting for a core."""
    out = {}
    for name, client in clients.items():
        for label, path in queries.items():
            before = cpu_seconds(pids[name])
            for _ in range(rounds):
                client.get(path)
            out[(name, label)] = (cpu_seconds(pids[name]) - before) / rounds
    return out


def wado_instances(client: Client, urls: list[str]) -> tuple[float, int]:
    """(seconds, bytes) to retrieve every instance alone, in the stored transfer syntax."""
    total = 0
    started = time.perf_counter()
    for path in urls:
        status, body = client.get(path, accept=ANY_SYNTAX)
        if status != 200:
            raise RuntimeError(f"WADO-RS {path[-20:]}: HTTP {status}")
        total += len(body)
    return time.perf_counter() - started, total


def instance_paths(client: Client) -> tuple[list[str], list[str]]:
    """(every instance's path, every study's path) below the DICOMweb root."""
    instances, studies = [], []
    for study in _json(client, "/studies"):
        s = _uid(study, "0020000D")
        studies.append(f"/studies/{s}")
        for match in _json(client, f"/studies/{s}/instances"):
            instances.append(f"/studies/{s}/series/{_uid(match, '0020000E')}/instances/{_uid(match, '00080018')}")
    return sorted(instances), sorted(studies)


def stow_body(files: list[Path]) -> tuple[bytes, str]:
    boundary = "bench-" + os.urandom(8).hex()
    chunks = []
    for path in files:
        chunks.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode())
        chunks.append(path.read_bytes())
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f'multipart/related; type="application/dicom"; boundary={boundary}'


def stow(client: Client, studies: list[list[Path]]) -> float:
    """Seconds to STOW every study, one request per study; bodies built beforehand."""
    bodies = [stow_body(files) for files in studies]
    started = time.perf_counter()
    for body, ctype in bodies:
        status, answer = client.request("POST", "/studies", {"Content-Type": ctype, "Accept": "application/dicom+json"}, body)
        if status != 200:
            raise RuntimeError(f"STOW-RS: HTTP {status}: {answer[:300]!r}")
    return time.perf_counter() - started


def _load() -> str:
    try:
        return "{:.1f}".format(os.getloadavg()[0])
    except OSError:
        return "?"


# -- the run ----------------------------------------------------------------------------------------------------


def run(plan: Plan) -> dict:
    root = Path(tempfile.mkdtemp(prefix="bench-dicomweb-"))
    results: dict = {"plan": plan, "load_before": _load()}
    try:
        # QIDO-RS and WADO-RS over the same instances: synthpacs ingests them (its defaults), Orthanc gets
        # synthpacs' stored files.
        data = make_studies(root / "data", plan, seed=0)
        synthpacs = Synthpacs(root / "qw")
        orthanc = None
        try:
            subprocess.run(
                [sys.executable, "-c", "import sys; from service.cli import main; sys.exit(main(sys.argv[1:]))",
                 "ingest", "--home", str(synthpacs.home), str(root / "data")],
                env=synthpacs._env, cwd=REPO, check=True, capture_output=True, timeout=600,
            )
            orthanc = Orthanc(root / "qw")
            stored = synthpacs.stored_files()
            if len(stored) != plan.instances:
                raise RuntimeError(f"synthpacs stored {len(stored)} of {plan.instances} instances")
            orthanc.load(stored)
            results["stored_mb"] = sum(p.stat().st_size for p in stored) / 1e6
            clients = {"synthpacs": Client(synthpacs.url), "Orthanc": Client(orthanc.url)}
            queries = searches(clients["synthpacs"])
            results["qido"], results["matches"] = qido_latency(clients, queries, plan.qido_rounds)
            results["queries"] = queries
            pids = {"synthpacs": synthpacs.pid, "Orthanc": orthanc.pid}
            results["qido_cpu"] = qido_cpu(clients, pids, queries, plan.qido_rounds)
            paths = {name: instance_paths(c) for name, c in clients.items()}
            if paths["synthpacs"] != paths["Orthanc"]:
                raise RuntimeError("the servers list different instances")
            instances, studies = paths["synthpacs"]
            wado: dict[str, list[tuple[float, int]]] = {}
            wado_studies: dict[str, list[tuple[float, int]]] = {}
            names = list(clients)
            for rep in range(plan.repeats):
                for name in (names if rep % 2 == 0 else names[::-1]):
                    before = cpu_seconds(pids[name])
                    wado.setdefault(name, []).append(wado_instances(clients[name], instances))
                    results.setdefault("wado_cpu", {}).setdefault(name, []).append((cpu_seconds(pids[name]) - before) / len(instances))
                    wado_studies.setdefault(name, []).append(wado_instances(clients[name], studies))
            results["wado"], results["wado_studies"] = wado, wado_studies
            for c in clients.values():
                c.close()
        finally:
            synthpacs.stop()
            if orthanc is not None:
                orthanc.stop()
        # STOW-RS into fresh servers, a new set of UIDs each repeat.
        sets = [make_studies(root / f"stow-{rep}", plan, seed=rep + 1) for rep in range(plan.repeats)]
        synthpacs, orthanc = Synthpacs(root / "stow"), Orthanc(root / "stow")
        try:
            clients = {"synthpacs": Client(synthpacs.url), "Orthanc": Client(orthanc.url)}
            pids = {"synthpacs": synthpacs.pid, "Orthanc": orthanc.pid}
            stow_times: dict[str, list[float]] = {}
            names = list(clients)
            for rep, studies_set in enumerate(sets):
                for name in (names if rep % 2 == 0 else names[::-1]):
                    before = cpu_seconds(pids[name])
                    stow_times.setdefault(name, []).append(stow(clients[name], studies_set))
                    results.setdefault("stow_cpu", {}).setdefault(name, []).append((cpu_seconds(pids[name]) - before) / plan.instances)
            results["stow"] = stow_times
        finally:
            synthpacs.stop()
            orthanc.stop()
        results["load_after"] = _load()
        return results
    finally:
        shutil.rmtree(root, ignore_errors=True)


def report(results: dict, quick: bool) -> str:
    plan: Plan = results["plan"]
    qido = results["qido"]
    lines = [
        "## DICOMweb (`bench/bench_dicomweb.py`)",
        "",
        f"synthpacs' DICOMweb service (`synthpacs dicomweb`, defaults) against Orthanc 1.10 with its DICOMweb plugin "
        f"1.7 (Debian `orthanc-dicomweb`), separate processes on loopback, the same instances in both: "
        f"{plan.studies} CR studies of {plan.per_study} phantom instances {plan.size}x{plan.size}, 16 bits allocated "
        f"({results['stored_mb']:.1f} MB; synthpacs' stored files, loaded into Orthanc). Client: `http.client` in "
        "the bench process, one kept-alive connection per server, the servers alternating. "
        f"{'`--quick` run. ' if quick else ''}**The machine was loaded** (2 cores shared with other work; load "
        f"average {results['load_before']} before, {results['load_after']} after): absolute figures move with the "
        "load, the ratios less so.",
        "",
        f"**QIDO-RS latency**, median of {plan.qido_rounds} requests each (ms; ratio = Orthanc / synthpacs, above 1: synthpacs faster):",
        "",
        "| search | matches | synthpacs ms | Orthanc ms | ratio | synthpacs CPU ms | Orthanc CPU ms | CPU ratio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    ratios, cpu_ratios = [], []
    qcpu = results["qido_cpu"]
    for label in results["queries"]:
        ours, theirs = qido[("synthpacs", label)], qido[("Orthanc", label)]
        ours_cpu, theirs_cpu = qcpu[("synthpacs", label)], qcpu[("Orthanc", label)]
        ratios.append(theirs / ours)
        cpu_ratios.append(theirs_cpu / ours_cpu if ours_cpu > 0 and theirs_cpu > 0 else 1.0)
        lines.append(f"| {label} | {results['matches'][label]} | {ours * 1000:.1f} | {theirs * 1000:.1f} | {theirs / ours:.2f}x "
                     f"| {ours_cpu * 1000:.2f} | {theirs_cpu * 1000:.2f} | {cpu_ratios[-1]:.2f}x |")
    qido_ratio = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
    qido_cpu_ratio = math.exp(sum(math.log(r) for r in cpu_ratios) / len(cpu_ratios))

    def rate(runs: list[tuple[float, int]]) -> tuple[float, float]:
        seconds, size = sorted(runs)[len(runs) // 2]
        return size / 1e6 / seconds, seconds

    ours_mb, ours_s = rate(results["wado"]["synthpacs"])
    theirs_mb, theirs_s = rate(results["wado"]["Orthanc"])
    ours_st, _ = rate(results["wado_studies"]["synthpacs"])
    theirs_st, _ = rate(results["wado_studies"]["Orthanc"])
    stow_ours = plan.instances / statistics.median(results["stow"]["synthpacs"])
    stow_theirs = plan.instances / statistics.median(results["stow"]["Orthanc"])
    wado_cpu = {k: statistics.median(v) for k, v in results["wado_cpu"].items()}
    stow_cpu = {k: statistics.median(v) for k, v in results["stow_cpu"].items()}
    lines += [
        "",
        f"Geometric mean of the QIDO-RS ratios: **{qido_ratio:.2f}x** in latency, {qido_cpu_ratio:.2f}x in server CPU "
        f"time per request (the CPU columns: {plan.qido_rounds} requests of each search back to back, the server "
        "process's user + system time from /proc divided by the count).",
        "",
        f"**WADO-RS and STOW-RS**, median of {plan.repeats} interleaved runs:",
        "",
        "| measurement | synthpacs | Orthanc | ratio |",
        "| --- | ---: | ---: | ---: |",
        f"| WADO-RS, each of {plan.instances} instances alone (MB/s) | {ours_mb:.1f} | {theirs_mb:.1f} | **{ours_mb / theirs_mb:.2f}x** |",
        f"| WADO-RS, instances per second | {plan.instances / ours_s:.0f} | {plan.instances / theirs_s:.0f} | |",
        f"| WADO-RS, each of {plan.studies} studies whole (MB/s) | {ours_st:.1f} | {theirs_st:.1f} | {ours_st / theirs_st:.2f}x |",
        f"| WADO-RS, server CPU ms per instance | {wado_cpu['synthpacs'] * 1000:.2f} | {wado_cpu['Orthanc'] * 1000:.2f} | "
        f"{wado_cpu['Orthanc'] / max(wado_cpu['synthpacs'], 1e-9):.2f}x |",
        f"| STOW-RS, one request per study (images/s) | {stow_ours:.1f} | {stow_theirs:.1f} | **{stow_ours / stow_theirs:.2f}x** |",
        f"| STOW-RS, server CPU ms per image | {stow_cpu['synthpacs'] * 1000:.2f} | {stow_cpu['Orthanc'] * 1000:.2f} | "
        f"{stow_cpu['Orthanc'] / max(stow_cpu['synthpacs'], 1e-9):.2f}x |",
        "",
        "STOW-RS: synthpacs on its defaults, de-identification on and every instance written, fsynced and "
        "indexed before the answer (the C-STORE path); Orthanc does not fsync.",
        "",
        f"Target (issue 19): synthpacs >= 1.2x Orthanc on each: QIDO-RS **{qido_ratio:.2f}x**, WADO-RS "
        f"**{ours_mb / theirs_mb:.2f}x**, STOW-RS **{stow_ours / stow_theirs:.2f}x**.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_dicomweb")
    parser.add_argument("--quick", action="store_true", help=f"a shorter run: {QUICK}")
    parser.add_argument("--no-write", action="store_true", help="print the section, leave bench/RESULTS.md alone")
    args = parser.parse_args(argv if argv is not None else [])
    quick = args.quick or os.environ.get("BENCH_DICOMWEB_QUICK") == "1"
    for tool in ("Orthanc",):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (make deps installs orthanc and orthanc-dicomweb)")
    results = run(QUICK if quick else FULL)
    section = report(results, quick)
    print(section)
    if not args.no_write:
        write_section("dicomweb", section)


if __name__ == "__main__":
    main(sys.argv[1:])
