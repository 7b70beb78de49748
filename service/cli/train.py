"""``synthpacs train``: train a generator on a dataset version, or resume a run.

The same command under ``torchrun --nproc_per_node=K`` trains with DDP; ``--batch`` is then the global
batch. The work is done by :mod:`models.train`; this module turns flags and configuration into
:class:`models.train.TrainOptions` and errors into messages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from service.cli.common import CommandError, add_command, config_from_args, home_from
from service.logs import get_logger


def _number_list(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers, e.g. 50,100,150,200") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: give positive numbers, e.g. 50,100,150,200")
    return values


def _hparam(text: str) -> tuple[str, Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. ema_beta=0.999)")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw  # a bare word is a string
    return key.strip(), value


def register(subparsers: argparse._SubParsersAction) -> None:
    from models.architectures import trainable

    p = add_command(
        subparsers,
        "train",
        help="train a GAN on a dataset version (DCGAN, StyleGAN3); resume a run",
        description=(
            "Train a generator on a dataset version into <home>/runs/<run-id>/ (checkpoints, sample grids, metrics.jsonl). "
            "Under `torchrun --nproc_per_node=K` it trains with DDP and --batch is the global batch. "
            "Stop with Ctrl-C or SIGTERM: the current minibatch finishes and a checkpoint is written; continue with --resume RUN."
        ),
    )
    what = p.add_argument_group("what to train")
    what.add_argument("--arch", choices=trainable(), help="architecture (default dcgan)")
    what.add_argument("--dataset", metavar="NAME[@vN]", help="dataset version (latest when no version is given)")
    what.add_argument("--resolution", type=int, help="image size; must match the dataset's (default: the dataset's)")
    what.add_argument("--set", dest="hparams", metavar="KEY=VALUE", type=_hparam, action="append", default=[], help="architecture hyper-parameter, JSON value (e.g. --set ema_beta=0.999 --set lr=0.0001); repeatable")
    what.add_argument(
        "--condition", dest="conditions", metavar="FIELD", action="append", choices=("body_part", "view", "finding"),
        help="condition the generator on this manifest label (body_part, view, finding); repeatable. Images without the label are left out",
    )
    what.add_argument(
        "--diffaugment", metavar="POLICY", nargs="?", const="color,translation,cutout",
        help="DiffAugment of every image D sees (Zhao et al. 2020): a comma list of color, translation, cutout (default all three)",
    )
    length = p.add_argument_group("how long").add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help="training length in passes over the dataset")
    length.add_argument("--kimg", type=float, help="training length in thousands of real images shown")
    how = p.add_argument_group("how")
    how.add_argument("--batch", type=int, help="global minibatch over all processes (default: the architecture's, 64 for DCGAN)")
    how.add_argument("--seed", type=int, help="random seed (train.seed)")
    how.add_argument("--device", help="auto, cpu, cuda or cuda:N (train.device)")
    how.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None, help="mixed precision on CUDA (train.amp)")
    how.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None, help="channels_last memory format (default: on CUDA)")
    how.add_argument("--deterministic", action="store_true", default=None, help="deterministic CUDA kernels (slower)")
    how.add_argument("--xflip", action="store_true", default=None, help="also train on mirrored images")
    how.add_argument("--workers", type=int, help="DataLoader worker processes (default 0)")
    out = p.add_argument_group("output")
    out.add_argument("--run-id", dest="run_id", help="name of the run folder (default: time, architecture, dataset, resolution)")
    out.add_argument("--snapshots", type=_number_list, metavar="N,N,...", help="sample grids (and metrics) at these epochs or kimg (DCGAN default: every 50 epochs)")
    out.add_argument("--checkpoint-every", dest="checkpoint_every", type=float, metavar="N", help="checkpoint every N epochs or kimg (default: 1/20 of the length)")
    out.add_argument("--keep-checkpoints", dest="keep_checkpoints", type=int, metavar="K", help="newest checkpoints kept besides snapshot ones (default 3; 0: all)")
    out.add_argument("--grid", dest="grid_size", type=int, metavar="N", help="images per sample grid, seeds 0..N-1 (default 64 at 64 px, 16 at 256 px)")
    out.add_argument("--log-every", dest="log_every", type=int, metavar="N", help="minibatches per metrics.jsonl row (default: one epoch, or about 4 kimg)")
    out.add_argument("--metrics", metavar="LIST", help="metrics at snapshots, as `synthpacs evaluate --metrics` (evaluation.snapshot_metrics)")
    out.add_argument("--metrics-samples", dest="metrics_samples", type=int, metavar="N", help="generated images per snapshot metric (evaluation.snapshot_samples)")
    out.add_argument("--quiet", action="store_true", help="no progress line on stderr")
    res = p.add_argument_group("resume")
    res.add_argument("--resume", metavar="RUN", help="continue this run (id under <home>/runs, or its folder) from its newest checkpoint")
    res.add_argument("--from-checkpoint", dest="from_checkpoint", metavar="FILE", help="with --resume: continue from this checkpoint instead of the newest")
    res.add_argument(
        "--init-from", dest="init_from", metavar="CHECKPOINT|RUN",
        help="start a new run from the weights of this checkpoint file, or of a run's newest checkpoint (fine-tuning; "
        "a conditional DCGAN may add condition fields): same architecture and size, fresh optimizers, iteration 0",
    )
    p.set_defaults(func=_run)


def _init_checkpoint(ref: str, runs_dir: Path) -> str:
    """``--init-from``: a checkpoint file as given, or the newest checkpoint of a run (id or folder)."""
    from models.train import checkpoint as ckpt
    from models.train.rundir import RunError, resolve_run

    if Path(ref).is_file():
        return str(Path(ref).resolve())
    try:
        run = resolve_run(runs_dir, ref)
    except RunError as exc:
        raise CommandError(f"--init-from {ref}: not a checkpoint file, and {exc}") from None
    newest = ckpt.latest_checkpoint(run / "checkpoints")
    if newest is None:
        raise CommandError(f"--init-from {ref}: run {run.name} has no checkpoint yet")
    return str(newest.path)


def _run(args: argparse.Namespace) -> int:
    overrides = {"train.seed": args.seed, "train.device": args.device, "train.amp": args.amp}
    if args.metrics is not None:
        overrides["evaluation.snapshot_metrics"] = args.metrics
    if args.metrics_samples is not None:
        overrides["evaluation.snapshot_samples"] = args.metrics_samples
    cfg = config_from_args(args, **overrides)
    home = home_from(cfg)
    log = get_logger("train")
    from models.datasets import DatasetError
    from models.train import checkpoint as ckpt
    from models.train.recipe import RecipeError
    from models.train.rundir import RunError
    from models.train.runner import TrainError, TrainOptions, resume, train

    rank = int(os.environ.get("RANK", "0"))

    def on_event(event: str, **fields: Any) -> None:
        if rank == 0:
            log.info(event, **fields)

    metrics_fn = _snapshot_hook(cfg)
    common = dict(metrics_fn=metrics_fn, progress_stream=open(os.devnull, "w") if args.quiet else None, on_event=on_event, argv=sys.argv)
    try:
        if args.resume:
            if args.arch or args.dataset or args.resolution or args.batch or args.hparams or args.run_id or args.xflip or args.conditions or args.diffaugment or args.init_from:
                raise CommandError("--resume continues a run as it was set up; only --epochs/--kimg, --device, --amp, --workers and output options may be given")
            result = resume(
                args.resume, home.datasets_dir, home.runs_dir, epochs=args.epochs, kimg=args.kimg, from_checkpoint=args.from_checkpoint,
                overrides={
                    "device": args.device, "amp": args.amp, "workers": args.workers, "keep_checkpoints": args.keep_checkpoints, "log_every": args.log_every,
                    "snapshots": args.snapshots, "checkpoint_every": args.checkpoint_every, "grid_size": args.grid_size, "deterministic": args.deterministic,
                },
                **common,
            )
        else:
            if not args.dataset:
                raise CommandError("--dataset NAME[@vN] is required (or --resume RUN); `synthpacs dataset ls` lists them")
            if args.from_checkpoint:
                raise CommandError("--from-checkpoint only goes with --resume RUN")
            opts = TrainOptions(
                arch=args.arch or "dcgan",
                dataset=args.dataset,
                resolution=args.resolution,
                batch=args.batch,
                epochs=args.epochs,
                kimg=args.kimg,
                seed=cfg.train.seed,
                device=cfg.train.device,
                amp=cfg.train.amp,
                channels_last=args.channels_last,
                xflip=bool(args.xflip),
                workers=args.workers or 0,
                snapshots=args.snapshots,
                checkpoint_every=args.checkpoint_every,
                keep_checkpoints=3 if args.keep_checkpoints is None else args.keep_checkpoints,
                grid_size=args.grid_size,
                log_every=args.log_every,
                deterministic=bool(args.deterministic),
                hparams={**dict(args.hparams), **({"diffaugment": args.diffaugment} if args.diffaugment else {})},
                run_id=args.run_id,
                conditions=args.conditions,
                init_from=_init_checkpoint(args.init_from, home.runs_dir) if args.init_from else None,
            )
            result = train(opts, home.datasets_dir, home.runs_dir, **common)
    except (TrainError, RecipeError, RunError, ckpt.CheckpointError, DatasetError) as exc:
        raise CommandError(str(exc)) from None
    if rank == 0:
        state = "stopped" if result.interrupted else "finished"
        print(f"{state}: run {result.run_dir.name} at iteration {result.iteration} ({result.epoch} epochs, {result.cur_nimg / 1000:g} kimg); "
              f"checkpoint {result.checkpoint}; samples in {result.run_dir / 'samples'}", file=sys.stderr)
        if result.interrupted:
            print(f"continue with: synthpacs train --resume {result.run_dir.name}", file=sys.stderr)
    return 0


def _snapshot_hook(cfg: Any) -> Any:
    """The evaluation engineer's snapshot metrics (evaluation.snapshot_metrics), or None."""
    if not cfg.evaluation.snapshot_metrics:
        return None
    try:
        from service.cli.evaluate import snapshot_hook
    except ImportError as exc:
        raise CommandError(f"snapshot metrics are configured but the evaluation module is not available ({exc})") from None
    return snapshot_hook(cfg)
