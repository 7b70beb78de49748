"""``synthpacs outbox ls|retry``: what is queued for the PACS, and sending it again."""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

from service.cli.common import CommandError, add_command, config_from_args, home_from

EXIT_OK, EXIT_INCOMPLETE = 0, 1


def register(subparsers: argparse._SubParsersAction) -> None:
    box = add_command(subparsers, "outbox", help="what is queued for DICOM destinations: ls, retry")
    sub = box.add_subparsers(dest="outbox_command", metavar="ACTION")
    sub.required = True
    ls = add_command(sub, "ls", help="list queued, sent and failed sends, and the destinations' health")
    ls.add_argument("--state", choices=("pending", "sending", "sent", "failed"), help="only this state")
    ls.add_argument("--destination", help="only this destination AE title")
    ls.add_argument("--study", help="only instances of this Study Instance UID")
    ls.add_argument("--limit", type=int, default=50, help="rows to show (default 50; 0: all)")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_ls)
    retry = add_command(sub, "retry", help="make waiting and failed sends due now (a running serve sends them)")
    retry.add_argument("--destination", help="only this destination AE title")
    retry.add_argument("--id", dest="ids", type=int, action="append", help="only this outbox id (repeatable)")
    retry.add_argument("--send", action="store_true", help="send them from this process now instead of leaving them to serve")
    retry.add_argument("--wait", type=float, default=120.0, help="with --send: seconds to wait for delivery")
    retry.set_defaults(func=_retry)


def _open(args: argparse.Namespace):
    from service.archive.index import open_index
    from service.synthetic.outbox import Outbox

    cfg = config_from_args(args)
    home = home_from(cfg)
    index = open_index(cfg, home)
    return cfg, index, Outbox(cfg, index)


def _ago(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds <= 0:
        return "now"
    if seconds < 120:
        return f"in {seconds} s"
    return f"in {seconds // 60} min"


def _ls(args: argparse.Namespace) -> int:
    cfg, index, box = _open(args)
    try:
        rows = box.items(state=args.state, destination=args.destination, study_uid=args.study, limit=args.limit or None)
        counts = box.counts()
        health = box.health()
    finally:
        index.close()
    if args.json:
        print(json.dumps({
            "counts": counts,
            "destinations": {d: dataclasses.asdict(h) for d, h in health.items()},
            "items": [dataclasses.asdict(r) for r in rows],
        }, indent=2))
        return 0
    configured = [p.ae_title for p in cfg.dicom.peers if p.port is not None]
    for dest in sorted(set(configured) | set(counts) | set(health)):
        h = health.get(dest)
        state = "never checked" if h is None else ("up" if h.healthy else f"DOWN ({h.consecutive_failures} failed checks: {h.last_error})")
        c = counts.get(dest, {})
        summary = ", ".join(f"{n} {s}" for s, n in sorted(c.items())) or "nothing queued"
        where = "" if dest in configured else "  [not in dicom.peers]"
        print(f"{dest}: {state}; {summary}{where}")
    if not rows:
        print("no outbox items match")
        return 0
    print(f"{'id':>6}  {'state':<8} {'destination':<16} {'tries':>5}  {'next':<10} sop instance uid / last error")
    now = time.time()
    for r in rows:
        nxt = _ago(r.next_attempt_at - now) if r.state == "pending" else ""
        line = f"{r.id:>6}  {r.state:<8} {r.destination:<16} {r.attempts:>5}  {nxt:<10} {r.sop_instance_uid}"
        print(line)
        if r.last_error and r.state != "sent":
            print(f"{'':>6}  {r.last_error}")
    return 0


def _retry(args: argparse.Namespace) -> int:
    cfg, index, box = _open(args)
    try:
        if args.destination and cfg.peer(args.destination) is None and args.destination not in box.counts():
            raise CommandError(f"no destination {args.destination!r} in dicom.peers or in the outbox")
        count = box.make_due(destination=args.destination, ids=args.ids)
        uids = [r.sop_instance_uid for r in box.items(destination=args.destination) if args.ids is None or r.id in args.ids]
    finally:
        index.close()
    print(f"{count} outbox item(s) due now")
    if not args.send or count == 0:
        return EXIT_OK
    from service.synthetic.outbox import OutboxSender
    from service.archive.store import Store

    store = Store(cfg, home_from(cfg))
    sender = OutboxSender(cfg, store)
    try:
        sender.start()
        rows = sender.drain(args.wait, sop_instance_uids=uids, destination=args.destination)
    finally:
        sender.stop()
        store.close()
    waiting = [r for r in rows if r.state not in ("sent", "failed")]
    failed = [r for r in rows if r.state == "failed"]
    print(f"{sum(1 for r in rows if r.state == 'sent')} sent, {len(failed)} failed, {len(waiting)} still waiting")
    return EXIT_INCOMPLETE if waiting or failed else EXIT_OK
