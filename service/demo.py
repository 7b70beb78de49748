"""``make demo`` (``python -m service.demo``): the whole loop on one machine, in a few minutes on a CPU.

    hospital PACS (Orthanc) --C-STORE--> synthpacs --> dataset --> GAN over gRPC --> synthetic study
          ^                                                                               |
          +------------------------------- outbox C-STORE -------------------------------+

1. Orthanc starts as the hospital PACS (when it is installed; otherwise synthpacs' own archive stands in).
2. synthpacs starts on its embedded defaults: DICOM SCP with Query/Retrieve, outbox, and later gRPC.
3. Real radiographs from pydicom-data (RG1 chest, RG3 distal tibia; uncompressed and JPEG 2000) are
   uploaded to Orthanc, which sends them to synthpacs by C-STORE; synthpacs de-identifies and stores them.
4. A dataset is built from them (``synthpacs dataset build``).
5. The bundled demo model is served over gRPC, and GenerateStudy makes one synthetic study.
6. The outbox sends it to Orthanc; it is found there with ``findscu`` (and on synthpacs' own Q/R SCP).
7. A contact sheet of the synthetic series is written, and a summary says where to look.

Everything lives in one folder (default ``./var/demo``, replaced on every run). ``--keep-running`` leaves
Orthanc and synthpacs up afterwards so the study can be opened in Orthanc Explorer or any viewer.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from service.orthanc import Orthanc, OrthancError, free_port, start_orthanc

DEMO_MARKER = ".synthpacs-demo"
RADIOGRAPHS = ("RG1_UNCR.dcm", "RG3_UNCR.dcm", "RG1_J2KR.dcm", "RG3_J2KR.dcm")
BUNDLED_MODEL = "demo-dcgan"
FALLBACK_MODEL = "demo-untrained"
PACS_AE = "ORTHANC"


class DemoError(Exception):
    """A step that cannot run here; the message says what to install or change."""


def _say(step: str, text: str) -> None:
    print(f"[{step}] {text}", flush=True)


_ANY_PORT = False


def _port(preferred: int) -> int:
    """The embedded default port when it is free (unless --any-ports), else any free loopback port."""
    try:
        return free_port(0 if _ANY_PORT else preferred)
    except OrthancError as exc:
        raise DemoError(str(exc)) from None


# -- Orthanc as the PACS ---------------------------------------------------------------------------------


def start_pacs(workdir: Path, modalities: dict[str, list[Any]]) -> Orthanc:
    """Orthanc as the hospital PACS (service/orthanc.py), on its usual ports 4242 and 8042 when they are free."""
    try:
        return start_orthanc(workdir, modalities, ae_title=PACS_AE, dicom_port=_port(4242), http_port=_port(8042), timeout=60, rest_timeout=120,
                             extra={"Name": "synthpacs-demo-pacs", "DicomScuTimeout": 60, "HttpTimeout": 120})
    except OrthancError as exc:
        raise DemoError(str(exc)) from None


# -- the steps -------------------------------------------------------------------------------------------


def prepare_home(home: Path) -> Path:
    """An empty demo folder; a previous demo's folder is replaced, anything else is left alone."""
    home = home.expanduser().resolve()
    if home.exists() and any(home.iterdir()):
        if not (home / DEMO_MARKER).exists():
            raise DemoError(f"{home} is not empty and is not a previous demo's folder; choose another with --home")
        shutil.rmtree(home)
    home.mkdir(parents=True, exist_ok=True)
    (home / DEMO_MARKER).write_text("made by python -m service.demo; replaced on the next run\n")
    return home


def radiograph_files() -> list[Path]:
    try:
        from pydicom.data import get_testdata_file
    except ImportError:  # pragma: no cover - pydicom is a dependency
        raise DemoError("pydicom is not installed") from None
    files = []
    for name in RADIOGRAPHS:
        path = get_testdata_file(name)
        if path is not None:
            files.append(Path(path))
    if not files:
        raise DemoError("no pydicom-data radiographs found: `pip install pydicom-data` (installed by `make venv` with the dev extras)")
    return files


def demo_config(home: Path, dicom_port: int, grpc_port: int, metrics_port: int, pacs_port: int | None, model: str, log_level: str):
    from service.config import load_config

    overrides: dict[str, Any] = {
        "home": str(home), "dicom.port": dicom_port, "grpc.port": grpc_port, "metrics.port": metrics_port,
        "inference.preload": [model], "inference.device": "cpu", "inference.reload_interval_s": 0,
        "outbox.backoff_initial_s": 0.5, "outbox.backoff_max_s": 5.0, "log.level": log_level,
        # The bundled model was trained elsewhere and carries no near-copy index: the demo, as its operator,
        # lets its studies go out unchecked, and each instance records near_copy_check=not-run.
        "synthetic.allow_unchecked": True,
    }
    if pacs_port is not None:
        overrides["dicom.peers"] = [{"ae_title": PACS_AE, "host": "127.0.0.1", "port": pacs_port}]
        overrides["outbox.default_destination"] = PACS_AE
    # Embedded defaults only: the user's synthpacs.toml and SYNTHPACS_* variables do not change the demo.
    return load_config(path=None, env={}, overrides=overrides)


def send_radiographs(files: list[Path], orthanc: Orthanc | None, cfg: Any, runtime: Any, scp_port: int) -> int:
    """Into synthpacs by C-STORE: through Orthanc (the PACS sends, as in a hospital), else from here."""
    before = runtime.store.index.stats()["instances"]
    if orthanc is not None:
        ids = [orthanc.rest("POST", "/instances", path.read_bytes())["ID"] for path in files]
        orthanc.rest("POST", "/modalities/synthpacs/store", {"Resources": ids, "Synchronous": True}, timeout=300)
    else:
        import pydicom

        from service.config import DicomPeer
        from service.dicom.scu import StoreAssociation

        me = DicomPeer(cfg.dicom.ae_title, "127.0.0.1", scp_port)
        metas = [pydicom.dcmread(p, stop_before_pixels=True) for p in files]
        pairs = {(m.SOPClassUID, m.file_meta.TransferSyntaxUID) for m in metas}
        with StoreAssociation(cfg, me, pairs) as assoc:
            for path, meta in zip(files, metas):
                assoc.send(path, meta.SOPClassUID, meta.file_meta.TransferSyntaxUID)
    return runtime.store.index.stats()["instances"] - before


def demo_model(home: Path, dataset_ref: str) -> tuple[str, bool]:
    """The bundled demo model; without it, an untrained DCGAN (its images are flat gray) so the loop still runs."""
    from models.registry import ModelNotFound, Registry

    registry = Registry.with_bundled(home / "models")
    try:
        return registry.resolve(BUNDLED_MODEL).ref, True
    except ModelNotFound:
        pass
    import torch

    from models.dcgan import Generator

    torch.manual_seed(0)
    net = Generator(z_dim=100, resolution=64, channels=1)
    name, version = dataset_ref.split("@v")
    card = {
        "architecture": "dcgan",
        "dataset": {"name": name, "version": int(version)},
        "description": "UNTRAINED placeholder used by the demo because this installation has no bundled demo-dcgan",
        "training": {"kimg": 0},
    }
    return registry.export(net.eval(), card, FALLBACK_MODEL).ref, False


def near_copy_note(home: Path, model_ref: str) -> str:
    """Whether the memorization guard could check the images: it needs the model's index or its training dataset here."""
    from models.datasets import DatasetError, resolve_dataset
    from models.registry import Registry
    from service.near_copy_index import describe
    from service.synthetic.studies import dataset_ref_of

    mv = Registry.with_bundled(home / "models").resolve(model_ref)
    ref = dataset_ref_of(mv.card)
    if describe(mv.path) is not None:
        return f"near-copy check: every image was compared with the model's near-copy index of {ref or 'its training set'}"
    if not ref:
        return "near-copy check: not run (the model has no index and its card names no training dataset; near_copy_check=not-run)"
    try:
        resolve_dataset(home / "datasets", ref)
    except (DatasetError, LookupError, ValueError):
        return f"near-copy check: not run (no index, and the training dataset {ref} is not in this home; near_copy_check=not-run)"
    return f"near-copy check: every image was compared with the training images of {ref}"


def generate_study(address: str, model: str, count: int, psi: float, destination: str | None, timeout: float = 300) -> Any:
    import grpc

    from synthpacs.v1 import synthesizer_pb2 as pb
    from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=60)
        stub = pb_grpc.SynthesizerStub(channel)
        request = pb.GenerateStudyRequest(model=model, count=count, first_seed=1, truncation_psi=psi,
                                          destination_ae_title=destination or "", series_description="bone radiographs, demo",
                                          burn_in_label=True, request_id="make-demo")
        # The model loads in the background; GenerateStudy waits for it, within the deadline.
        deadline = time.monotonic() + timeout
        while True:
            try:
                return stub.GenerateStudy(request, timeout=max(5.0, deadline - time.monotonic()))
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and time.monotonic() < deadline:
                    time.sleep(1.0)
                    continue
                raise DemoError(f"GenerateStudy failed: {exc.code().name}: {exc.details()}") from None
    finally:
        channel.close()


def find_study(port: int, called_ae: str, study_uid: str, workdir: Path, calling_ae: str = "SYNTHPACS") -> list[Any]:
    """C-FIND at STUDY level with dcmtk findscu when installed (as a person would), else with pynetdicom.

    Orthanc answers C-FIND only to AE titles in its DicomModalities, where the demo lists SYNTHPACS.
    """
    import pydicom
    from pydicom.dataset import Dataset

    keys = [f"StudyInstanceUID={study_uid}", "PatientName", "PatientID", "StudyDescription", "ModalitiesInStudy",
            "NumberOfStudyRelatedInstances"]
    if shutil.which("findscu"):
        workdir.mkdir(parents=True, exist_ok=True)
        for old in workdir.glob("rsp*.dcm"):
            old.unlink()
        args = ["findscu", "-S", "-X", "-od", str(workdir), "-aet", calling_ae, "-aec", called_ae, "127.0.0.1", str(port),
                "-k", "QueryRetrieveLevel=STUDY"]
        for k in keys:
            args += ["-k", k]
        # findscu exits 0 even when the peer aborts: the extracted responses are the answer.
        subprocess.run(args, capture_output=True, timeout=120)
        return [pydicom.dcmread(p) for p in sorted(workdir.glob("rsp*.dcm"))]
    from pynetdicom import AE
    from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    for k in keys:
        kw, _, value = k.partition("=")
        setattr(ident, kw, value)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    found = []
    if assoc.is_established:
        for status, identifier in assoc.send_c_find(ident, StudyRootQueryRetrieveInformationModelFind):
            if status and status.Status in (0xFF00, 0xFF01) and identifier is not None:
                found.append(identifier)
        assoc.release()
    return found


def contact_sheet(store: Any, study_uid: str, path: Path) -> int:
    import numpy as np

    from service.data.sheet import contact_sheet_png

    records = sorted(store.index.instances("i.study_uid = ?", (study_uid,)), key=lambda r: r.instance_number or 0)
    images = np.stack([store.read(r.sop_instance_uid).pixel_array for r in records])
    columns = min(len(images), 4)
    path.write_bytes(contact_sheet_png(images, tiles=len(images), columns=columns, tile=256,
                                      title=f"SYNTHETIC series, {len(images)} images"))
    return len(images)


def run(home: Path, count: int, psi: float, keep_running: bool, log_level: str) -> int:
    started = time.monotonic()
    home = prepare_home(home)
    print("synthpacs demo: hospital PACS -> synthpacs -> dataset -> GAN over gRPC -> synthetic study -> PACS", flush=True)
    files = radiograph_files()
    dicom_port, grpc_port, metrics_port = _port(11112), _port(50051), _port(9108)
    orthanc = None
    runtime = None
    try:
        if shutil.which("Orthanc"):
            orthanc = start_pacs(home / "orthanc", {"synthpacs": ["SYNTHPACS", "127.0.0.1", dicom_port]})
            _say("1/7", f"Orthanc is the hospital PACS: DICOM {PACS_AE}@127.0.0.1:{orthanc.dicom_port}, web {orthanc.url}")
        else:
            _say("1/7", "Orthanc is not installed (`make deps` installs it): synthpacs' own archive stands in for the PACS")

        from service.logs import configure
        from service.runtime import Runtime

        # The model is chosen once the dataset exists; the config names it now so gRPC preloads it.
        model_ref_guess = BUNDLED_MODEL
        cfg = demo_config(home, dicom_port, grpc_port, metrics_port, orthanc.dicom_port if orthanc else None, model_ref_guess, log_level)
        configure(cfg.log.level, cfg.log.format)
        runtime = Runtime(cfg)
        scp = runtime.add_scp()
        sender = runtime.add_outbox()
        runtime.start()
        _say("2/7", f"synthpacs is up: DICOM {cfg.dicom.ae_title}@127.0.0.1:{scp.address[1]} (Storage, Query/Retrieve), outbox, "
                    f"/metrics on :{metrics_port}; home {home}")

        received = send_radiographs(files, orthanc, cfg, runtime, scp.address[1])
        stats = runtime.store.index.stats()
        via = "Orthanc sent" if orthanc else "sent"
        _say("3/7", f"{via} {len(files)} real radiographs (pydicom-data RG1 chest, RG3 tibia) by C-STORE: "
                    f"{stats['instances']} distinct instances stored, de-identified ({received} new)")

        from service.data.build import build_dataset

        result = build_dataset(cfg, "demo-radiographs", progress=False, index=runtime.store.index)
        version = result.version
        _say("4/7", f"dataset {version.ref}: {version.count} images {version.resolution}x{version.resolution} "
                    f"(contact sheet {version.path / 'contact_sheet.png'})")

        model_ref, bundled = demo_model(home, version.ref)
        if not bundled:
            print("      NOTE: this installation has no bundled demo-dcgan; using an UNTRAINED DCGAN, so the synthetic "
                  "images are flat gray (the loop is the same)", flush=True)
        cfg = dataclasses.replace(cfg, inference=dataclasses.replace(cfg.inference, preload=(model_ref,)))
        runtime.cfg = cfg
        grpc_server = runtime.add_grpc()
        grpc_server.start()
        _say("5/7", f"model {model_ref} served over gRPC at {grpc_server.address}")

        t = time.monotonic()
        response = generate_study(grpc_server.address, model_ref, count, psi, PACS_AE if orthanc else None)
        states = {}
        for inst in response.instances:
            states[inst.state] = states.get(inst.state, 0) + 1
        from synthpacs.v1 import synthesizer_pb2 as pb

        summary = ", ".join(f"{n} {pb.InstanceStatus.State.Name(s).removeprefix('STATE_').lower()}" for s, n in states.items())
        _say("6/7", f"GenerateStudy ({count} images, psi {psi:g}) in {time.monotonic() - t:.1f} s: "
                    f"Study Instance UID {response.study_instance_uid}; {summary}")
        print(f"      {near_copy_note(home, model_ref)}", flush=True)

        uids = [i.sop_instance_uid for i in response.instances if i.sop_instance_uid]
        in_pacs = None
        found_pacs: list[Any] = []
        if orthanc is not None and uids:
            rows = sender.drain(120, sop_instance_uids=uids)
            sent = sum(1 for r in rows if r.state == "sent")
            in_pacs = sent
            found_pacs = find_study(orthanc.dicom_port, PACS_AE, response.study_instance_uid, home / "findscu" / "orthanc")
        found_ours = find_study(scp.address[1], cfg.dicom.ae_title, response.study_instance_uid, home / "findscu" / "synthpacs")
        sheet = home / "synthetic_series.png"
        shown = contact_sheet(runtime.store, response.study_instance_uid, sheet) if uids else 0
        if orthanc is not None:
            what = _describe(found_pacs)
            _say("7/7", f"in Orthanc: {in_pacs}/{len(uids)} instances delivered by the outbox; findscu in Orthanc: {what}")
        what = _describe(found_ours)
        print(f"      findscu in synthpacs: {what}", flush=True)

        print("", flush=True)
        print(f"Done in {time.monotonic() - started:.0f} s. Where to look:", flush=True)
        if shown:
            print(f"  contact sheet of the synthetic series: {sheet}", flush=True)
        print(f"  training dataset contact sheet:        {version.path / 'contact_sheet.png'}", flush=True)
        if orthanc is not None:
            print(f"  the study in Orthanc (with --keep-running): {orthanc.url}/app/explorer.html", flush=True)
        print(f"  query synthpacs yourself: findscu -S -k QueryRetrieveLevel=STUDY -k PatientName=SYNTHETIC* "
              f"-k StudyDescription 127.0.0.1 {scp.address[1]}", flush=True)
        print(f"  everything else (store, datasets, models): {home}", flush=True)
        ok = bool(uids) and bool(found_ours) and (orthanc is None or (in_pacs == len(uids) and bool(found_pacs)))
        if keep_running:
            print("Running; press Ctrl-C to stop Orthanc and synthpacs.", flush=True)
            try:
                while True:
                    time.sleep(1)
            except KeyboardInterrupt:
                pass
        return 0 if ok else 1
    finally:
        if runtime is not None:
            runtime.stop()
        if orthanc is not None:
            orthanc.stop()


def _describe(found: list[Any]) -> str:
    if not found:
        return "not found"
    ds = found[0]
    n = ds.get("NumberOfStudyRelatedInstances", "?")
    return f"{len(found)} study, {ds.get('PatientName', '')} / \"{ds.get('StudyDescription', '')}\", {n} instances, modality {ds.get('ModalitiesInStudy', '')}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", type=Path, default=Path("var/demo"), help="demo folder, replaced on every run (default ./var/demo)")
    parser.add_argument("--count", type=int, default=8, help="images in the synthetic study (default 8)")
    parser.add_argument("--psi", type=float, default=0.7, help="truncation psi (default 0.7)")
    parser.add_argument("--keep-running", dest="keep_running", action="store_true", help="leave Orthanc and synthpacs up afterwards")
    parser.add_argument("--any-ports", dest="any_ports", action="store_true", help="use free ports, not the embedded defaults (tests)")
    parser.add_argument("--log-level", dest="log_level", default="warning", choices=("debug", "info", "warning", "error"),
                        help="synthpacs' JSON log lines on stdout (default warning: the demo prints its own summary)")
    args = parser.parse_args(argv)
    if not 1 <= args.count <= 64:
        parser.error("--count must be 1..64")
    global _ANY_PORT
    _ANY_PORT = args.any_ports
    try:
        return run(args.home, args.count, args.psi, args.keep_running, args.log_level)
    except DemoError as exc:
        print(f"demo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
