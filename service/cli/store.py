"""``synthpacs store stats|ls|verify``, ``synthpacs ingest PATH...`` and ``synthpacs echo HOST PORT``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from service.cli.common import CommandError, add_command, config_from_args, home_from
from service.dicom.index import Index
from service.logs import configure


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("store", help="what the training store holds: stats, listings, integrity")
    sub = parser.add_subparsers(dest="store_command", metavar="ACTION")
    sub.required = True

    stats = add_command(sub, "stats", help="counts of patients, studies, series, instances and bytes, by modality, body part and sender")
    stats.add_argument("--json", action="store_true", help="print JSON")
    stats.set_defaults(func=_stats)

    ls = add_command(sub, "ls", help="list studies, series or instances (newest first)")
    ls.add_argument("--level", choices=("study", "series", "instance"), default="study", help="what to list (default study)")
    ls.add_argument("--patient", metavar="ID", help="only this Patient ID (the pseudonym when de-identification is on)")
    ls.add_argument("--study", metavar="UID", help="only this Study Instance UID")
    ls.add_argument("--modality", help="only this Modality (CR, DX, OT...)")
    ls.add_argument("--body-part", dest="body_part", help="only this Body Part Examined")
    kind = ls.add_mutually_exclusive_group()
    kind.add_argument("--synthetic", action="store_true", help="only synthetic instances")
    kind.add_argument("--received", action="store_true", help="only received (not synthetic) instances")
    ls.add_argument("--excluded", action="store_true", help="only instances excluded from training (and why)")
    ls.add_argument("--limit", type=int, default=50, help="at most this many rows (default 50; 0: all)")
    ls.add_argument("--json", action="store_true", help="print JSON lines")
    ls.set_defaults(func=_ls)

    verify = add_command(sub, "verify", help="check every file against its sha256; find missing files and files the index lacks")
    verify.add_argument("--repair", action="store_true", help="index files the index lacks and drop rows whose file is gone")
    verify.add_argument("--json", action="store_true", help="print JSON")
    verify.set_defaults(func=_verify)

    ingest = add_command(
        subparsers, "ingest", help="import DICOM files from folders (recursively) through the same path as C-STORE",
        description="Walks each PATH recursively and stores every DICOM Part 10 file exactly as a C-STORE would "
        "(validation, de-identification, durable write, index). Other files are skipped with a reason.",
    )
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders")
    ingest.add_argument("--workers", type=int, default=2, help="threads sharing the store (default 2)")
    ingest.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    ingest.add_argument("--json", action="store_true", help="print the summary as JSON")
    ingest.set_defaults(func=_ingest)

    echo = add_command(subparsers, "echo", help="C-ECHO a DICOM peer (like dcmtk echoscu): is it there and does it accept us?")
    echo.add_argument("host", help="peer host name or address")
    echo.add_argument("port", type=int, help="peer DICOM port")
    echo.add_argument("-aet", "--aet", "--calling-aet", dest="calling_aet", help="our (calling) AE title (default dicom.ae_title)")
    echo.add_argument("-aec", "--aec", "--called-aet", dest="called_aet", default="ANY-SCP", help="the peer's (called) AE title (default ANY-SCP)")
    echo.add_argument("-to", "--timeout", type=float, default=10.0, help="seconds to wait at each step (default 10)")
    echo.add_argument("-r", "--repeat", type=int, default=1, help="echo this many times (default 1)")
    echo.add_argument("--tls", action="store_true", help="DICOM TLS (PS3.15 Annex B, BCP 195), like echoscu +tls")
    echo.add_argument("--tls-ca", help="CA certificates (PEM) the peer's certificate must chain to (default dicom.tls_ca, else the system's)")
    echo.add_argument("--tls-cert", help="our client certificate (PEM; default dicom.tls_cert)")
    echo.add_argument("--tls-key", help="its private key (PEM; default dicom.tls_key)")
    echo.add_argument("--tls-name", help="the name the peer's certificate must carry (default HOST)")
    echo.set_defaults(func=_echo)


# -- store ------------------------------------------------------------------------------------------


class _Stderr:
    """Whatever ``sys.stderr`` is when a line is written (not the stream of the moment of configuring)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _config(args: argparse.Namespace):
    """The configuration; these commands print their results on stdout, so their log lines go to stderr."""
    cfg = config_from_args(args)
    configure(cfg.log.level, cfg.log.format, stream=_Stderr())
    return cfg


def _open_index(args: argparse.Namespace) -> Index:
    cfg = _config(args)
    home = home_from(cfg)
    if not home.index_path.exists():
        raise CommandError(f"no store at {home.store_dir} (nothing received yet, or --home / SYNTHPACS_HOME points elsewhere)")
    return Index(home.index_path)


def _stats(args: argparse.Namespace) -> int:
    from service.dicom.watermark import free_space

    index = _open_index(args)
    try:
        stats = index.stats()
    finally:
        index.close()
    cfg = config_from_args(args)
    space = free_space(home_from(cfg).store_dir, cfg.store.min_free_bytes, cfg.store.min_free_percent)
    stats["disk"] = {"free_bytes": space.free_bytes, "total_bytes": space.total_bytes, "min_free_bytes": space.threshold_bytes,
                     "accepting": not space.below}
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    print(f"patients   {stats['patients']}")
    print(f"studies    {stats['studies']}")
    print(f"series     {stats['series']}")
    print(f"instances  {stats['instances']}  ({_size(stats['bytes'])})")
    print(f"synthetic  {stats['synthetic_instances']}")
    print(f"excluded from training  {stats['excluded_from_training']}")
    for title, key in (("by modality", "by_modality"), ("by body part", "by_body_part"), ("by sender AE", "by_source_ae")):
        if stats[key]:
            print(f"{title}: " + ", ".join(f"{k or '(none)'} {v}" for k, v in stats[key].items()))
    verdict = "accepting instances" if not space.below else "BELOW THE WATERMARK: new instances are refused (0xA700)"
    print(f"disk       {_size(space.free_bytes)} free of {_size(space.total_bytes)} ({space.free_percent:.1f} %); "
          f"watermark {_size(space.threshold_bytes)} (store.min_free_bytes / min_free_percent): {verdict}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    where, params = [], []
    for column, value in (("p.patient_id", args.patient), ("i.study_uid", args.study), ("se.modality", args.modality), ("se.body_part_examined", args.body_part)):
        if value:
            where.append(f"{column} = ?")
            params.append(value)
    if args.synthetic:
        where.append("i.synthetic = 1")
    if args.received:
        where.append("i.synthetic = 0")
    if args.excluded:
        where.append("i.excluded_from_training = 1")
    if args.limit < 0:
        raise CommandError("--limit must be 0 (all) or more")
    index = _open_index(args)
    try:
        rows = _rows(index, args.level, " AND ".join(where), tuple(params), args.limit)
    finally:
        index.close()
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    if not rows:
        print("nothing matches", file=sys.stderr)
        return 0
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
    return 0


def _rows(index: Index, level: str, where: str, params: tuple, limit: int) -> list[dict[str, Any]]:
    cond = f"WHERE {where}" if where else ""
    lim = f"LIMIT {int(limit)}" if limit else ""
    base = (
        "FROM instances i JOIN series se ON se.series_uid = i.series_uid "
        "JOIN studies st ON st.study_uid = i.study_uid JOIN patients p ON p.patient_id = st.patient_id"
    )
    if level == "study":
        sql = (
            "SELECT i.study_uid AS study_uid, p.patient_id AS patient_id, st.study_date AS date, "
            "GROUP_CONCAT(DISTINCT se.modality) AS modalities, COUNT(DISTINCT i.series_uid) AS series, "
            f"COUNT(*) AS instances, SUM(i.size) AS bytes, MAX(i.received_at) AS received {base} {cond} "
            f"GROUP BY i.study_uid ORDER BY received DESC {lim}"
        )
    elif level == "series":
        sql = (
            "SELECT i.series_uid AS series_uid, i.study_uid AS study_uid, se.modality AS modality, "
            "se.body_part_examined AS body_part, COUNT(*) AS instances, SUM(i.size) AS bytes, "
            f"MAX(i.received_at) AS received {base} {cond} GROUP BY i.series_uid ORDER BY received DESC {lim}"
        )
    else:
        sql = (
            "SELECT i.sop_instance_uid AS sop_instance_uid, se.modality AS modality, se.body_part_examined AS body_part, "
            "i.view_position AS view, i.rows AS rows, i.columns AS columns, i.size AS bytes, i.source AS source, "
            "i.source_ae AS source_ae, i.synthetic AS synthetic, i.exclusion_reason AS excluded, i.received_at AS received "
            f"{base} {cond} ORDER BY i.received_at DESC {lim}"
        )
    return [dict(r) for r in index.reader.execute(sql, params)]


def _verify(args: argparse.Namespace) -> int:
    from service.dicom.store import Store

    cfg = _config(args)
    store = Store(cfg, home_from(cfg))
    try:
        report = store.verify(repair=args.repair, progress=_progress_printer("verify", quiet=args.json))
    finally:
        store.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"missing files  {len(report['missing'])}")
        print(f"corrupt files  {len(report['corrupt'])} (sha256 differs from the index)")
        print(f"files not in the index  {len(report['orphans'])}" + (" (now indexed)" if args.repair and report["orphans"] else ""))
        for kind in ("missing", "corrupt", "orphans"):
            for path in report[kind][:20]:
                print(f"  {kind}: {path}")
    bad = report["corrupt"] or ((report["missing"] or report["orphans"]) and not args.repair)
    return 1 if bad else 0


# -- ingest -----------------------------------------------------------------------------------------


def _ingest(args: argparse.Namespace) -> int:
    from service.dicom.ingest import import_paths
    from service.dicom.store import Store

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    cfg = _config(args)
    store = Store(cfg, home_from(cfg))
    try:
        try:
            summary = import_paths(store, args.paths, workers=args.workers, progress=None if args.quiet else _ingest_progress)
        except FileNotFoundError as exc:
            raise CommandError(str(exc)) from None
    finally:
        store.close()
    if args.json:
        print(json.dumps(summary.as_dict(), indent=2))
    else:
        rate = summary.done / summary.seconds if summary.seconds else 0.0
        print(f"files       {summary.files}  ({summary.seconds:.1f} s, {rate:.1f} files/s)")
        print(f"imported    {summary.imported}  ({_size(summary.bytes)})")
        print(f"duplicates  {summary.duplicates}  (already stored)")
        print(f"skipped     {sum(summary.skipped.values())}")
        for reason, n in summary.skipped.most_common():
            print(f"  {n:6d}  {reason}")
        print(f"refused     {sum(summary.refused.values())}")
        for reason, n in summary.refused.most_common():
            print(f"  {n:6d}  {reason}: {summary.refused_examples.get(reason, '')}")
    # Documented convention (README "Importing folders"): skipped non-DICOM files are not failures;
    # any DICOM file that could not be imported is.
    return 1 if summary.refused else 0


def _ingest_progress(p) -> None:
    eta = f", ETA {p.eta:.0f} s" if p.eta is not None and p.done < p.total else ""
    mbps = p.bytes / 1e6 / p.elapsed if p.elapsed > 0 else 0.0
    _status_line(f"ingest: {p.done}/{p.total} files ({100 * p.done / max(p.total, 1):.0f}%), {p.rate:.1f} files/s, {mbps:.1f} MB/s{eta}", p.done >= p.total)


def _progress_printer(what: str, quiet: bool):
    import time

    started, last = time.monotonic(), [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if quiet or (now - last[0] < 1.0 and done < total):
            return
        last[0] = now
        rate = done / (now - started) if now > started else 0.0
        eta = f", ETA {(total - done) / rate:.0f} s" if rate and done < total else ""
        _status_line(f"{what}: {done}/{total} files, {rate:.1f} files/s{eta}", done >= total)

    return report


def _status_line(text: str, final: bool) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text + ("\n" if final else ""))
    else:
        sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- echo -------------------------------------------------------------------------------------------


def _echo(args: argparse.Namespace) -> int:
    from service.dicom.echo import EchoError, echo

    cfg = _config(args)
    # Our message says what failed; pynetdicom's own error lines would repeat it on stderr.
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    calling = args.calling_aet or cfg.dicom.ae_title
    if args.repeat < 1:
        raise CommandError("--repeat must be at least 1")
    tls = _echo_tls(args, cfg)
    failures = 0
    for _ in range(args.repeat):
        try:
            result = echo(args.host, args.port, called_ae=args.called_aet, calling_ae=calling, timeout=args.timeout, max_pdu=cfg.dicom.max_pdu or 16384, tls=tls)
        except EchoError as exc:
            print(f"C-ECHO failed: {exc}", file=sys.stderr)
            failures += 1
            continue
        verdict = "success" if result.ok else "failure"
        print(f"C-ECHO {calling} -> {args.called_aet}@{args.host}:{args.port}: {verdict} (status 0x{result.status:04X}) in {result.round_trip_ms:.1f} ms")
        failures += 0 if result.ok else 1
    return 1 if failures else 0


def _echo_tls(args: argparse.Namespace, cfg: Any) -> tuple[Any, str] | None:
    """The (context, expected name) for ``echo --tls``, built as the outbox would for a TLS peer."""
    from service.config import ConfigError, DicomPeer
    from service.dicom.tls import client_args

    given = [flag for flag in ("tls_ca", "tls_cert", "tls_key", "tls_name") if getattr(args, flag)]
    if not args.tls:
        if given:
            raise CommandError(f"--{given[0].replace('_', '-')} needs --tls")
        return None
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CommandError("--tls-cert and --tls-key go together")
    for flag in ("tls_ca", "tls_cert", "tls_key"):
        path = getattr(args, flag)
        if path and not Path(path).expanduser().is_file():
            raise CommandError(f"--{flag.replace('_', '-')} {path}: not a readable file")
    peer = DicomPeer(args.called_aet, args.host, args.port, tls=True, tls_ca=args.tls_ca or cfg.dicom.tls_ca,
                     tls_cert=args.tls_cert or "", tls_key=args.tls_key or "", tls_name=args.tls_name or "")
    try:
        return client_args(cfg, peer)["tls_args"]
    except ConfigError as exc:
        raise CommandError(str(exc).replace(f"dicom.peers {args.called_aet!r} ", "echo --")) from None


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"
