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
from models.metrics.calibration import NOT_QUALITY, QUALITY_METRICS
from models.metrics.evaluate import DEFINITIONS, METRICS, TSTR_TASKS, EvaluationSettings, FeatureCache, Inputs, evaluate_generator, generate_images, parse_metrics
from models.metrics.features import FeatureNetworkError, HOGFeatures, InceptionFeatures, TorchScriptFeatures
from models.metrics.radiomics import RadiomicsFeatures
from models.metrics.utility import labels_from_rows
from models.metrics.inception import InceptionWeightsError
from models.metrics.report import card_evaluation, draw_chart, format_table, image_grid, side_by_side, summary_row
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
        help="quality of a model (HOG and radiomic distances, TSTR/TRTR, FID/KID/PR with the weights), memorization; --compare A B",
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
    p.add_argument("--tstr-epochs", type=int, default=30, help="epochs of each TSTR/TRTR classifier (default 30)")
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
    """The feature spaces for the distribution metrics, and why each missing one's metrics are skipped.

    HOG and radiomics need no weights and are always there. No Inception weights: FID/KID/precision-
    recall in Inception space are skipped with the weights message (never another network in their
    place); the key ``inception`` of the returned dict holds that message. A configured feature network
    that cannot be loaded is an error: the user asked for it.
    """
    feature_metrics = [m for m in wanted if m in ("fid", "kid", "precision_recall")]
    if not feature_metrics:
        return [], {}
    extractors: list = [HOGFeatures(), RadiomicsFeatures()]
    skipped: dict[str, str] = {}
    try:
        extractors.append(InceptionFeatures(cfg.evaluation.inception_weights, device=device))
    except InceptionWeightsError as exc:
        skipped["inception"] = f"skipped: {exc}"
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
    for space, why in skipped.items():
        log.warning("snapshot_feature_space_skipped", space=space, reason=why)
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
            tstr_epochs=args.tstr_epochs,
            batch_size=cfg.evaluation.batch_size, memorization_percentile=cfg.evaluation.memorization_percentile, device=str(device),
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def _value(v: Any, fmt: str = "{:.4g}") -> str:
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-" if v is None else str(v)


def results_table(results: dict[str, Any]) -> str:
    """The metrics of one evaluation: quality figures first (with the reference set named), then what the
    other numbers measure, memorization and speed."""
    m = results.get("metrics", {})
    ref = (results.get("reference") or {}).get("ref", "the reference set")
    rows: list[tuple[str, str, str]] = []

    def section(title: str) -> None:
        rows.append(("", "", ""))
        rows.append((title, "", ""))

    def pr(space: str) -> str:
        return f"{_value(m.get(f'{space}_precision'), '{:.3f}')} / {_value(m.get(f'{space}_recall'), '{:.3f}')}"

    section(f"Quality (rank the calibration controls correctly; vs {ref})")
    for key, (label, better, space) in QUALITY_METRICS.items():
        value = _value(m.get(key))
        if key.endswith("_kid") and key in m:
            value = f"{_value(m[key])} +/- {_value(m.get(key + '_std'))}"
        how = f"{space}, {better} is better"
        if key == "tstr_trtr_ratio" and key in m:
            how += f" (TSTR {_value(m.get('tstr_balanced_accuracy'), '{:.3f}')} / TRTR {_value(m.get('trtr_balanced_accuracy'), '{:.3f}')} balanced accuracy on {ref})"
        rows.append((f"{label} [{space}]", value, how))
    for task in TSTR_TASKS[1:]:
        if f"{task}_tstr_trtr_ratio" in m:
            rows.append((f"TSTR / TRTR [{task} classifier]", _value(m[f"{task}_tstr_trtr_ratio"]),
                         f"TSTR {_value(m.get(f'{task}_tstr_balanced_accuracy'), '{:.3f}')} / TRTR {_value(m.get(f'{task}_trtr_balanced_accuracy'), '{:.3f}')} balanced accuracy"))
    for task, rates in (results.get("recognition_rates") or {}).items():
        what = task.replace("_", "-")
        rows.append((f"Recognized as requested [{what} classifier]", f"min {_value(min(rates.values()), '{:.3f}')}",
                     "per requested class, by the classifier trained on real images: " + ", ".join(f"{k} {v:.2f}" for k, v in rates.items())))
    if any(k in m for k in ("fid", "kid", "precision", "recall")):
        rows.append(("FID [Inception]", _value(m.get("fid")), "Inception pool3, the literature's standard (not calibrated here)"))
        rows.append(("KID [Inception]", f"{_value(m.get('kid'))} +/- {_value(m.get('kid_std'))}" if "kid" in m else "-", "unbiased MMD^2, cubic kernel"))
        rows.append(("Precision / Recall [Inception]", f"{_value(m.get('precision'), '{:.3f}')} / {_value(m.get('recall'), '{:.3f}')}", "k=3 manifolds"))

    section("Also measured (not quality rankings)")
    rows.append(("FRD [radiomics]", _value(m.get("radiomics_frd")), NOT_QUALITY["radiomics_frd"]))
    rows.append(("KID [radiomics]", _value(m.get("radiomics_kid")), "texture distance, as FRD"))
    rows.append(("Precision / Recall [radiomics]", pr("radiomics"), "fidelity / coverage; fail the controls"))
    rows.append(("Precision / Recall [HOG]", pr("hog"), "fidelity / coverage; fail the controls"))
    rows.append(("SSIM", _value(m.get("ssim"), "{:.4f}"), "similarity to nearest reference, not a quality ranking"))
    rows.append(("PSNR (dB)", _value(m.get("psnr"), "{:.2f}"), "similarity to nearest reference, not a quality ranking"))
    rows.append(("Diversity (MS-SSIM)", _value(m.get("diversity"), "{:.4f}"), f"mode-collapse indicator only; reference set: {_value(m.get('diversity_real'), '{:.4f}')}"))
    for name, space in results.get("feature_spaces", {}).items():
        if name not in ("inception", "hog", "radiomics"):
            rows.append((f"FD [{name}]", _value(space.get("frechet_distance")), "in-domain feature network (not calibrated here)"))
            rows.append((f"KID [{name}]", _value(space.get("kid")), ""))
            rows.append((f"P / R [{name}]", f"{_value(space.get('precision'), '{:.3f}')} / {_value(space.get('recall'), '{:.3f}')}", ""))

    section("Memorization and speed")
    training = (results.get("training_dataset") or {}).get("ref", "the training set")
    rows.append(("Near-copies", f"{_value(m.get('near_copies'), '{:d}')} ({_value(100 * m['memorization'], '{:.2f}')} %)" if "memorization" in m else "-",
                 f"of {training}, below its 1st percentile NN distance (mirrors included)"))
    rows.append(("Generation (img/s)", _value(m.get("generation_images_per_s"), "{:.1f}"), results.get("generated", {}).get("device", "")))
    w0 = max(len(a) for a, b, _ in rows if b or not a)
    w1 = max(len(b) for _, b, _ in rows)
    out = []
    for a, b, c in rows[1:]:
        out.append(a if not b and not c else f"  {a.ljust(w0)}  {b.rjust(w1)}  {c}".rstrip())
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
    if card_ds.get("content_hash") and training.content_hash not in (card_ds["content_hash"], card_ds.get("content_hash_v1")):
        _stderr(f"note: {training.ref} is not the dataset {mv.ref} was trained on ({_dataset_ref(mv.card)}): {dataset_difference(card_ds, training)}; "
                f"memorization is checked against {training.ref}")
    try:
        G, _card = registry.load_generator(mv.path, device=device)
    except registry.RegistryError as exc:
        raise CommandError(str(exc)) from None
    extractors, skipped = feature_extractors(cfg, device, settings.metrics)
    if "inception" in skipped:
        _stderr(f"FID, KID and precision/recall in Inception space {skipped['inception']} (HOG and radiomics need no weights)")
    try:
        real_images = load_images(reference)
        train_images = load_images(training)
    except DatasetError as exc:
        raise CommandError(str(exc)) from None
    held_out = bool(args.real) and reference.content_hash != training.content_hash
    inputs = Inputs(
        reference=real_images, training=train_images, reference_key=reference.content_hash,
        extractors=extractors, skipped=skipped, cache=FeatureCache(home.root / "evaluations" / "feature-cache"),
        training_labels=_labels(training), reference_labels=_labels(reference), reference_held_out=held_out,
        training_rows=_rows(training), card=mv.card,
    )
    # Logs share stdout with the output: with --json they stay at debug so the JSON stays parseable.
    emit = log.debug if args.json else log.info
    emit("evaluation_started", model=mv.ref, dataset=training.ref, reference=reference.ref, n=settings.n, metrics=list(settings.metrics), device=str(device))
    started = time.perf_counter()
    try:
        results, images = evaluate_generator(G, inputs, settings, progress=_stderr)
    except (ValueError, FeatureNetworkError) as exc:  # ConditionError (a ValueError) too: no conditions to draw
        raise CommandError(str(exc)) from None
    finally:
        for extractor in extractors:
            getattr(extractor, "close", lambda: None)()
    if not measured(results):
        reasons = "; ".join(f"{m}: {why}" for m, why in results.get("skipped", {}).items()) or "no metric was asked for"
        kept = ""
        try:
            _, earlier = read_evaluation(home.root, mv)
            kept = f"; the earlier evaluation {earlier} is kept"
        except CommandError:
            pass
        raise CommandError(f"nothing was measured for {mv.ref} ({reasons}){kept}")
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
    # What a model card's "evaluation" should say (quality figures first), ready for `models export --card`.
    results["card_section"] = card_evaluation(results)
    path = write_evaluation(home.root, mv, results, images)
    emit("evaluation_written", model=mv.ref, path=str(path), wall_time_s=results["wall_time_s"])
    if args.json:
        print(json.dumps(results, indent=2, sort_keys=True))
    else:
        print(f"{mv.ref} on {settings.n} images, reference {reference.ref} ({reference.count} images), training set {training.ref}")
        print(results_table(results))
        if results.get("conditions"):
            cond = results["conditions"]
            print(f"conditions ({', '.join(cond['fields'])}): drawn per seed with the frequencies of {cond['source']}; generated: "
                  + ", ".join(f"{k} {v}" for k, v in cond["generated_per_condition"].items()))
        print(f"written: {path}")
    return 0


def dataset_difference(card_ds: dict[str, Any], dv: DatasetVersion) -> str:
    """What differs between the dataset a model card names and a dataset version, in words."""
    diffs = []
    for key, label in (("count", "images"), ("resolution", "px")):
        if card_ds.get(key) is not None and card_ds[key] != getattr(dv, key):
            diffs.append(f"{card_ds[key]} {label} in the card, {getattr(dv, key)} here")
    hashes = f"content hash {str(card_ds.get('content_hash'))[:12]} in the card, {dv.content_hash[:12]} here"
    if diffs:
        return "; ".join(diffs + [hashes])
    method = dv.info.get("content_hash_method")
    older = ("" if method else
             " (this version was built before content-ordered hashing: rebuild it with `synthpacs dataset build` to compare)")
    return (f"the same number of images at the same resolution, but other pixels or labels ({hashes}){older}; "
            "cards written before content-ordered dataset hashes recorded a hash that depended on the store's UIDs")


def measured(results: dict[str, Any]) -> bool:
    """Whether an evaluation holds at least one metric (generation speed alone is not an evaluation)."""
    return any(k != "generation_images_per_s" for k in results.get("metrics", {}))


def _rows(dv: DatasetVersion) -> list[dict[str, Any]] | None:
    """The manifest rows (a conditional model draws its conditions with their label frequencies)."""
    try:
        return list(dv.manifest())
    except (OSError, ValueError):
        return None


def _labels(dv: DatasetVersion) -> dict[str, list[str]]:
    """Manifest labels per TSTR task (body part, view), only for tasks where some image has one."""
    try:
        rows = list(dv.manifest())
    except (OSError, ValueError):
        return {}
    out = {}
    for task in TSTR_TASKS:
        labels = labels_from_rows(rows, task)
        if len(labels) == dv.count and any(labels):
            out[task] = labels
    return out


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
        notes.append("the two evaluations used different reference datasets: the distances (HOG, radiomics, FID), KID, precision, recall and TSTR are not comparable")
    counts = [(ev.get("generated") or {}).get("count") for ev in evaluations]
    if counts[0] != counts[1]:
        notes.append(f"different numbers of generated images ({counts[0]} vs {counts[1]}): the Frechet distances (FID, HOG, FRD) are biased by sample size; KID is not")
    for mv, ev in zip(versions, evaluations):
        by_reason: dict[str, list[str]] = {}
        for metric, why in (ev.get("skipped") or {}).items():
            by_reason.setdefault(why, []).append(metric)
        for why, metrics in by_reason.items():
            notes.append(f"{mv.ref}: {', '.join(metrics)} {why}")
    return notes
