"""``synthpacs evaluate``: quality metrics of a registered generator, and the comparison of two.

    synthpacs evaluate MODEL[:vN] [--dataset NAME[@vN]] [--real NAME[@vN]] [--n 5000] [--metrics all]
    synthpacs evaluate --compare A B [--out DIR]

The first generates ``--n`` images (seeds 0..n-1 unless ``--seed-start``), computes the metrics of
:mod:`models.metrics.evaluate` against the reference images and writes ``evaluation.json`` (plus a
sample grid) for the model version, then prints a table. ``--dataset`` is the training dataset (the
model card's by default): memorization is checked against it, and it is the reference set unless
``--real`` names a held-out one. The second prints the seed-style table for two evaluated models and
saves ``comparison.png`` (bar chart), ``samples.png`` (sample grids side by side), ``comparison.md``
and ``comparison.json``.

Where ``evaluation.json`` goes: into the model version folder (``<home>/models/NAME/vN/``) when it is
writable and not part of the installed package; otherwise (the bundled demo model, a read-only
registry volume) into ``<home>/evaluations/NAME/vN/``. Not ``<home>/models/NAME/`` for a bundled model:
a folder of that name there would hide the bundled model from the registry. ``--compare`` reads
whichever of the two is newer.

Also here, for the training command: :func:`snapshot_hook` builds the runner's snapshot-metrics
callable from ``evaluation.snapshot_metrics`` / ``evaluation.snapshot_samples``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models import registry
from models.datasets import DatasetError, DatasetVersion, load_images, resolve_dataset
from models.metrics.evaluate import DEFINITIONS, METRICS, EvaluationSettings, FeatureCache, Inputs, evaluate_generator, generate_images, parse_metrics
from models.metrics.features import FeatureNetworkError, InceptionFeatures, TorchScriptFeatures
from models.metrics.inception import InceptionWeightsError
from models.metrics.report import draw_chart, format_table, image_grid, side_by_side, summary_row
from models.metrics.snapshot import SnapshotEvaluator
from service import __version__
from service.cli.common import CommandError, add_command, config_from_args, home_from
from service.config import Config
from service.logs import get_logger

EVALUATION_FILE = "evaluation.json"
SAMPLES_FILE = "evaluation_samples.png"
SAMPLE_SEEDS = list(range(16))
log = get_logger("evaluate")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(
        subparsers, "evaluate",
        help="FID, KID, precision/recall, SSIM, PSNR, diversity and memorization of a model; --compare A B for the report",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", metavar="MODEL[:vN]", help="registered model to evaluate (latest version unless :vN)")
    p.add_argument("--dataset", metavar="NAME[@vN]", help="training dataset (default: the one in the model card); reference set unless --real")
    p.add_argument("--real", metavar="NAME[@vN]", help="held-out real dataset used as the reference for FID/KID/precision/recall/SSIM/PSNR")
    p.add_argument("--n", type=int, default=5000, help="generated images (default 5000)")
    p.add_argument("--seed-start", type=int, default=0, help="first seed; seeds are seed-start..seed-start+n-1 (default 0)")
    p.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1)")
    p.add_argument("--metrics", default="all", help=f"comma-separated: all, {', '.join(METRICS)} (aliases pr, ssim, psnr)")
    p.add_argument("--diversity-pairs", type=int, default=1000, help="random image pairs for the MS-SSIM diversity of each set (default 1000)")
    p.add_argument("--batch", type=int, help="batch size for generation and features (evaluation.batch_size)")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N (evaluation.device)")
    p.add_argument("--inception-weights", metavar="FILE", help="pytorch-fid's pt_inception-2015-12-05-6726825d.pth (evaluation.inception_weights)")
    p.add_argument("--feature-network", metavar="FILE", help="TorchScript in-domain feature network (evaluation.feature_network)")
    p.add_argument("--json", action="store_true", help="print evaluation.json to stdout instead of the table")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), help="compare two evaluated models: table, PNG chart, sample grids")
    p.add_argument("--out", metavar="DIR", help="where --compare writes its files (default <home>/reports/compare-A-vs-B)")
    p.set_defaults(func=_run)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def pick_device(setting: str) -> torch.device:
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise CommandError(f"evaluation.device {setting!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CommandError(f"evaluation.device is {setting!r} but PyTorch sees no CUDA GPU here; use auto or cpu")
    if device.type not in ("cpu", "cuda"):
        raise CommandError(f"evaluation.device {setting!r}: only cpu and cuda are supported")
    return device


def feature_extractors(cfg: Config, device: torch.device, wanted: tuple[str, ...]) -> tuple[list, dict[str, str]]:
    """The feature networks the configuration provides, and why each missing one's metrics are skipped.

    No Inception weights: FID/KID/precision-recall are skipped with the weights message (never another
    network in their place). A configured feature network that cannot be loaded is an error: the user
    asked for it.
    """
    feature_metrics = [m for m in wanted if m in ("fid", "kid", "precision_recall")]
    if not feature_metrics:
        return [], {}
    extractors: list = []
    skipped: dict[str, str] = {}
    try:
        extractors.append(InceptionFeatures(cfg.evaluation.inception_weights, device=device))
    except InceptionWeightsError as exc:
        for m in feature_metrics:
            skipped[m] = f"skipped: {exc}"
    if cfg.evaluation.feature_network:
        try:
            extractors.append(
                TorchScriptFeatures(
                    cfg.evaluation.feature_network, device=device,
                    input_size=cfg.evaluation.feature_network_input_size, input_channels=cfg.evaluation.feature_network_input_channels,
                )
            )
        except FeatureNetworkError as exc:
            raise CommandError(str(exc)) from None
    return extractors, skipped


def snapshot_hook(cfg: Config, progress: Any = None) -> SnapshotEvaluator | None:
    """The training runner's ``metrics_fn`` from the configuration, or None when
    ``evaluation.snapshot_metrics`` is empty. The reference set is the run's training dataset."""
    if not cfg.evaluation.snapshot_metrics:
        return None
    try:
        metrics = parse_metrics(cfg.evaluation.snapshot_metrics)
    except ValueError as exc:
        raise CommandError(f"evaluation.snapshot_metrics: {exc}") from None
    if cfg.evaluation.snapshot_samples < 2:
        raise CommandError("evaluation.snapshot_samples must be at least 2")
    extractors, skipped = feature_extractors(cfg, pick_device(cfg.evaluation.device), metrics)
    for metric, why in skipped.items():
        log.warning("snapshot_metric_skipped", metric=metric, reason=why)
    return SnapshotEvaluator(
        metrics=metrics, n_samples=cfg.evaluation.snapshot_samples, extractors=extractors, skipped=skipped,
        batch_size=cfg.evaluation.batch_size, memorization_percentile=cfg.evaluation.memorization_percentile, progress=progress,
    )


def _dataset_ref(card: dict[str, Any]) -> str | None:
    ds = card.get("dataset")
    if isinstance(ds, dict) and ds.get("name"):
        return f"{ds['name']}@v{ds['version']}" if ds.get("version") else str(ds["name"])
    if isinstance(ds, str) and ds:
        return ds
    return None


def _resolve_dataset(root: Path, ref: str, what: str) -> DatasetVersion:
    try:
        return resolve_dataset(root, ref)
    except (DatasetError, ValueError) as exc:
        raise CommandError(f"{what} {ref!r}: {exc}") from None


def _is_bundled(path: Path) -> bool:
    try:
        path.resolve().relative_to(registry.BUNDLED_ROOT.resolve())
        return True
    except ValueError:
        return False


def fallback_dir(home_root: Path, mv: registry.ModelVersion) -> Path:
    return home_root / "evaluations" / mv.name / f"v{mv.version}"


def evaluation_dirs(home_root: Path, mv: registry.ModelVersion) -> list[Path]:
    """Where a version's evaluation may be, in the order it is written."""
    return [mv.path, fallback_dir(home_root, mv)]


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def write_evaluation(home_root: Path, mv: registry.ModelVersion, results: dict[str, Any], samples: np.ndarray) -> Path:
    """Write evaluation.json and the sample grid; returns the JSON's path (see the module docstring)."""
    payload = (json.dumps(results, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    grid = image_grid(samples[: len(SAMPLE_SEEDS)], columns=4)
    targets = [] if _is_bundled(mv.path) else [mv.path]
    targets.append(fallback_dir(home_root, mv))
    last_error: OSError | None = None
    for folder in targets:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            _write_atomic(folder / EVALUATION_FILE, payload)
            grid.save(folder / SAMPLES_FILE)
            return folder / EVALUATION_FILE
        except OSError as exc:  # a read-only registry volume: fall through to the home folder
            last_error = exc
    raise CommandError(f"cannot write {EVALUATION_FILE} for {mv.ref}: {last_error}")


def read_evaluation(home_root: Path, mv: registry.ModelVersion) -> tuple[dict[str, Any], Path]:
    """The newest evaluation of a version (by ``created_at``), or a CommandError saying how to make one."""
    found: list[tuple[str, dict[str, Any], Path]] = []
    for folder in evaluation_dirs(home_root, mv):
        path = folder / EVALUATION_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CommandError(f"{path} is not valid JSON ({exc}); run `synthpacs evaluate {mv.ref}` again") from None
        if not isinstance(data, dict) or "metrics" not in data:
            raise CommandError(f"{path} is not a synthpacs evaluation; run `synthpacs evaluate {mv.ref}` again")
        found.append((str(data.get("created_at", "")), data, path))
    if not found:
        raise CommandError(f"{mv.ref} has not been evaluated yet: run `synthpacs evaluate {mv.ref} --dataset NAME` first")
    _, data, path = max(found, key=lambda t: t[0])
    return data, path


def _settings(args: argparse.Namespace, cfg: Config, device: torch.device) -> EvaluationSettings:
    try:
        return EvaluationSettings(
            metrics=parse_metrics(args.metrics), n=args.n, seed_start=args.seed_start, psi=args.psi, diversity_pairs=args.diversity_pairs,
            batch_size=cfg.evaluation.batch_size, memorization_percentile=cfg.evaluation.memorization_percentile, device=str(device),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _value(v: Any, fmt: str = "{:.4g}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-" if v is None else str(v)


def results_table(results: dict[str, Any]) -> str:
    """The metrics of one evaluation, one per line, with how each was computed."""
    m = results.get("metrics", {})
    lines = [
        ("FID", _value(m.get("fid")), "Inception pool3, Frechet distance"),
        ("KID", f"{_value(m.get('kid'))} +/- {_value(m.get('kid_std'))}" if "kid" in m else "-", "unbiased MMD^2, cubic kernel"),
        ("Precision", _value(m.get("precision"), "{:.3f}"), "k=3 manifolds, Inception features"),
        ("Recall", _value(m.get("recall"), "{:.3f}"), "k=3 manifolds, Inception features"),
        ("SSIM", _value(m.get("ssim"), "{:.4f}"), "vs nearest reference image, mean"),
        ("PSNR (dB)", _value(m.get("psnr"), "{:.2f}"), "vs nearest reference image, mean"),
        ("Diversity (MS-SSIM)", _value(m.get("diversity"), "{:.4f}"), f"random pairs; reference set: {_value(m.get('diversity_real'), '{:.4f}')}"),
        ("Near-copies", f"{_value(m.get('near_copies'), '{:d}')} ({_value(100 * m['memorization'], '{:.2f}')} %)" if "memorization" in m else "-", "below the training set's 1st percentile NN distance"),
        ("Generation (img/s)", _value(m.get("generation_images_per_s"), "{:.1f}"), results.get("generated", {}).get("device", "")),
    ]
    for name, space in results.get("feature_spaces", {}).items():
        if name != "inception":
            lines.append((f"FD [{name}]", _value(space.get("frechet_distance")), "in-domain feature network"))
            lines.append((f"KID [{name}]", _value(space.get("kid")), ""))
            lines.append((f"P / R [{name}]", f"{_value(space.get('precision'), '{:.3f}')} / {_value(space.get('recall'), '{:.3f}')}", ""))
    w0 = max(len(a) for a, _, _ in lines)
    w1 = max(len(b) for _, b, _ in lines)
    out = [f"{a.ljust(w0)}  {b.rjust(w1)}  {c}".rstrip() for a, b, c in lines]
    by_reason: dict[str, list[str]] = {}
    for metric, why in results.get("skipped", {}).items():
        by_reason.setdefault(why, []).append(metric)
    for why, metrics in by_reason.items():
        out.append(f"{', '.join(metrics)}: {why}")
    return "\n".join(out)


def _run(args: argparse.Namespace) -> int:
    overrides = {
        "evaluation.inception_weights": args.inception_weights,
        "evaluation.feature_network": args.feature_network,
        "evaluation.device": args.device,
        "evaluation.batch_size": args.batch,
    }
    cfg = config_from_args(args, **overrides)
    if cfg.evaluation.batch_size < 1:
        raise CommandError("evaluation.batch_size must be at least 1")
    if args.compare:
        if args.model:
            raise CommandError("give either MODEL or --compare A B, not both")
        return _compare(args, cfg)
    if not args.model:
        raise CommandError("name a model to evaluate (synthpacs evaluate MODEL[:vN] --dataset NAME) or two to compare (--compare A B)")
    return _evaluate(args, cfg)


def _evaluate(args: argparse.Namespace, cfg: Config) -> int:
    home = home_from(cfg)
    reg = registry.Registry.with_bundled(home.models_dir)
    try:
        mv = reg.resolve(args.model)
    except registry.RegistryError as exc:
        raise CommandError(str(exc)) from None
    device = pick_device(cfg.evaluation.device)
    settings = _settings(args, cfg, device)
    train_ref = args.dataset or _dataset_ref(mv.card)
    if not train_ref:
        raise CommandError(f"the model card of {mv.ref} names no training dataset: give --dataset NAME[@vN]")
    training = _resolve_dataset(home.datasets_dir, train_ref, "dataset")
    reference = _resolve_dataset(home.datasets_dir, args.real, "--real dataset") if args.real else training
    card_ds = mv.card.get("dataset") if isinstance(mv.card.get("dataset"), dict) else {}
    if card_ds.get("content_hash") and card_ds["content_hash"] != training.content_hash:
        _stderr(f"note: {training.ref} is not the dataset {mv.ref} was trained on ({_dataset_ref(mv.card)}); memorization is checked against {training.ref}")
    try:
        G, _card = registry.load_generator(mv.path, device=device)
    except registry.RegistryError as exc:
        raise CommandError(str(exc)) from None
    extractors, skipped = feature_extractors(cfg, device, settings.metrics)
    for why in dict.fromkeys(skipped.values()):
        _stderr(f"{', '.join(m for m, w in skipped.items() if w == why)} {why}")
    try:
        real_images = load_images(reference)
        train_images = load_images(training)
    except DatasetError as exc:
        raise CommandError(str(exc)) from None
    inputs = Inputs(
        reference=real_images, training=train_images, reference_key=reference.content_hash,
        extractors=extractors, skipped=skipped, cache=FeatureCache(home.root / "evaluations" / "feature-cache"),
    )
    # Logs share stdout with the output: with --json they stay at debug so the JSON stays parseable.
    emit = log.debug if args.json else log.info
    emit("evaluation_started", model=mv.ref, dataset=training.ref, reference=reference.ref, n=settings.n, metrics=list(settings.metrics), device=str(device))
    started = time.perf_counter()
    try:
        results, images = evaluate_generator(G, inputs, settings, progress=_stderr)
    except (ValueError, FeatureNetworkError) as exc:
        raise CommandError(str(exc)) from None
    results.update(
        {
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "synthpacs_version": __version__,
            "model": {"ref": mv.ref, "name": mv.name, "version": mv.version, "architecture": mv.architecture, "resolution": mv.card.get("resolution")},
            "training_dataset": _describe_dataset(training),
            "reference": {**_describe_dataset(reference), "role": "held-out (--real)" if args.real else "training set (no --real given)"},
            "settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(settings).items()},
            "definitions": DEFINITIONS,
            "wall_time_s": round(time.perf_counter() - started, 2),
        }
    )
    path = write_evaluation(home.root, mv, results, images)
    emit("evaluation_written", model=mv.ref, path=str(path), wall_time_s=results["wall_time_s"])
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        print(f"{mv.ref} on {settings.n} images, reference {reference.ref} ({reference.count} images), training set {training.ref}")
        print(results_table(results))
        print(f"written: {path}")
    return 0


def _describe_dataset(dv: DatasetVersion) -> dict[str, Any]:
    return {"ref": dv.ref, "content_hash": dv.content_hash, "count": dv.count, "resolution": dv.resolution, "dtype": dv.dtype}


def _safe(ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", ref)


def _compare(args: argparse.Namespace, cfg: Config) -> int:
    home = home_from(cfg)
    reg = registry.Registry.with_bundled(home.models_dir)
    versions = []
    for ref in args.compare:
        try:
            versions.append(reg.resolve(ref))
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from None
    if versions[0].path == versions[1].path:
        raise CommandError(f"--compare needs two different model versions; both are {versions[0].ref}")
    evaluations = [read_evaluation(home.root, mv) for mv in versions]
    rows = [summary_row(mv.ref, ev, mv.card) for mv, (ev, _) in zip(versions, evaluations)]
    table = format_table(rows)
    notes = _comparability_notes(versions, [ev for ev, _ in evaluations])
    out = Path(args.out) if args.out else home.root / "reports" / f"compare-{_safe(versions[0].ref)}-vs-{_safe(versions[1].ref)}"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CommandError(f"cannot create {out}: {exc}") from None
    draw_chart(rows).save(out / "comparison.png")
    device = pick_device(cfg.evaluation.device)
    grids = []
    for mv in versions:
        try:
            G, _ = registry.load_generator(mv.path, device=device)
        except registry.RegistryError as exc:
            raise CommandError(str(exc)) from None
        images, _rate = generate_images(G, SAMPLE_SEEDS, 1.0, batch_size=len(SAMPLE_SEEDS))
        grids.append(image_grid(images, columns=4))
    side_by_side(grids, [f"{mv.ref} (seeds 0-15)" for mv in versions]).save(out / "samples.png")
    (out / "comparison.md").write_text(table + "\n" + "".join(f"\n- {n}" for n in notes) + "\n")
    (out / "comparison.json").write_text(json.dumps({"rows": rows, "notes": notes, "evaluations": [str(p) for _, p in evaluations]}, indent=2) + "\n")
    print(table)
    for n in notes:
        print(f"note: {n}")
    print(f"written: {out / 'comparison.png'}, {out / 'samples.png'}, {out / 'comparison.md'}, {out / 'comparison.json'}")
    return 0


def _comparability_notes(versions: list[registry.ModelVersion], evaluations: list[dict[str, Any]]) -> list[str]:
    """Reasons the two rows' distribution metrics may not be comparable."""
    notes = []
    refs = [(ev.get("reference") or {}).get("content_hash") for ev in evaluations]
    if refs[0] and refs[1] and refs[0] != refs[1]:
        notes.append("the two evaluations used different reference datasets: FID, KID, precision and recall are not comparable")
    counts = [(ev.get("generated") or {}).get("count") for ev in evaluations]
    if counts[0] != counts[1]:
        notes.append(f"different numbers of generated images ({counts[0]} vs {counts[1]}): FID is biased by sample size; KID is not")
    for mv, ev in zip(versions, evaluations):
        by_reason: dict[str, list[str]] = {}
        for metric, why in (ev.get("skipped") or {}).items():
            by_reason.setdefault(why, []).append(metric)
        for why, metrics in by_reason.items():
            notes.append(f"{mv.ref}: {', '.join(metrics)} {why}")
    return notes
