"""``synthpacs client``: call a synthpacs gRPC server (``generate`` images into a folder, make a synthetic DICOM
``study`` for the archive or a PACS, list ``models``).

Also the reference client for integrators: see service/inference/client.py for the few lines it takes.
The bearer token comes from ``--token-file`` or ``$SYNTHPACS_CLIENT_TOKEN`` (never from a flag, so it
stays out of the process list and shell history).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import grpc

from models.seeds import MAX_SEED
from service.cli.common import CommandError
from service.cli.conditions import add_condition_options, given
from service.inference.client import ENCODINGS, SUFFIXES, SynthesizerClient
from synthpacs.v1 import synthesizer_pb2 as pb

TOKEN_ENV = "SYNTHPACS_CLIENT_TOKEN"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("client", help="call a synthpacs gRPC server (generate images, make a synthetic study, list models)")
    sub = parser.add_subparsers(dest="client_command", metavar="ACTION")
    sub.required = True

    gen = sub.add_parser("generate", help="generate images into a folder (one file per image, plus manifest.jsonl)")
    _connection_options(gen)
    gen.add_argument("--model", required=True, help="model name (latest version) or name:vN")
    gen.add_argument("--count", type=int, default=0, help="number of images (with --seeds: 0 or their number)")
    gen.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,42")
    gen.add_argument("--first-seed", dest="first_seed", type=int, help="seeds FIRST, FIRST+1, ... (default: server-drawn seeds)")
    gen.add_argument("--psi", type=float, help="truncation psi, 0..2 (default 1: no truncation)")
    gen.add_argument("--encoding", choices=sorted(ENCODINGS), default="png8", help="file format and bit depth (default png8)")
    gen.add_argument("--out", required=True, type=Path, help="folder for the images (created if missing)")
    gen.add_argument("--request-id", dest="request_id", default="", help="id echoed in responses and server logs")
    add_condition_options(gen)
    gen.set_defaults(func=_generate)

    study = sub.add_parser(
        "study", help="make one synthetic DICOM study on the server (GenerateStudy): stored in its archive, sent to a PACS",
        description="Ask the server to generate a synthetic Secondary Capture study, store it in its archive and queue it "
                    "for a DICOM peer (its outbox sends it). Prints the Study Instance UID and each instance's state. "
                    "Exit status 0 when every instance was stored or queued, 1 when one failed or every one was refused "
                    "as a near-copy, 2 for a usage error or a refused request.")
    _connection_options(study)
    study.add_argument("--model", required=True, help="model name (latest version) or name:vN")
    study.add_argument("--count", type=int, default=0, help="number of images (with --seeds: 0 or their number)")
    study.add_argument("--seeds", help="comma-separated seeds, e.g. 1,2,42")
    study.add_argument("--first-seed", dest="first_seed", type=int, help="seeds FIRST, FIRST+1, ... (default: server-drawn seeds)")
    study.add_argument("--psi", type=float, help="truncation psi, 0..2 (default 1: no truncation)")
    study.add_argument("--bits", type=int, choices=(8, 16), default=8, help="bits stored per pixel (default 8)")
    study.add_argument("--send", dest="destination", default="", metavar="AE_TITLE",
                       help="AE title of a configured DICOM peer to send the study to (default: the server's outbox.default_destination, or none)")
    label = study.add_mutually_exclusive_group()
    label.add_argument("--burn-in-label", dest="burn_in_label", action="store_true", default=None,
                       help="burn the SYNTHETIC label into the pixels (default: the server's synthetic.burn_in_label)")
    label.add_argument("--no-burn-in-label", dest="burn_in_label", action="store_false",
                       help="leave the pixels unlabelled (refused unless the server's operator set synthetic.burn_in_label = false)")
    study.add_argument("--series-description", dest="series_description", default="", help="Series Description (always begins with SYNTHETIC)")
    study.add_argument("--request-id", dest="request_id", default="", help="id echoed in the response and server logs")
    study.add_argument("--json", action="store_true", help="print JSON")
    add_condition_options(study)
    study.set_defaults(func=_study)

    models = sub.add_parser("models", help="list the server's models and their state")
    _connection_options(models)
    models.add_argument("--all-versions", dest="all_versions", action="store_true", help="every version, not only the latest")
    models.add_argument("--json", action="store_true", help="print JSON")
    models.set_defaults(func=_models)


def _connection_options(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("connection")
    g.add_argument("--host", default="127.0.0.1", help="server host (default 127.0.0.1)")
    g.add_argument("--port", type=int, default=50051, help="server gRPC port (default 50051)")
    g.add_argument("--timeout", type=float, default=None, help="deadline for the whole call, seconds")
    g.add_argument("--token-file", dest="token_file", type=Path, help=f"file holding the bearer token (default: ${TOKEN_ENV})")
    g.add_argument("--tls-ca", dest="tls_ca", help="CA certificate that signed the server's (PEM): use TLS")
    g.add_argument("--tls-cert", dest="tls_cert", help="client certificate for mutual TLS (PEM)")
    g.add_argument("--tls-key", dest="tls_key", help="client private key for mutual TLS (PEM)")
    g.add_argument("--tls-server-name", dest="tls_server_name", help="expected name in the server certificate, when it differs from --host")


def _client(args: argparse.Namespace) -> SynthesizerClient:
    token = os.environ.get(TOKEN_ENV) or None
    if args.token_file is not None:
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            raise CommandError(f"cannot read --token-file {args.token_file}: {exc.strerror}") from None
    target = f"[{args.host}]:{args.port}" if ":" in args.host else f"{args.host}:{args.port}"
    try:
        return SynthesizerClient(
            target, token=token, timeout=args.timeout, tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
            server_name=args.tls_server_name,
        )
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot set up the connection: {exc}") from None


def _rpc_error(exc: grpc.RpcError) -> CommandError:
    code = exc.code().name if hasattr(exc, "code") else "UNKNOWN"
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return CommandError(f"the server answered {code}: {details}")


def _generate(args: argparse.Namespace) -> int:
    seeds = _seeds(args)
    total = len(seeds) or args.count
    if total < 1:
        raise CommandError("give --count N or --seeds")
    args.out.mkdir(parents=True, exist_ok=True)
    written = 0
    started = last = time.monotonic()
    with _client(args) as client, open(args.out / "manifest.jsonl", "a") as manifest:
        try:
            for image in client.generate(
                args.model, count=args.count, seeds=seeds, first_seed=args.first_seed, psi=args.psi,
                encoding=args.encoding, request_id=args.request_id, **given(args),
            ):
                name = _file_name(image)
                path = args.out / name
                tmp = path.with_name(path.name + ".part")
                tmp.write_bytes(image.data)
                tmp.replace(path)
                manifest.write(json.dumps(_manifest_row(image, name)) + "\n")
                written += 1
                now = time.monotonic()
                if now - last >= 1.0 or written == total:
                    last = now
                    rate = written / max(now - started, 1e-9)
                    eta = (total - written) / rate if rate > 0 else 0.0
                    print(f"{written}/{total} images, {rate:.1f} img/s, ETA {eta:.0f} s", file=sys.stderr)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
    print(f"wrote {written} image(s) to {args.out}")
    return 0


def _seeds(args: argparse.Namespace) -> list[int]:
    try:
        return [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else []
    except ValueError:
        raise CommandError(f"--seeds {args.seeds!r} must be comma-separated integers") from None


_STATES = {
    pb.InstanceStatus.STATE_STORED: "stored", pb.InstanceStatus.STATE_QUEUED: "queued",
    pb.InstanceStatus.STATE_REFUSED_NEAR_COPY: "refused-near-copy", pb.InstanceStatus.STATE_FAILED: "failed",
}


def _study(args: argparse.Namespace) -> int:
    seeds = _seeds(args)
    if not seeds and args.count < 1:
        raise CommandError("give --count N or --seeds")
    if any(not 0 <= s <= MAX_SEED for s in seeds) or (args.first_seed is not None and not 0 <= args.first_seed <= MAX_SEED):
        raise CommandError(f"seeds must be between 0 and {MAX_SEED}")
    req = pb.GenerateStudyRequest(
        model=args.model, count=max(args.count, 0), seeds=seeds, bit_depth=args.bits, destination_ae_title=args.destination,
        series_description=args.series_description, request_id=args.request_id, **given(args),
    )
    if args.first_seed is not None:
        req.first_seed = args.first_seed
    if args.psi is not None:
        req.truncation_psi = args.psi
    if args.burn_in_label is not None:
        req.burn_in_label = args.burn_in_label
    with _client(args) as client:
        try:
            resp = client.stub.GenerateStudy(req, timeout=client.timeout, metadata=client.metadata)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
    report = {
        "study_instance_uid": resp.study_instance_uid, "series_instance_uid": resp.series_instance_uid,
        "model": resp.model, "psi": resp.truncation_psi, "destination": resp.destination or None,
        **({"request_id": resp.request_id} if resp.request_id else {}),
        **({"condition": given(args)} if given(args) else {}),
        "instances": [
            {"seed": i.seed, "state": _STATES.get(i.state, "unspecified"), "sop_instance_uid": i.sop_instance_uid or None,
             **({"detail": i.detail} if i.detail else {})}
            for i in resp.instances
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"Study Instance UID  {report['study_instance_uid']}")
        print(f"Series Instance UID {report['series_instance_uid']}")
        print(f"model {report['model']}, psi {report['psi']:g}, destination {report['destination'] or '(archive only)'}")
        for inst in report["instances"]:
            print(f"  seed {inst['seed']:>10}  {inst['state']:<18}  {inst['sop_instance_uid'] or inst.get('detail', '')}")
    states = [i["state"] for i in report["instances"]]
    incomplete = "failed" in states or "unspecified" in states or (states and all(s == "refused-near-copy" for s in states))
    return 1 if incomplete else 0


def _file_name(image: pb.GeneratedImage) -> str:
    condition = "".join(f"_{v}" for v in (image.body_part, image.view, image.finding) if v)
    stem = f"{image.model.replace(':', '_')}{condition}_seed{image.seed:010d}"
    if image.encoding in (pb.ENCODING_RAW_UINT8, pb.ENCODING_RAW_UINT16):
        bits = 8 if image.encoding == pb.ENCODING_RAW_UINT8 else 16
        stem += f"_{image.width}x{image.height}x{image.channels}_u{bits}le"
    return stem + SUFFIXES.get(image.encoding, ".bin")


def _manifest_row(image: pb.GeneratedImage, name: str) -> dict:
    return {
        "file": name, "model": image.model, "seed": image.seed, "truncation_psi": image.truncation_psi,
        "index": image.index, "width": image.width, "height": image.height, "channels": image.channels,
        "encoding": pb.Encoding.Name(image.encoding), "sha256": hashlib.sha256(image.data).hexdigest(),
        "request_id": image.request_id, "sop_instance_uid": image.sop_instance_uid or None,
        **{k: v for k, v in (("body_part", image.body_part), ("view", image.view), ("finding", image.finding)) if v},
    }


def _models(args: argparse.Namespace) -> int:
    with _client(args) as client:
        try:
            models = client.list_models(all_versions=args.all_versions)
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
    rows = [
        {
            "model": m.ref, "latest": m.latest, "state": pb.ModelState.Name(m.state).removeprefix("MODEL_STATE_").lower(),
            "architecture": m.architecture, "resolution": m.resolution, "channels": m.channels,
            "device": m.device or None, "dtype": m.dtype or None, "error": m.error or None,
            "conditions": {c.name: list(c.values) for c in m.conditions} or None,
        }
        for m in models
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no models")
        return 0
    for r in rows:
        where = f" on {r['device']}/{r['dtype']}" if r["device"] else ""
        conds = "  " + "; ".join(f"{k}: {', '.join(v)}" for k, v in r["conditions"].items()) if r["conditions"] else ""
        print(f"{r['model']:<32} {r['state']:<10} {r['architecture']} {r['resolution']}px{where}{conds}" + (f"  error: {r['error']}" if r["error"] else ""))
    return 0
