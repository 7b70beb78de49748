"""``synthpacs store stats|ls|verify|migrate``: what the training store holds, and its index's schema."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from service.archive.index import Index, open_index
from service.cli.common import CommandError, add_command, config_from_args, config_to_stderr, home_from, human_size, progress_printer


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

    migrate = add_command(sub, "migrate", help="bring the index's schema up to date (done at every start too); "
                          "for a PostgreSQL index (store.index_url), e.g. before a rolling upgrade")
    migrate.add_argument("--json", action="store_true", help="print JSON")
    migrate.set_defaults(func=_migrate)


def _open_index(args: argparse.Namespace) -> Index:
    cfg = config_to_stderr(args)
    home = home_from(cfg)
    if not cfg.store.index_url.strip() and not home.index_path.exists():
        raise CommandError(f"no store at {home.store_dir} (nothing received yet, or --home / SYNTHPACS_HOME points elsewhere)")
    return open_index(cfg, home)


def _migrate(args: argparse.Namespace) -> int:
    cfg = config_to_stderr(args)
    index = open_index(cfg, home_from(cfg))
    try:
        report, where = index.migration, index.describe()
    finally:
        index.close()
    if args.json:
        print(json.dumps({"index": where, "before": report.before, "after": report.after, "applied": list(report.applied)}))
    elif report.applied:
        print(f"{where}: schema version {report.before} -> {report.after} (applied {', '.join(map(str, report.applied))})")
    else:
        print(f"{where}: schema version {report.after}, up to date")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from service.archive.watermark import free_space

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
    print(f"instances  {stats['instances']}  ({human_size(stats['bytes'])})")
    print(f"synthetic  {stats['synthetic_instances']}")
    print(f"excluded from training  {stats['excluded_from_training']}")
    for title, key in (("by modality", "by_modality"), ("by body part", "by_body_part"), ("by sender AE", "by_source_ae")):
        if stats[key]:
            print(f"{title}: " + ", ".join(f"{k or '(none)'} {v}" for k, v in stats[key].items()))
    verdict = "accepting instances" if not space.below else "BELOW THE WATERMARK: new instances are refused (0xA700)"
    print(f"disk       {human_size(space.free_bytes)} free of {human_size(space.total_bytes)} ({space.free_percent:.1f} %); "
          f"watermark {human_size(space.threshold_bytes)} (store.min_free_bytes / min_free_percent): {verdict}")
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
    d = index.dialect
    cond = f"WHERE {where}" if where else ""
    lim = f"LIMIT {int(limit)}" if limit else ""
    base = (
        "FROM instances i JOIN series se ON se.series_uid = i.series_uid "
        "JOIN studies st ON st.study_uid = i.study_uid JOIN patients p ON p.patient_id = st.patient_id"
    )
    if level == "study":
        sql = (
            f"SELECT i.study_uid AS study_uid, {d.any_value('p.patient_id')} AS patient_id, {d.any_value('st.study_date')} AS date, "
            f"{d.group_concat_distinct('se.modality')} AS modalities, COUNT(DISTINCT i.series_uid) AS series, "
            f"COUNT(*) AS instances, SUM(i.size) AS bytes, MAX(i.received_at) AS received {base} {cond} "
            f"GROUP BY i.study_uid ORDER BY received DESC {lim}"
        )
    elif level == "series":
        sql = (
            f"SELECT i.series_uid AS series_uid, {d.any_value('i.study_uid')} AS study_uid, {d.any_value('se.modality')} AS modality, "
            f"{d.any_value('se.body_part_examined')} AS body_part, COUNT(*) AS instances, SUM(i.size) AS bytes, "
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
    from service.archive.store import Store

    cfg = config_to_stderr(args)
    store = Store(cfg, home_from(cfg))
    try:
        report = store.verify(repair=args.repair, progress=progress_printer("verify", quiet=args.json))
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
