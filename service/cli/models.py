"""``synthpacs models export|index|ls|show``: the model registry.

The registry is ``<home>/models`` plus the bundled demo model shipped in the package
(:meth:`models.registry.Registry.with_bundled`); a name in the home folder hides a bundled one.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from service.cli.common import CommandError, add_command, config_from_args, home_from
from service.logs import get_logger


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="the model registry: export a training run, list, show")
    sub = parser.add_subparsers(dest="action", metavar="ACTION")
    sub.required = True

    export = add_command(sub, "export", help="write a training run's generator as the next version of a model",
                         description="Write <home>/models/NAME/vN/ (generator.safetensors and model.json) from a run's newest checkpoint, or from --checkpoint.")
    export.add_argument("run", metavar="RUN", help="run id under <home>/runs, or a run folder")
    export.add_argument("--name", required=True, help="model name (letters, digits, '.', '_', '-')")
    export.add_argument("--checkpoint", metavar="FILE", help="checkpoint file, or its name in the run's checkpoints folder (default: the newest)")
    export.add_argument("--fp16", action="store_true", help="store the weights as float16 (half the size; loaded back as float32)")
    export.add_argument("--card", metavar="JSON", help="file of extra model-card fields (description, credits, license ...)")
    export.add_argument("--description", help="one-line description for the model card")
    export.add_argument("--no-index", dest="index", action="store_false",
                        help="do not write the near-copy index (the version then cannot be checked where its training set is absent)")
    export.set_defaults(func=_export)

    index = add_command(sub, "index", help="write a model version's near-copy index from its training dataset",
                        description="Describe the training dataset the model card names (or --dataset NAME@vN) into the version's "
                                    "near_copy_index.npz: descriptors, not images (service/near_copy_index.py). The near-copy check "
                                    "then runs wherever the model is served, without the dataset. `models export` does this itself.")
    index.add_argument("model", metavar="MODEL[:vN]", help="model name (latest version) or name:vN, in this home")
    index.add_argument("--dataset", metavar="NAME@vN", help="the training dataset, when the card does not name it")
    index.set_defaults(func=_index)

    ls = add_command(sub, "ls", help="list models and versions (home folder and bundled)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=_ls)

    show = add_command(sub, "show", help="print a model version's card")
    show.add_argument("model", metavar="MODEL[:vN]", help="model name (latest version) or name:vN")
    show.set_defaults(func=_show)


def _registry(cfg: Any):
    from models.registry import Registry

    return Registry.with_bundled(home_from(cfg).models_dir)


def _export(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    home = home_from(cfg)
    from models.registry import RegistryError
    from models.train.checkpoint import CheckpointError
    from models.train.export import export_run
    from models.train.recipe import RecipeError
    from models.train.rundir import RunError, resolve_run

    extra: dict[str, Any] = {}
    if args.card:
        try:
            extra = json.loads(Path(args.card).read_text())
        except OSError as exc:
            raise CommandError(f"cannot read --card {args.card}: {exc.strerror}") from None
        except ValueError as exc:
            raise CommandError(f"--card {args.card} is not valid JSON: {exc}") from None
        if not isinstance(extra, dict):
            raise CommandError(f"--card {args.card} must hold a JSON object")
    if args.description:
        extra["description"] = args.description
    try:
        run = resolve_run(home.runs_dir, args.run)
        mv = export_run(run, _registry(cfg), args.name, checkpoint=args.checkpoint, half=args.fp16, extra=extra)
    except (RunError, CheckpointError, RegistryError, RecipeError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    get_logger("models").info("model_exported", model=mv.ref, path=str(mv.path), run=run.name)
    size = (mv.path / "generator.safetensors").stat().st_size
    print(f"exported {mv.ref} to {mv.path} ({size / 2**20:.1f} MiB, {mv.card.get('weights_dtype')})")
    if args.index:
        print(_write_index(cfg, mv, None))
    return 0


def _write_index(cfg: Any, mv: Any, dataset: str | None) -> str:
    """Build the version's near-copy index; a line saying what was written (or why nothing could be)."""
    from models.datasets import DatasetError, resolve_dataset
    from service.near_copy_index import build_index, describe
    from service.synthetic.studies import dataset_ref_of

    ref = dataset or dataset_ref_of(mv.card)
    if not ref:
        return (f"no near-copy index: the card of {mv.ref} names no training dataset (use `synthpacs models index "
                f"{mv.ref} --dataset NAME@vN`); until it has one, studies from it are not sent unless synthetic.allow_unchecked")
    try:
        dv = resolve_dataset(home_from(cfg).datasets_dir, ref)
    except (DatasetError, LookupError, ValueError) as exc:
        return f"no near-copy index: the training dataset {ref} is not in this home ({exc})"
    path = build_index(dv.images_path, mv.path, ref)
    info = describe(mv.path) or {}
    get_logger("models").info("near_copy_index_written", model=mv.ref, dataset=ref, images=info.get("training_images"))
    return f"near-copy index of {ref} ({info.get('training_images')} images, {info.get('bytes', 0) / 2**20:.1f} MiB) written to {path}"


def _index(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from models.registry import RegistryError

    try:
        mv = _registry(cfg).resolve(args.model)
    except (RegistryError, ValueError) as exc:
        raise CommandError(str(exc)) from None
    home_models = home_from(cfg).models_dir.resolve()
    if home_models not in mv.path.resolve().parents:
        raise CommandError(f"{mv.ref} is not in this home's registry ({mv.path}); copy it there first")
    line = _write_index(cfg, mv, args.dataset)
    print(line)
    return 0 if line.startswith("near-copy index") else 1


def _ls(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from models.registry import RegistryError, describe

    reg = _registry(cfg)
    rows = []
    try:
        for name in reg.names():
            rows.extend(describe(reg.versions(name)))
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    if not rows:
        print(f"no models in {home_from(cfg).models_dir} (export one with `synthpacs models export RUN --name NAME`)")
        return 0
    header = ("MODEL", "ARCH", "RES", "DATASET", "PATH")
    table = [(r["model"], str(r["architecture"]), str(r["resolution"] or ""), str(r["dataset"] or ""), r["path"] + (f"  [unusable: {r['error']}]" if r.get("error") else "")) for r in rows]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(4)]
    for row in [header, *table]:
        print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
    return 0


def _show(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    from models.registry import RegistryError

    try:
        mv = _registry(cfg).resolve(args.model)
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    if "error" in mv.card:
        raise CommandError(mv.card["error"])
    print(json.dumps({"model": mv.ref, "path": str(mv.path), **mv.card}, indent=2, sort_keys=True))
    return 0
