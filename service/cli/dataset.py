"""``synthpacs dataset build|ls|show|export|import-images``: training datasets from the store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from models.datasets import DatasetError, DatasetVersion, list_datasets, load_images, resolve_dataset
from service.cli.common import CommandError, add_command, config_from_args, home_from
from service.data.pixels import REASONS


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip().upper() for v in value.split(",") if v.strip())


def _percentiles(value: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError("expected two numbers, LOW,HIGH (e.g. 0.5,99.5)") from None
    return lo, hi


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("dataset", help="build, list, show and export training datasets; import images as test data")
    sub = parser.add_subparsers(dest="dataset_command", metavar="ACTION")
    sub.required = True

    build = add_command(sub, "build", help="build a new dataset version from the store",
                        description="Normalize the store's trainable radiographs into datasets/NAME/vN (images.npy, manifest.jsonl, dataset.json).")
    build.add_argument("name", metavar="NAME", help="dataset name (letters, digits, '.', '_', '-')")
    build.add_argument("--resolution", type=int, help="side of the square images in pixels (default dataset.resolution, 256)")
    build.add_argument("--modality", type=_csv, help="modalities to take, comma-separated (default dataset.modalities: CR,DX)")
    build.add_argument("--body-part", type=_csv, help="Body Part Examined values, comma-separated (default: any)")
    build.add_argument("--view", type=_csv, help="View Position values, comma-separated (default: any)")
    build.add_argument("--min-size", type=int, default=0, help="skip images whose shorter side is below this many pixels")
    build.add_argument("--fit", choices=("pad", "crop"), help="pad: whole image on black; crop: centre square (default dataset.fit)")
    build.add_argument("--dtype", choices=("uint8", "uint16"), help="pixel type of images.npy (default dataset.dtype)")
    build.add_argument("--window", choices=("header", "percentile"), help="header VOI when present, or always the percentile window")
    build.add_argument("--percentiles", type=_percentiles, metavar="LOW,HIGH", help="the percentile window (default 0.5,99.5)")
    build.add_argument("--resample", choices=("bicubic", "lanczos"), help="anti-aliased resampling filter (default dataset.resample, bicubic)")
    build.add_argument("--multiframe", choices=("refuse", "first"), help="multi-frame images: skip them, or use the first frame")
    build.add_argument("--workers", type=int, help="processes (default dataset.workers; 0: every core)")
    build.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    build.set_defaults(func=_build)

    ls = add_command(sub, "ls", help="list dataset versions")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_ls)

    show = add_command(sub, "show", help="counts, histograms and a contact sheet of one version")
    show.add_argument("ref", metavar="NAME[@vN]", help="dataset name (latest version) or name@vN")
    show.add_argument("--json", action="store_true", help="print dataset.json")
    show.add_argument("--sheet", metavar="FILE.png", help="write a contact sheet PNG here (the build wrote one into the version too)")
    show.add_argument("--tiles", type=int, default=64, help="images on the contact sheet, spread evenly (default 64)")
    show.add_argument("--columns", type=int, default=8, help="contact sheet columns (default 8)")
    show.add_argument("--tile-size", type=int, default=128, help="contact sheet tile side in pixels (default 128)")
    show.set_defaults(func=_show)

    export = add_command(sub, "export", help="write a version as PNG (lossless) or JPG files")
    export.add_argument("ref", metavar="NAME[@vN]", help="dataset name (latest version) or name@vN")
    export.add_argument("--out", required=True, metavar="DIR", help="folder for the files (empty, or --overwrite)")
    export.add_argument("--format", default="png", choices=("png", "jpg"), help="png (lossless, default) or jpg (the seed notebook's)")
    export.add_argument("--quality", type=int, default=95, help="JPG quality 1-100 (default 95)")
    export.add_argument("--limit", type=int, help="export only the first N images")
    export.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    export.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    export.set_defaults(func=_export)

    imp = add_command(sub, "import-images", help="wrap JPG/PNG radiographs as CR/DX instances of a test patient and store them",
                      description="Test and demo data: every .jpg/.jpeg/.png under DIR becomes a CR (or DX) instance of a clearly "
                                  "fake test patient, stored through the same path as a C-STORE (validation, de-identification, index).")
    imp.add_argument("directory", metavar="DIR", help="folder of images (searched recursively)")
    imp.add_argument("--modality", default="CR", choices=("CR", "DX"), help="CR Image (default) or DX Image For Presentation")
    imp.add_argument("--body-part", default="", help="Body Part Examined for files without a label (e.g. HAND)")
    imp.add_argument("--view", default="", help="View Position for files without a label (e.g. AP, or frontal/lateral)")
    imp.add_argument("--labels", metavar="CSV", help="per-file labels: columns filename, body_part[, views, fractured or finding] (default DIR/manifest.csv if it has them)")
    imp.add_argument("--exclude", metavar="FILE", help="file names not to import, one per line (a held-out split, e.g. models/splits/fracatlas-heldout.txt)")
    imp.add_argument("--limit", type=int, help="import only the first N files (sorted by path)")
    imp.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    imp.set_defaults(func=_import_images)


def _resolve(args: argparse.Namespace, ref: str) -> DatasetVersion:
    cfg = config_from_args(args)
    root = home_from(cfg).datasets_dir
    try:
        return resolve_dataset(root, ref)
    except (DatasetError, ValueError) as exc:
        raise CommandError(str(exc)) from None


def _build(args: argparse.Namespace) -> int:
    from service.data.build import BuildError, Filters, build_dataset, options_from_config

    cfg = config_from_args(args)
    try:
        options = options_from_config(
            cfg, resolution=args.resolution, fit=args.fit, dtype=args.dtype, window=args.window,
            percentiles=args.percentiles, multiframe=args.multiframe, min_size=args.min_size, resample=args.resample,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if args.min_size < 0:
        raise CommandError("--min-size cannot be negative")
    if args.workers is not None and args.workers < 0:
        raise CommandError("--workers cannot be negative")
    filters = Filters(
        modalities=args.modality if args.modality is not None else tuple(cfg.dataset.modalities),
        body_parts=args.body_part or (),
        views=args.view or (),
        min_size=args.min_size,
    )
    try:
        result = build_dataset(cfg, args.name, options, filters, workers=args.workers, progress=not args.quiet)
    except (BuildError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    v = result.version
    skipped = ", ".join(f"{n} {r}" for r, n in result.skipped.items())
    print(f"built {v.ref}: {v.count} images {v.resolution}x{v.resolution} {v.dtype} from {result.candidates} instances"
          f" in {result.seconds:.1f} s ({result.images_per_second:.1f} img/s, {result.workers} workers)")
    if skipped:
        print(f"skipped {sum(result.skipped.values())}: {skipped}; details in {v.path / 'build_report.jsonl'}")
    if result.excluded:
        print("left out before the build: " + ", ".join(f"{k} {n}" for k, n in result.excluded.items()))
    print(f"content hash {v.content_hash}")
    print(f"contact sheet {v.path / 'contact_sheet.png'}")
    return 0


def _ls(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    versions = list_datasets(home_from(cfg).datasets_dir)
    if args.json:
        print(json.dumps([{"ref": v.ref, "path": str(v.path), **v.info} for v in versions], indent=2))
        return 0
    if not versions:
        print("no datasets yet; build one with `synthpacs dataset build NAME`")
        return 0
    rows = [("DATASET", "IMAGES", "SIZE", "DTYPE", "SKIPPED", "CREATED", "HASH")]
    for v in versions:
        rows.append((v.ref, str(v.count), f"{v.resolution}x{v.resolution}", v.dtype, str(v.info.get("skipped", 0)),
                     str(v.info.get("created_at", "")), v.content_hash[:12]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def _histogram(title: str, counts: dict[str, int], width: int = 40) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    top = max(counts.values())
    label_w = max(len(k) for k in counts)
    lines = [f"{title}:"]
    for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        bar = "#" * max(1, round(width * n / top))
        lines.append(f"  {k.ljust(label_w)}  {str(n).rjust(len(str(top)))}  {bar}")
    return lines


def _show(args: argparse.Namespace) -> int:
    v = _resolve(args, args.ref)
    if args.json:
        print(json.dumps(v.info, indent=2))
    else:
        info: dict[str, Any] = v.info
        params = info.get("parameters", {})
        print(f"{v.ref}  {v.path}")
        print(f"  {v.count} images, {v.resolution}x{v.resolution} {v.dtype}, created {info.get('created_at', '?')}")
        print(f"  content hash {v.content_hash}")
        print("  parameters: " + ", ".join(f"{k}={params[k]}" for k in sorted(params)))
        filters = {k: val for k, val in info.get("filters", {}).items() if val}
        print("  filters: " + (json.dumps(filters) if filters else "none"))
        for key, title in (("body_part", "body part"), ("modality", "modality"), ("view", "view")):
            for line in _histogram(title, info.get("counts", {}).get(key, {})):
                print("  " + line)
        skipped = info.get("skipped_by_reason", {})
        if skipped:
            print(f"  skipped {info.get('skipped', 0)}: " + ", ".join(f"{n} {r} ({REASONS.get(r, r)})" for r, n in skipped.items()))
        for k, n in info.get("excluded", {}).items():
            print(f"  left out before the build: {k} {n}")
        sheet = v.path / "contact_sheet.png"
        if sheet.exists():
            print(f"  contact sheet {sheet}")
    if args.sheet:
        from service.data.sheet import contact_sheet, sheet_indices

        if args.tiles < 1 or args.columns < 1 or not 16 <= args.tile_size <= 1024:
            raise CommandError("--tiles and --columns must be at least 1 and --tile-size 16-1024")
        images = load_images(v)
        out = Path(args.sheet)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            contact_sheet(images, sheet_indices(len(images), args.tiles), args.columns, args.tile_size, title=f"{v.ref}  {v.count} images").save(out, format="PNG")
        except OSError as exc:
            raise CommandError(f"cannot write {out}: {exc.strerror or exc}") from None
        print(f"wrote contact sheet {out}", file=sys.stderr if args.json else sys.stdout)
    return 0


def _export(args: argparse.Namespace) -> int:
    from service.data.export import ExportError, export_dataset

    v = _resolve(args, args.ref)
    try:
        result = export_dataset(v, Path(args.out), args.format, args.quality, args.limit, args.overwrite, progress=not args.quiet)
    except ExportError as exc:
        raise CommandError(str(exc)) from None
    except OSError as exc:
        raise CommandError(f"cannot write into {args.out}: {exc.strerror or exc}") from None
    kind = "lossless" if result.lossless else "lossy"
    print(f"exported {result.files} {result.fmt.upper()} files ({kind}) of {v.ref} to {result.out}")
    return 0


def _import_images(args: argparse.Namespace) -> int:
    from service.data.images_import import ImportImagesError, import_images, read_name_list
    from service.archive.store import Store

    cfg = config_from_args(args)
    try:
        exclude = read_name_list(Path(args.exclude)) if args.exclude else None
    except ImportImagesError as exc:
        raise CommandError(str(exc)) from None
    store = Store(cfg)
    try:
        result = import_images(
            store, Path(args.directory), modality=args.modality, body_part=args.body_part, view=args.view,
            labels_file=Path(args.labels) if args.labels else None, limit=args.limit, progress=not args.quiet, exclude=exclude,
        )
    except ImportImagesError as exc:
        raise CommandError(str(exc)) from None
    finally:
        store.index.close()
    s = result.summary()
    print(f"imported {s['files']} files as {args.modality}: {s['stored']} stored, {s['identical']} already stored, "
          f"{s['kept']} kept (a different instance had the UID), {len(result.skipped)} skipped"
          + (f", {s['excluded']} excluded by --exclude" if s["excluded"] else "") + (f"; findings recorded for {s['findings']}" if s["findings"] else ""))
    for rel, reason, message in result.skipped:
        print(f"  skipped {rel}: {reason}: {message}")
    return 0 if s["stored"] + s["identical"] + s["kept"] > 0 else 1
