"""The training runner: one loop for every architecture, driven by a :class:`~models.train.recipe.Recipe`.

``train(options, datasets_root, runs_root)`` starts a run; ``resume(run, ...)`` continues one from its
newest checkpoint. See :mod:`models.train` for what the runner owns and what a recipe does.

Exactness of resume. Everything that decides the next minibatch is in the checkpoint: network and
optimizer state, gradient scalers, the recipe's own state, the RNG states of python, numpy and torch
(CPU and CUDA) of every process, the shared latent generator, and the position in the data order (epoch
and minibatch within it; the order itself is a function of the seed and the epoch). The DataLoader gets
its own generator so creating an iterator never draws from the global one, and snapshots (grids and
metrics) run between a save and a restore of the RNG states, so taking a snapshot or not leaves the run
unchanged. On the CPU a resumed run is therefore bit-identical to an uninterrupted one (tested); on GPUs
cuDNN's algorithm choice makes runs close but not bitwise equal unless ``deterministic`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import resource
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from models import registry
from models.conditions import ConditionError, ConditionSpace, label as condition_label, vocabulary
from models.datasets import DatasetError, DatasetVersion, ImageDataset, resolve_dataset
from models.device import DeviceError, pick_device
from models.hardware import cpu_name
from models.train import checkpoint as ckpt
from models.train import distributed as D
from models.train.grids import grid_shape, sample_images, save_grid, save_progression
from models.train.progress import Progress
from models.train.recipe import UNITS, Networks, Recipe, RecipeError, StepContext, make_recipe
from models.train.rundir import RunDir, new_run_id, resolve_run
from models.train.warm_start import WarmStartError, check_compatible, warm_start


class TrainError(Exception):
    """Training cannot start or continue as asked; the message says what to change."""


@dataclass
class TrainOptions:
    """What a run trains and how. Stored in ``run.json``; ``resume`` rebuilds it from there."""

    arch: str = "dcgan"
    dataset: str = ""  # NAME, NAME@vN, or a dataset version folder
    resolution: int | None = None  # must match the dataset's; None: the dataset's
    batch: int | None = None  # global minibatch over all processes; None: the recipe's default
    epochs: int | None = None  # training length: exactly one of epochs and kimg
    kimg: float | None = None
    seed: int = 0
    device: str = "auto"  # auto, cpu, cuda, cuda:N
    amp: bool = True  # mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling)
    channels_last: bool | None = None  # None: on CUDA only
    xflip: bool = False  # add mirrored images (models.datasets.ImageDataset)
    workers: int = 0  # DataLoader worker processes
    snapshots: list[float] | None = None  # grids (and metrics) at these points, in the length's unit
    checkpoint_every: float | None = None  # in the length's unit; None: 1/20 of the length
    keep_checkpoints: int = 3  # newest checkpoints kept, besides those at snapshots; 0 keeps all
    grid_size: int | None = None  # images per sample grid (seeds 0..n-1); None: by resolution
    log_every: int | None = None  # minibatches per metrics.jsonl row; None: one epoch, or about 4 kimg
    deterministic: bool = False  # deterministic CUDA kernels (slower); the CPU is deterministic anyway
    hparams: dict[str, Any] = field(default_factory=dict)  # the recipe's hyper-parameters
    run_id: str | None = None
    conditions: list[str] | None = None  # manifest fields to condition on (body_part, view, finding)
    init_from: str | None = None  # a checkpoint whose G, D (and G_ema) start this run (models.train.warm_start)

    @property
    def unit(self) -> str:
        return "kimg" if self.kimg is not None else "epoch"

    @property
    def length(self) -> float:
        return float(self.kimg if self.kimg is not None else self.epochs or 0)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "TrainOptions":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class SnapshotInfo:
    """What a metrics hook is told about the snapshot it measures."""

    run_dir: Path
    arch: str
    unit: str
    value: float  # epochs done or kimg
    iteration: int
    cur_nimg: int
    dataset: DatasetVersion
    device: torch.device


# A metrics hook: called on rank 0 at every snapshot with the inference generator (eval mode, on the
# training device) and returns JSON-able numbers, e.g. {"fid": 41.2}. They go into metrics.jsonl and the
# exported model card.
MetricsFn = Callable[[nn.Module, SnapshotInfo], Mapping[str, Any]]


@dataclass(frozen=True)
class TrainResult:
    run_dir: Path
    iteration: int
    cur_nimg: int
    epoch: int
    checkpoint: Path | None
    wall_time_s: float
    interrupted: bool


def train(options: TrainOptions, datasets_root: Path, runs_root: Path, metrics_fn: MetricsFn | None = None, **kwargs: Any) -> TrainResult:
    """Start a new run under ``runs_root``; returns when it is done (or interrupted by SIGTERM/SIGINT)."""
    return Trainer(options, Path(datasets_root), Path(runs_root), metrics_fn=metrics_fn, **kwargs).run()


def resume(
    run: str | os.PathLike[str],
    datasets_root: Path,
    runs_root: Path,
    epochs: int | None = None,
    kimg: float | None = None,
    from_checkpoint: Path | None = None,
    metrics_fn: MetricsFn | None = None,
    overrides: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> TrainResult:
    """Continue ``run`` (an id under ``runs_root`` or a folder) from its newest checkpoint.

    ``epochs``/``kimg`` may extend the length (in the run's unit). ``overrides`` may change settings that
    do not alter what is trained: device, amp, workers, keep_checkpoints, log_every, snapshots,
    checkpoint_every, grid_size.
    """
    path = resolve_run(Path(runs_root), run)
    info = RunDir(path).read_info()
    opts = TrainOptions.from_json(info["options"])
    if epochs is not None:
        if opts.unit != "epoch":
            raise TrainError(f"run {path.name} counts in kimg; extend it with --kimg, not --epochs")
        opts.epochs = int(epochs)
    if kimg is not None:
        if opts.unit != "kimg":
            raise TrainError(f"run {path.name} counts in epochs; extend it with --epochs, not --kimg")
        opts.kimg = float(kimg)
    allowed = {"device", "amp", "workers", "keep_checkpoints", "log_every", "snapshots", "checkpoint_every", "grid_size", "deterministic"}
    for k, v in (overrides or {}).items():
        if v is None:
            continue
        if k not in allowed:
            raise TrainError(f"{k} cannot change when a run is resumed (it would change what is trained); start a new run")
        setattr(opts, k, v)
    return Trainer(opts, Path(datasets_root), Path(runs_root), resume_dir=path, from_checkpoint=from_checkpoint, metrics_fn=metrics_fn, **kwargs).run()


def hardware(device: torch.device, world_size: int) -> str:
    """One line naming what trained: GPU model and count, or CPU model and cores."""
    if device.type == "cuda":
        return f"{world_size} x {torch.cuda.get_device_name(device)}"
    cpu = cpu_name()
    procs = f"{world_size} processes on " if world_size > 1 else ""
    return f"CPU: {procs}{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state(device: torch.device) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Mapping[str, Any], device: torch.device) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((str(n[0]), n[1].numpy().astype(np.uint32), int(n[2]), int(n[3]), float(n[4])))
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def _snapshot_label(unit: str, value: float) -> tuple[str, str]:
    """(file stem, caption) for a snapshot at ``value`` epochs or kimg."""
    if unit == "epoch":
        return f"epoch-{int(round(value)):05d}", f"epoch {int(round(value))}"
    return f"kimg-{value:010.3f}", f"kimg {value:g}"


class Trainer:
    def __init__(
        self,
        options: TrainOptions,
        datasets_root: Path,
        runs_root: Path,
        resume_dir: Path | None = None,
        from_checkpoint: Path | None = None,
        metrics_fn: MetricsFn | None = None,
        progress_stream: Any = None,
        on_event: Callable[..., None] | None = None,
        argv: list[str] | None = None,
    ):
        self.opts = options
        self.datasets_root = datasets_root
        self.runs_root = runs_root
        self.resume_dir = resume_dir
        self.from_checkpoint = Path(from_checkpoint) if from_checkpoint else None
        self.metrics_fn = metrics_fn
        self.progress_stream = progress_stream
        self.on_event = on_event or (lambda event, **kw: None)
        self.argv = argv
        self._stop = False

    # -- set-up: everything that can be wrong is found here, before a run folder is made -------------

    def _validate(self) -> None:
        o = self.opts
        if (o.epochs is None) == (o.kimg is None):
            raise TrainError("give the training length as exactly one of --epochs N or --kimg N")
        if o.epochs is not None and (int(o.epochs) != o.epochs or o.epochs < 1):
            raise TrainError(f"--epochs must be a whole number of at least 1, not {o.epochs}")
        if o.kimg is not None and not o.kimg > 0:
            raise TrainError(f"--kimg must be positive, not {o.kimg}")
        if o.batch is not None and o.batch < 1:
            raise TrainError(f"--batch must be at least 1, not {o.batch}")
        if o.workers < 0 or o.keep_checkpoints < 0:
            raise TrainError("--workers and --keep-checkpoints cannot be negative")
        if o.grid_size is not None and o.grid_size < 1:
            raise TrainError("--grid must be at least 1")
        if o.log_every is not None and o.log_every < 1:
            raise TrainError("--log-every must be at least 1")
        if o.checkpoint_every is not None and not o.checkpoint_every > 0:
            raise TrainError("--checkpoint-every must be positive")
        if o.snapshots is not None and any(not s > 0 for s in o.snapshots):
            raise TrainError("snapshot points must be positive")
        if not 0 <= o.seed < 2**31:
            raise TrainError("--seed must be in 0..2**31-1")
        assert o.unit in UNITS

    def _setup(self) -> None:
        o = self.opts
        self._validate()
        self.dist = D.env_info()
        try:
            self.device = pick_device(o.device, local_rank=self.dist.local_rank)
        except DeviceError as exc:
            raise TrainError(str(exc)) from None
        # The recipe checks the resolution before any data is read.
        if o.resolution is not None:
            self.recipe = self._make_recipe(o.resolution)
        try:
            self.dataset_version = resolve_dataset(self.datasets_root, o.dataset)
            space = self._condition_space()
            self.dataset = ImageDataset(self.dataset_version, xflip=o.xflip, channels=1, conditions=space)
        except (DatasetError, ValueError) as exc:
            raise TrainError(str(exc)) from None
        if space is not None and o.resolution is not None:
            self.recipe = self._make_recipe(o.resolution)  # again, now with the conditions
        res = self.dataset_version.resolution
        if o.resolution is None:
            o.resolution = res
            self.recipe = self._make_recipe(res)
        elif o.resolution != res:
            raise TrainError(
                f"dataset {self.dataset_version.ref} holds {res} px images, but --resolution is {o.resolution}; "
                f"build a {o.resolution} px version (synthpacs dataset build ... --resolution {o.resolution}) or train at {res}"
            )
        if o.batch is None:
            o.batch = self.recipe.default_batch
        world = self.dist.world_size
        if o.batch % world:
            raise TrainError(f"--batch {o.batch} must be a multiple of the number of processes ({world})")
        self.batch_gpu = o.batch // world
        n = len(self.dataset)
        if n // world < self.batch_gpu:
            raise TrainError(
                f"dataset {self.dataset_version.ref} has {n} training images{' (with mirrors)' if o.xflip else ''}; "
                f"a batch of {o.batch} needs at least {o.batch}: lower --batch, add --xflip, or use a larger dataset"
            )
        self.steps_per_epoch = (n // world) // self.batch_gpu
        # Settings left to their defaults stay None in run.json, so a run extended on resume gets the
        # defaults for its new length.
        points = o.snapshots if o.snapshots is not None else self.recipe.default_snapshots(o.unit, o.length)
        self.snapshot_points = sorted({float(s) for s in points if s <= o.length} | {o.length})
        self.grid_size = o.grid_size or (64 if res <= 64 else 36 if res <= 128 else 16)
        self.log_every = o.log_every or (self.steps_per_epoch if o.unit == "epoch" else max(1, round(4000 / o.batch)))
        self.checkpoint_every = o.checkpoint_every or (max(1.0, float(math.ceil(o.length / 20))) if o.unit == "epoch" else max(o.length / 20, o.batch / 1000))

    def _condition_space(self) -> ConditionSpace | None:
        """The conditions of a conditional run, from the dataset's manifest on a new run.

        The values found are written into the recipe's hyper-parameters (``conditions``), so a resumed
        run and its exported card use the same values in the same order whatever the dataset holds later.
        """
        o = self.opts
        self.condition_counts: dict[str, Any] = {}
        if not o.conditions:
            if o.hparams.get("conditions"):
                raise TrainError("conditions are chosen with --condition FIELD, not --set conditions=...")
            return None
        fields = list(dict.fromkeys(o.conditions))
        try:
            found, counts, left_out = vocabulary(self.dataset_version.manifest(), fields)
            space = ConditionSpace.from_json(o.hparams["conditions"]) if o.hparams.get("conditions") else found
        except ConditionError as exc:
            raise TrainError(f"dataset {self.dataset_version.ref}: {exc}") from None
        if list(space.names) != fields:
            raise TrainError(f"the run's conditions are {', '.join(space.names)}, not {', '.join(fields)}")
        o.hparams["conditions"] = space.to_json()
        combos: dict[str, int] = {}
        for row in self.dataset_version.manifest():
            vals = [str(row.get(f) or "").strip() for f in fields]
            if all(vals):
                key = " ".join(vals)
                combos[key] = combos.get(key, 0) + 1
        self.condition_counts = {"fields": fields, "images_per_value": counts, "images_per_combination": dict(sorted(combos.items())), "images_left_out": left_out}
        return space

    def _make_recipe(self, resolution: int) -> Recipe:
        try:
            return make_recipe(self.opts.arch, resolution, 1, **self.opts.hparams)
        except RecipeError as exc:
            raise TrainError(str(exc)) from None

    def _build(self) -> None:
        o = self.opts
        dev = self.device
        _seed_all(o.seed)  # the same initial weights in every process
        nets = self.recipe.build()
        if self.dist.enabled:
            nets = Networks(*(D.convert_batchnorm(m, dev) if m is not None else None for m in (nets.G, nets.D, nets.G_ema)))
        self.channels_last = o.channels_last if o.channels_last is not None else dev.type == "cuda"
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        for _name, m in nets.items():
            m.to(dev, memory_format=fmt)
        nets.G.train()
        nets.D.train()
        if nets.G_ema is not None:
            nets.G_ema.eval().requires_grad_(False)
        self.nets = nets
        self.optimizers = self.recipe.make_optimizers(nets)
        self.amp_dtype: torch.dtype | None = None
        if dev.type == "cuda" and o.amp and self.recipe.supports_amp:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        use_scaler = self.amp_dtype == torch.float16
        self.scalers = {name: torch.amp.GradScaler("cuda", enabled=use_scaler) for name in self.optimizers}
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = not o.deterministic
            torch.backends.cuda.matmul.allow_tf32 = not o.deterministic
            torch.backends.cudnn.allow_tf32 = not o.deterministic
            if o.deterministic:
                os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
                torch.use_deterministic_algorithms(True)
        self.noise = torch.Generator().manual_seed(o.seed * 2 + 1)  # the latents every process shares
        # Per-process randomness (augmentation, dropout) after initialization.
        _seed_all(o.seed * 1_000_003 + 7919 * (self.dist.rank + 1))
        for _name, m in nets.items():
            D.broadcast_module(m)

    def _make_loader(self) -> None:
        self.sampler = D.ResumableSampler(self.dataset, self.dist.world_size, self.dist.rank, seed=self.opts.seed)
        self.loader = DataLoader(
            self.dataset,
            batch_size=self.batch_gpu,
            sampler=self.sampler,
            num_workers=self.opts.workers,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
            # Its own generator: creating an iterator then draws nothing from torch's global one.
            generator=torch.Generator().manual_seed(self.opts.seed),
            persistent_workers=False,
        )

    # -- the step context ----------------------------------------------------------------------------

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _backward(self, loss: torch.Tensor, name: str) -> None:
        self.scalers[name].scale(loss).backward()

    def _opt_step(self, name: str) -> bool:
        opt, scaler = self.optimizers[name], self.scalers[name]
        params = [p for g in opt.param_groups for p in g["params"]]
        D.average_gradients(params, self.dist.world_size)
        if scaler.is_enabled():
            before = scaler.get_scale()
            scaler.step(opt)
            scaler.update()
            stepped = scaler.get_scale() >= before
        else:
            opt.step()
            stepped = True
        opt.zero_grad(set_to_none=True)
        return stepped

    def _randn(self, n: int, *shape: int) -> torch.Tensor:
        world, rank = self.dist.world_size, self.dist.rank
        full = torch.randn((n * world, *shape), generator=self.noise)
        return full[rank * n : (rank + 1) * n].to(self.device, non_blocking=True)

    # -- state -----------------------------------------------------------------------------------------

    def _progress_value(self) -> float:
        if self.opts.unit == "epoch":
            return self.epoch + self.batch_in_epoch / self.steps_per_epoch
        return self.cur_nimg / 1000.0

    def _state(self) -> dict[str, Any]:
        rng = D.gather_objects(_rng_state(self.device))
        dv = self.dataset_version
        return {
            "arch": self.opts.arch,
            "resolution": self.recipe.resolution,
            "channels": self.recipe.channels,
            "hparams": dict(self.recipe.hparams),
            "nets": {name: m.state_dict() for name, m in self.nets.items()},
            "optimizers": {name: o.state_dict() for name, o in self.optimizers.items()},
            "scalers": {name: s.state_dict() for name, s in self.scalers.items()},
            "recipe": self.recipe.state_dict(),
            "rng": {"per_process": rng, "noise": self.noise.get_state()},
            "progress": {"iteration": self.iteration, "cur_nimg": self.cur_nimg, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch},
            "dataset": {"name": dv.name, "version": dv.version, "content_hash": dv.content_hash, "count": dv.count, "resolution": dv.resolution},
            "batch": self.opts.batch,
            "world_size": self.dist.world_size,
            "wall_time_s": self._wall_time(),
            "snapshot_metrics": dict(self.snapshot_metrics),
            "sessions": list(self.sessions),
        }

    def _load_state(self, state: Mapping[str, Any], source: Path) -> None:
        if state.get("arch") != self.opts.arch:
            raise TrainError(f"checkpoint {source} is for architecture {state.get('arch')!r}, not {self.opts.arch!r}")
        dv = self.dataset_version
        saved = state.get("dataset") or {}
        if saved.get("content_hash") != dv.content_hash:
            raise TrainError(
                f"checkpoint {source} was trained on dataset {saved.get('name')}@v{saved.get('version')} "
                f"(hash {str(saved.get('content_hash'))[:12]}), but {dv.ref} has hash {dv.content_hash[:12]}"
            )
        if state.get("batch") != self.opts.batch:
            raise TrainError(f"checkpoint {source} was trained with batch {state.get('batch')}; resume with the same batch")
        try:
            for name, m in self.nets.items():
                m.load_state_dict(state["nets"][name])
            for name, o in self.optimizers.items():
                o.load_state_dict(state["optimizers"][name])
            for name, s in self.scalers.items():
                if name in state.get("scalers", {}):
                    s.load_state_dict(state["scalers"][name])
            self.recipe.load_state_dict(state.get("recipe") or {})
        except (KeyError, RuntimeError, ValueError) as exc:
            raise TrainError(f"checkpoint {source} does not fit this run's networks: {str(exc).splitlines()[0]}") from None
        p = state["progress"]
        self.iteration, self.cur_nimg = int(p["iteration"]), int(p["cur_nimg"])
        self.epoch, self.batch_in_epoch = int(p["epoch"]), int(p["batch_in_epoch"])
        self.noise.set_state(state["rng"]["noise"])
        per_process = state["rng"]["per_process"]
        if len(per_process) == self.dist.world_size:
            _set_rng_state(per_process[self.dist.rank], self.device)
            self.exact_resume = True
        else:
            # Another number of processes: the data order and latents stay the same, only the
            # per-process generators are re-seeded, so the run continues equivalently but not bitwise.
            _seed_all(self.opts.seed * 1_000_003 + 7919 * (self.dist.rank + 1) + self.iteration)
            self.exact_resume = False
        self.wall_before = float(state.get("wall_time_s", 0.0))
        self.snapshot_metrics = dict(state.get("snapshot_metrics") or {})
        self.sessions = list(state.get("sessions") or [])

    def _wall_time(self) -> float:
        return self.wall_before + (time.monotonic() - self.session_start)

    # -- the run ---------------------------------------------------------------------------------------

    def run(self) -> TrainResult:
        self._setup()
        main = self.dist.is_main
        D.init_process_group(self.device, self.dist)
        try:
            return self._run(main)
        finally:
            D.shutdown()

    def _run(self, main: bool) -> TrainResult:
        self._build()
        self._make_loader()
        self.iteration = self.cur_nimg = self.epoch = self.batch_in_epoch = 0
        self.wall_before = 0.0
        self.snapshot_metrics: dict[str, Any] = {}
        self.sessions: list[dict[str, Any]] = []
        self.exact_resume = True
        run = self._open_run_dir(main)
        self.run_dir = run
        try:
            if self.resume_dir is None and self.opts.init_from:
                self._warm_start(Path(self.opts.init_from))
            if self.resume_dir is not None:
                source = self.from_checkpoint or self._latest(run)
                state = ckpt.load_checkpoint(source)
                self._load_state(state, source)
                self.on_event("resumed", run=str(run.path), checkpoint=str(source), iteration=self.iteration, exact=self.exact_resume)
                if main:
                    run.truncate_metrics(self.iteration)
            self.session_start = time.monotonic()
            session = {"started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "iteration": self.iteration, "hardware": hardware(self.device, self.dist.world_size), "world_size": self.dist.world_size, "device": str(self.device)}
            self.sessions.append(session)
            if main:
                run.append_metrics({"event": "session", **session, "resumed": self.resume_dir is not None, "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None, "channels_last": self.channels_last})
                if self.resume_dir is None:
                    self._save_reals(run)
            return self._loop(run, main)
        finally:
            if main:
                run.unlock()

    def _warm_start(self, source: Path) -> None:
        """The new run's weights from another run's checkpoint (:mod:`models.train.warm_start`)."""
        state = ckpt.load_checkpoint(source)
        try:
            check_compatible(state, self.opts.arch, self.recipe.resolution, self.recipe.channels, self.recipe.hparams, source)
            summary = warm_start(self.nets, state, self.recipe.hparams, source)
        except WarmStartError as exc:
            raise TrainError(str(exc)) from None
        self.on_event("warm_started", **summary)

    def _latest(self, run: RunDir) -> Path:
        info = ckpt.latest_checkpoint(run.checkpoints)
        if info is None:
            raise TrainError(f"run {run.path.name} has no checkpoint to resume from (in {run.checkpoints})")
        return info.path

    def _open_run_dir(self, main: bool) -> RunDir:
        o = self.opts
        if self.resume_dir is not None:
            run = RunDir(self.resume_dir)
            if main:
                run.lock()
                info = run.read_info()
                info["options"] = o.to_json()
                run.write_info(info)
            return run
        if main:
            run_id = o.run_id or new_run_id(o.arch, self.dataset_version.name, int(o.resolution or 0))
            run = RunDir.create(self.runs_root, run_id)
            run.lock()
            o.run_id = run_id
            dv = self.dataset_version
            run.write_info(
                {
                    "format": "synthpacs-run/1",
                    "run_id": run_id,
                    "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "options": o.to_json(),
                    "dataset": {"name": dv.name, "version": dv.version, "content_hash": dv.content_hash, "count": dv.count, "resolution": dv.resolution, "path": str(dv.path)},
                    "recipe": {"arch": self.recipe.arch, "unit": self.recipe.unit, "uses_ema": self.recipe.uses_ema, "hparams": self.recipe.hparams},
                    "world_size": self.dist.world_size,
                    "hardware": hardware(self.device, self.dist.world_size),
                    "steps_per_epoch": self.steps_per_epoch,
                    "argv": self.argv,
                    **({"conditions": self.condition_counts} if self.condition_counts else {}),
                }
            )
            D.gather_objects(run_id)
            return run
        run_id = D.gather_objects(None)[0]  # every process learns rank 0's id
        o.run_id = run_id
        return RunDir(self.runs_root / run_id)

    def _save_reals(self, run: RunDir) -> None:
        n = min(self.grid_size, self.dataset.count)
        images = np.asarray(self.dataset.images[:n])
        if images.dtype != np.uint8:
            images = (images.astype(np.float64) / np.iinfo(images.dtype).max * 255).round().astype(np.uint8)
        save_grid(images, run.samples / "reals.png", cols=grid_shape(self.grid_size)[1])

    def _install_signal_handlers(self) -> list[tuple[int, Any]]:
        if threading.current_thread() is not threading.main_thread():
            return []
        previous = []

        def handler(signum: int, _frame: Any) -> None:
            if self._stop:  # a second signal: stop now, without a checkpoint
                raise KeyboardInterrupt
            self._stop = True

        for sig in (signal.SIGINT, signal.SIGTERM):
            previous.append((sig, signal.signal(sig, handler)))
        return previous

    def _stop_requested(self) -> bool:
        if not self.dist.enabled:
            return self._stop
        flag = torch.tensor([1.0 if self._stop else 0.0])
        import torch.distributed as dist

        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def _loop(self, run: RunDir, main: bool) -> TrainResult:
        o = self.opts
        unit, length = o.unit, o.length
        snapshots = self.snapshot_points
        eps = 1e-9
        snap_i = sum(1 for s in snapshots if s <= self._progress_value() + eps)
        every = float(self.checkpoint_every)
        next_ckpt = (math.floor(self._progress_value() / every + eps) + 1) * every
        protected: set[int] = {c.iteration for c in ckpt.list_checkpoints(run.checkpoints) if c.meta.get("snapshot")}
        progress = Progress(length, unit, stream=self.progress_stream, enabled=main)
        stats_sum: dict[str, torch.Tensor] = {}
        stats_n = 0
        interval_start, interval_images = time.monotonic(), 0
        session_images, session_train_time = 0, 0.0
        last_ckpt: Path | None = None
        interrupted = False
        previous_handlers = self._install_signal_handlers()
        self.on_event("training", run=str(run.path), unit=unit, length=length, batch=o.batch, steps_per_epoch=self.steps_per_epoch, device=str(self.device), world_size=self.dist.world_size)

        def tick(done: bool) -> Path | None:
            """Snapshots and checkpoints due at the current position."""
            nonlocal snap_i, next_ckpt
            value = self._progress_value()
            snap_due = False
            while snap_i < len(snapshots) and value + eps >= snapshots[snap_i]:
                snap_i += 1
                snap_due = True
            saved = None
            if snap_due:
                self._snapshot(run, main, value)
            if snap_due or done or value + eps >= next_ckpt:
                saved = self._checkpoint(run, main, snapshot=snap_due, protected=protected)
                while next_ckpt <= value + eps:
                    next_ckpt += every
            return saved

        try:
            finished = self._progress_value() + eps >= length
            while not finished:
                self.sampler.set_epoch(self.epoch)
                self.sampler.set_start(self.batch_in_epoch * self.batch_gpu)
                step_start = time.monotonic()
                for batch in self.loader:
                    reals, c = batch if isinstance(batch, (tuple, list)) else (batch, None)
                    reals = reals.to(self.device, non_blocking=True)
                    if c is not None:
                        c = c.to(self.device, non_blocking=True)
                    if self.channels_last:
                        reals = reals.contiguous(memory_format=torch.channels_last)
                    for opt in self.optimizers.values():
                        opt.zero_grad(set_to_none=True)
                    ctx = StepContext(
                        nets=self.nets, optimizers=self.optimizers, device=self.device, iteration=self.iteration, cur_nimg=self.cur_nimg,
                        batch_size=o.batch or 0, batch_gpu=self.batch_gpu, rank=self.dist.rank, world_size=self.dist.world_size, c=c,
                        _backward=self._backward, _step=self._opt_step, _randn=self._randn, _autocast=self._autocast,
                    )
                    stats = self.recipe.train_step(ctx, reals)
                    for k, v in stats.items():
                        t = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
                        stats_sum[k] = stats_sum[k] + t.to(self.device) if k in stats_sum else t.to(self.device)
                    stats_n += 1
                    self.iteration += 1
                    self.batch_in_epoch += 1
                    self.cur_nimg += o.batch or 0
                    interval_images += o.batch or 0
                    session_images += o.batch or 0
                    now = time.monotonic()
                    session_train_time += now - step_start
                    if self.batch_in_epoch >= self.steps_per_epoch:
                        self.epoch += 1
                        self.batch_in_epoch = 0
                    rate = session_images / max(session_train_time, 1e-9)
                    remaining = self._remaining_images(length)
                    if self.iteration % self.log_every == 0:
                        row = self._log_row(stats_sum, stats_n, interval_images / max(now - interval_start, 1e-9))
                        stats_sum, stats_n = {}, 0
                        interval_start, interval_images = time.monotonic(), 0
                        if main:
                            run.append_metrics(row)
                        progress.update(self._progress_value(), rate, remaining / max(rate, 1e-9), {k: row[k] for k in ("loss_D", "loss_G") if k in row})
                    else:
                        progress.update(self._progress_value(), rate, remaining / max(rate, 1e-9))
                    finished = self._progress_value() + eps >= length
                    stop = self._stop_requested()
                    if unit == "kimg" or self.batch_in_epoch == 0 or finished or stop:
                        t0 = time.monotonic()
                        saved = tick(done=finished)
                        if stop and saved is None and not finished:
                            saved = self._checkpoint(run, main, snapshot=False, protected=protected)
                        last_ckpt = saved or last_ckpt
                        interval_start += time.monotonic() - t0  # snapshots do not count against the image rate
                    if stop and not finished:
                        interrupted = True
                        self.on_event("interrupted", run=str(run.path), iteration=self.iteration, checkpoint=str(last_ckpt))
                    if finished or interrupted:
                        break
                    step_start = time.monotonic()
                if interrupted:
                    break
                if self.iteration == 0:
                    raise TrainError("the data loader gave no minibatch")  # guarded by _setup; never silently loop
        finally:
            for sig, h in previous_handlers:
                signal.signal(sig, h)
            progress.close()
        D.barrier()
        if main:
            run.append_metrics({"event": "end" if not interrupted else "interrupted", "iteration": self.iteration, "epoch": self.epoch, "kimg": self.cur_nimg / 1000, "wall_time_s": round(self._wall_time(), 3)})
        self.on_event("finished" if not interrupted else "stopped", run=str(run.path), iteration=self.iteration, wall_time_s=round(self._wall_time(), 1))
        return TrainResult(run.path, self.iteration, self.cur_nimg, self.epoch, last_ckpt, self._wall_time(), interrupted)

    def _remaining_images(self, length: float) -> float:
        if self.opts.unit == "kimg":
            return max(0.0, length * 1000 - self.cur_nimg)
        steps_left = (length - self.epoch) * self.steps_per_epoch - self.batch_in_epoch
        return max(0.0, steps_left * (self.opts.batch or 0))

    def _log_row(self, stats_sum: Mapping[str, torch.Tensor], n: int, images_per_s: float) -> dict[str, Any]:
        keys = sorted(stats_sum)
        values: list[float] = []
        if keys:
            stacked = torch.stack([stats_sum[k] for k in keys]) / max(n, 1)
            values = D.mean_over_processes(stacked).cpu().tolist()
        row: dict[str, Any] = {
            "event": "train",
            "iteration": self.iteration,
            "epoch": round(self.epoch + self.batch_in_epoch / self.steps_per_epoch, 4),
            "kimg": self.cur_nimg / 1000,
            "images_per_s": round(images_per_s, 2),
            "wall_time_s": round(self._wall_time(), 2),
        }
        bad = [k for k, v in zip(keys, values) if not math.isfinite(v)]
        if bad:
            last = ckpt.latest_checkpoint(self.run_dir.checkpoints)
            raise TrainError(
                f"training diverged: {', '.join(bad)} became NaN or infinite by iteration {self.iteration}; "
                + (f"resume from {last.path.name} (--from-checkpoint) with a lower learning rate (--set lr=...)" if last else "start again with a lower learning rate (--set lr=...)")
            )
        row.update({k: round(v, 6) for k, v in zip(keys, values)})
        row["mem_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        if self.device.type == "cuda":
            row["mem_cuda_max_mb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**20, 1)
        return row

    # -- snapshots and checkpoints -----------------------------------------------------------------------

    def inference_copy(self) -> nn.Module:
        """A plain generator (what export writes) holding the inference weights, eval mode, on the device."""
        src = self.recipe.inference_generator(self.nets)
        G = registry.build_generator({"architecture": self.opts.arch, "init_kwargs": dict(src.init_kwargs)})
        G.load_state_dict(src.state_dict())
        return G.eval().requires_grad_(False).to(self.device)

    def _snapshot(self, run: RunDir, main: bool, value: float) -> None:
        if not main:
            return
        saved_rng = _rng_state(self.device)
        try:
            G = self.inference_copy()
            stem, caption = _snapshot_label(self.opts.unit, value)
            seeds = list(range(self.grid_size))
            space = self.dataset.conditions
            if space is None:
                images = sample_images(G, seeds, self.device)
                grid_path = save_grid(images, run.samples / f"{stem}.png")
                cols = grid_shape(len(seeds))[1]
            else:
                grid_path, cols = self._condition_grids(G, space, run, stem)
            grids = sorted(p for p in run.samples.glob(f"{self.opts.unit}-*.png") if p.stem.count("-") == 1)
            save_progression([(_snapshot_label(self.opts.unit, float(p.stem.split("-", 1)[1]))[1], p) for p in grids], run.samples / "progression.png", cols, self.recipe.resolution)
            row: dict[str, Any] = {"event": "snapshot", "iteration": self.iteration, "epoch": self.epoch, "kimg": self.cur_nimg / 1000, "grid": str(grid_path.relative_to(run.path))}
            if self.metrics_fn is not None:
                info = SnapshotInfo(run.path, self.opts.arch, self.opts.unit, value, self.iteration, self.cur_nimg, self.dataset_version, self.device)
                started = time.monotonic()
                values = dict(self.metrics_fn(G, info))
                row["metrics"] = values
                row["metrics_time_s"] = round(time.monotonic() - started, 2)
                self.snapshot_metrics = {"iteration": self.iteration, "epoch": self.epoch, "kimg": self.cur_nimg / 1000, **values}
            run.append_metrics(row)
            self.on_event("snapshot", run=str(run.path), grid=str(grid_path), label=caption, metrics=row.get("metrics"))
        finally:
            _set_rng_state(saved_rng, self.device)

    def _condition_grids(self, G: nn.Module, space: ConditionSpace, run: RunDir, stem: str) -> tuple[Path, int]:
        """One grid per condition (seeds 0..n-1, the same in every grid) in ``samples/<stem>/``, and an
        overview ``<stem>.png`` with one row of 8 per condition, conditions in :meth:`combinations` order."""
        per = min(self.grid_size, 16)
        cols = 8
        overview = []
        for cond in space.combinations():
            c = space.encode_batch([cond] * per, self.device)
            images = sample_images(G, list(range(per)), self.device, c=c)
            save_grid(images, run.samples / stem / f"{condition_label(cond)}.png")
            overview.append(images[:cols])
        grid_path = save_grid(np.concatenate(overview), run.samples / f"{stem}.png", cols=cols)
        return grid_path, cols

    def _checkpoint(self, run: RunDir, main: bool, snapshot: bool, protected: set[int]) -> Path | None:
        state = self._state()  # a collective under DDP: every process takes part
        if not main:
            return None
        meta = {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "kimg": self.cur_nimg / 1000, "cur_nimg": self.cur_nimg, "snapshot": snapshot, "arch": self.opts.arch, "wall_time_s": round(self._wall_time(), 2), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        path = ckpt.save_checkpoint(run.checkpoints, self.iteration, state, meta)
        if snapshot:
            protected.add(self.iteration)
        ckpt.prune_checkpoints(run.checkpoints, self.opts.keep_checkpoints, protected)
        self.on_event("checkpoint", path=str(path), iteration=self.iteration, epoch=self.epoch, kimg=self.cur_nimg / 1000)
        return path
