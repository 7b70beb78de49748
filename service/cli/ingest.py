"""``synthpacs ingest PATH...``: import DICOM files from folders through the same path as C-STORE."""

from __future__ import annotations

import argparse
import json

from service.cli.common import CommandError, add_command, config_to_stderr, home_from, human_size, status_line


def register(subparsers: argparse._SubParsersAction) -> None:
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


def _ingest(args: argparse.Namespace) -> int:
    from service.archive.ingest import import_paths
    from service.archive.store import Store

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    cfg = config_to_stderr(args)
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
        print(f"imported    {summary.imported}  ({human_size(summary.bytes)})")
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
    status_line(f"ingest: {p.done}/{p.total} files ({100 * p.done / max(p.total, 1):.0f}%), {p.rate:.1f} files/s, {mbps:.1f} MB/s{eta}", p.done >= p.total)
