"""``synthpacs synthesize``: a synthetic study straight from a registry model, no gRPC.

``synthesize`` uses the same writer as gRPC GenerateStudy (service/synthetic/studies.py): one study, one series of
synthetic Secondary Capture instances, stored in the archive and queued for the destination. With a
destination it also sends them at once and waits up to ``--wait`` seconds; whatever is not delivered by
then stays queued, and a running ``synthpacs serve`` (or the next ``synthesize``) delivers it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import secrets
import sys
from typing import Any

from models.seeds import MAX_SEED
from service.cli.common import CommandError, add_command, config_from_args, home_from
from service.cli.conditions import add_condition_options, checked

EXIT_OK, EXIT_INCOMPLETE = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    syn = add_command(
        subparsers, "synthesize",
        help="generate a synthetic study with a registry model, store it, and send it to the PACS",
        description="Generate N images with a model from the registry (no gRPC server needed), write them as one "
        "synthetic Secondary Capture study into the archive, and queue (and send) it to a DICOM destination.",
    )
    syn.add_argument("--model", required=True, help="model name (latest version) or name:vN")
    syn.add_argument("--count", type=int, required=True, help="number of images in the study")
    syn.add_argument("--seed", type=int, help="first seed; images use SEED, SEED+1, ... (default: random, printed)")
    syn.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1: no truncation)")
    syn.add_argument("--bits", type=int, choices=(8, 16), default=8, help="bits per pixel of the instances (default 8)")
    dest = syn.add_mutually_exclusive_group()
    dest.add_argument("--send", metavar="AE_TITLE", help="destination: a dicom.peers AE title with a port (default: outbox.default_destination)")
    dest.add_argument("--no-send", dest="no_send", action="store_true", help="keep the study in the synthpacs archive only")
    syn.add_argument("--burn-in-label", dest="burn_in_label", action=argparse.BooleanOptionalAction, default=None,
                     help="draw SYNTHETIC into the pixels (default: synthetic.burn_in_label, on; --no-burn-in-label only where the configuration turned it off)")
    syn.add_argument("--series-description", dest="series_description", help="series description (SYNTHETIC is prefixed if missing)")
    syn.add_argument("--device", help="where to run the generator: auto, cpu, cuda, cuda:N (default: inference.device); "
                     "pixels regenerate bit for bit on the CPU")
    syn.add_argument("--batch-size", dest="batch_size", type=int, default=32, help="images per generator call (default 32)")
    syn.add_argument("--wait", type=float, default=120.0, help="seconds to wait for delivery to the destination (0: only queue)")
    syn.add_argument("--json", action="store_true", help="print the outcome as JSON")
    add_condition_options(syn)
    syn.set_defaults(func=_synthesize)


def _synthesize(args: argparse.Namespace) -> int:
    from models.registry import Registry, RegistryError
    from service.data.progress import Progress
    from service.archive.store import Store
    from models.device import DeviceError, pick_device
    from service.synthetic.studies import StudyRequestError, SyntheticStudyWriter, generate

    cfg = config_from_args(args)
    if args.no_send:
        cfg = dataclasses.replace(cfg, outbox=dataclasses.replace(cfg.outbox, default_destination=""))
    if args.count < 1:
        raise CommandError("--count must be at least 1")
    if args.count > cfg.inference.max_count:
        raise CommandError(f"--count {args.count} is more than inference.max_count ({cfg.inference.max_count}) images in one study")
    first = args.seed if args.seed is not None else secrets.randbelow(2**31)
    if not 0 <= first <= MAX_SEED + 1 - args.count:
        raise CommandError(f"--seed must leave room for {args.count} seeds in 0..{MAX_SEED}")
    seeds = list(range(first, first + args.count))
    if args.batch_size < 1:
        raise CommandError("--batch-size must be at least 1")
    try:
        device = pick_device(args.device or cfg.inference.device, setting_name="inference.device", deterministic=True)
    except DeviceError as exc:
        raise CommandError(str(exc)) from None
    home = home_from(cfg)
    registry = Registry.with_bundled(home.models_dir)
    try:
        net, mv = registry.load(args.model, device=device)
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    if int(getattr(net, "channels", 1)) != 1:
        raise CommandError(f"{mv.ref} makes {net.channels}-channel images; synthetic radiographs are grayscale")
    condition = checked(net, args, mv.ref)

    progress = Progress(len(seeds), f"generating with {mv.ref}")
    images = generate(net, seeds, args.psi, bits=args.bits, batch_size=args.batch_size, device=device,
                      progress=lambda done, total: progress.update(done - progress.done), condition=condition or None)
    progress.close()

    store = Store(cfg, home)
    sender = None
    try:
        writer = SyntheticStudyWriter(cfg, store)
        try:
            outcome = writer.write_study(images, seeds, args.psi, mv, destination=args.send, burn_in_label=args.burn_in_label,
                                         series_description=args.series_description, condition=condition or None)
        except StudyRequestError as exc:
            raise CommandError(str(exc)) from None
        queued = [i.sop_instance_uid for i in outcome.instances if i.status == "queued"]
        delivery: dict[str, str] = {}
        if queued and args.wait > 0:
            from service.synthetic.outbox import OutboxSender

            sender = OutboxSender(cfg, store, writer.outbox)
            sender.start()
            sending = Progress(len(queued), f"sending to {outcome.destination}")
            rows = sender.drain(args.wait, sop_instance_uids=queued,
                                progress=lambda done, total: sending.update(done - sending.done))
            sending.close()
            delivery = {r.sop_instance_uid: r.state for r in rows}
    finally:
        if sender is not None:
            sender.stop()
        store.close()

    report = {
        "study_instance_uid": outcome.study_instance_uid,
        "series_instance_uid": outcome.series_instance_uid,
        "model": mv.ref,
        "psi": args.psi,
        **({"condition": condition} if condition else {}),
        "destination": outcome.destination,
        "instances": [
            {**dataclasses.asdict(i), "delivery": delivery.get(i.sop_instance_uid, "")} for i in outcome.instances
        ],
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_outcome(report, args.wait)
    failed = [i for i in outcome.instances if i.status == "failed"]
    undelivered = [u for u, state in delivery.items() if state != "sent"]
    all_refused = all(i.status == "refused-near-copy" for i in outcome.instances)
    return EXIT_INCOMPLETE if failed or undelivered or all_refused else EXIT_OK


def _print_outcome(report: dict[str, Any], wait: float) -> None:
    out = sys.stdout
    print(f"Study Instance UID  {report['study_instance_uid']}", file=out)
    print(f"Series Instance UID {report['series_instance_uid']}", file=out)
    print(f"model {report['model']}, psi {report['psi']:g}, destination {report['destination'] or '(archive only)'}", file=out)
    for inst in report["instances"]:
        delivery = f" -> {inst['delivery']}" if inst["delivery"] else ""
        print(f"  seed {inst['seed']:>10}  {inst['status']:<18}{delivery}  {inst['sop_instance_uid'] or inst['detail']}", file=out)
    pending = [i for i in report["instances"] if i["delivery"] and i["delivery"] != "sent"]
    if pending:
        print(f"{len(pending)} instance(s) not delivered within {wait:g} s; they stay queued "
              "(`synthpacs outbox ls`; a running `synthpacs serve` keeps sending)", file=out)
