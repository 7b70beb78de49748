"""One prepared GPU run: ``python -m bench gpu --images DIR --out DIR`` (or ``make bench-gpu``).

On a machine with a CUDA GPU, within a wall-clock budget (default 8 minutes), in this order:

1. **Data**: the radiographs in ``--images`` (a folder of JPEG/PNG files, DICOM files, or both, searched
   recursively; DICOM through the same pixel pipeline as ``synthpacs dataset build``), fitted to 256 px
   squares; without a folder, 476 generated phantoms (bone-like shapes on soft tissue), said in the report.
2. **DCGAN-256 training speed**: the project's runner (``models.train.train``, DCGAN recipe, batch 64,
   autocast and channels_last as on any CUDA run) for a few minibatches; images/s from the runner's
   per-minibatch rows (first left out), and what 1,000 epochs of 476 images take at that rate (the seed:
   40 minutes on its GPU; target <= 10 minutes).
3. **StyleGAN3-T and -R at 256 px**: the runner with each recipe at batch 16 and 32 for a few
   minibatches: seconds per kimg and peak GPU memory (``torch.cuda.max_memory_allocated``). NVlabs'
   anchors: T 49.8 s/kimg at 9.5 GB, R 56.7 s/kimg, on one A100 with their custom CUDA kernels. The first
   minibatch (kernel selection) is left out, and with it that step's lazy R1 pass (one minibatch in 16).
4. **gRPC inference at 256 px**: ``bench/bench_inference.py``'s (a) raw forward, (b) dynamic batching
   and (c) unbatched serving of an untrained DCGAN-256 on the GPU, one short round.
5. **A DCGAN-256 trained for the rest of the budget**, exported into ``OUT/models`` (half precision if
   float32 would exceed 40 MB), with its sample grids and a pixel-space evaluation (SSIM/PSNR to the
   nearest real image, MS-SSIM diversity, memorization; FID needs Inception weights, which a bare GPU
   machine does not have).

Everything is written under one folder (``--out``, else ``$OUT``, else ``bench-gpu-<time>``):
``results.md`` and ``results.json`` (the figures, and where the images came from), ``evaluation.json``,
``log.txt``, ``grid.png`` (samples of the exported model), ``progression.png`` (the snapshots), and
``model.tar`` (the registry folder of the exported model and every sample grid; cut into ``model.tar.00``,
``.01``, ... of at most 15 MiB: a device machine returns at most 8 files of 16 MiB). A part that fails is
reported with its error and the others still run (exit status 1).

``--tiny`` runs the same code paths on the CPU in seconds (64 px, a few channels, two minibatches):
the test suite runs it, so the script cannot rot between GPU sessions. Without a GPU and without
``--tiny`` the script refuses to start.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import shutil
import statistics
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

SEED_MINUTES_1000_EPOCHS = 40.0  # the seed notebook's DCGAN-256, 1,000 epochs of 476 images
TARGET_MINUTES_1000_EPOCHS = 10.0
SET_SIZE = 476  # the FracAtlas subset the seed trained on
NVLABS_A100 = {"t": (49.81, 9.5), "r": (56.73, 6.7)}  # s/kimg, GB at batch 32 (docs/configs.md)
MODEL_LIMIT_MB = 40
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


@dataclass(frozen=True)
class Plan:
    """Sizes of one run: the full GPU run, or the tiny CPU run of the test suite."""

    resolution: int = 256
    phantoms: int = SET_SIZE
    dcgan_batch: int = 64
    dcgan_probe_steps: int = 8
    dcgan_hparams: dict = field(default_factory=dict)
    sg3_resolution: int = 256
    sg3_batches: tuple[int, ...] = (16, 32)
    sg3_steps: int = 4
    sg3_hparams: dict = field(default_factory=dict)
    inference_seconds: float = 4.0
    inference_warmup: float = 2.0
    eval_images: int = 512
    grid_size: int = 16
    reserve_s: float = 75.0  # kept back from the final training for export, evaluation and the report
    max_final_epochs: int | None = None  # the tiny run trains one epoch, however fast the probe was


FULL = Plan()
TINY = Plan(
    resolution=64, phantoms=24, dcgan_batch=8, dcgan_probe_steps=3, dcgan_hparams={"g_channels": 8, "d_channels": 8},
    sg3_resolution=32, sg3_batches=(2,), sg3_steps=2,
    sg3_hparams={"z_dim": 16, "w_dim": 16, "channel_base": 256, "channel_max": 8, "d_channel_base": 64, "d_channel_max": 8},
    inference_seconds=2.0, inference_warmup=0.5, eval_images=8, grid_size=4, reserve_s=5.0, max_final_epochs=1,
)


class BenchError(Exception):
    """A problem with the run's inputs, reported as one line."""


# --------------------------------------------------------------------------------------------- data


def phantoms(count: int, resolution: int, seed: int = 0) -> np.ndarray:
    """``count`` radiograph-like phantoms, uint8: a soft-tissue ellipse with one to three bones (bright
    cortex around a darker medulla) at random angles, a little noise, black borders."""
    rng = np.random.default_rng(seed)
    yy, xx = (np.mgrid[0:resolution, 0:resolution] + 0.5) / resolution
    out = np.empty((count, resolution, resolution), np.uint8)
    for i in range(count):
        img = np.zeros((resolution, resolution))
        cx, cy = rng.uniform(0.4, 0.6, 2)
        tissue = ((xx - cx) / rng.uniform(0.25, 0.4)) ** 2 + ((yy - cy) / rng.uniform(0.35, 0.48)) ** 2 < 1
        img[tissue] = 0.3
        for _ in range(rng.integers(1, 4)):
            a = rng.uniform(-0.5, 0.5)
            bx, by = cx + rng.uniform(-0.12, 0.12), cy + rng.uniform(-0.1, 0.1)
            u = (xx - bx) * math.cos(a) + (yy - by) * math.sin(a)
            v = -(xx - bx) * math.sin(a) + (yy - by) * math.cos(a)
            half_w, half_l = rng.uniform(0.04, 0.08), rng.uniform(0.2, 0.4)
            r = (u / half_w) ** 2 + (v / half_l) ** 2
            img[r < 1] = 0.9
            img[r < 0.45] = 0.6
        img += rng.normal(0, 0.03, img.shape)
        out[i] = np.clip(img * 255, 0, 255).astype(np.uint8)
    return out


def _is_dicom(path: Path) -> bool:
    if path.suffix.lower() == ".dcm":
        return True
    try:
        with path.open("rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def load_images(folder: Path, resolution: int, fit: str = "pad", limit: int | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Every JPEG/PNG and DICOM file under ``folder`` as (N, resolution, resolution) uint8, and what was
    read. Files that cannot be read are counted and named (without their content), never fatal."""
    from PIL import Image

    from service.data.pixels import PixelOptions, fit_square, prepare

    if not folder.is_dir():
        raise BenchError(f"--images {folder}: not a folder")
    files = sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix.lower() in IMAGE_SUFFIXES or _is_dicom(p)))
    if limit is not None:
        files = files[:limit]
    images, skipped, kinds = [], [], {"jpeg/png": 0, "dicom": 0}
    for path in files:
        try:
            if path.suffix.lower() in IMAGE_SUFFIXES:
                with Image.open(path) as im:
                    gray = np.asarray(im.convert("L"), dtype=np.float32) / 255.0  # 3-channel files hold gray content
                square, _geometry = fit_square(gray, resolution, fit)
                images.append(np.rint(square * 255).astype(np.uint8))
                kinds["jpeg/png"] += 1
            else:
                import pydicom

                ds = pydicom.dcmread(path)
                square, _info = prepare(ds, PixelOptions(resolution=resolution, fit=fit, dtype="uint8"))
                images.append(square)
                kinds["dicom"] += 1
        except Exception as exc:  # noqa: BLE001 - one bad file must not end the run
            skipped.append(f"{path.name}: {type(exc).__name__}")
    if not images:
        raise BenchError(f"--images {folder}: no readable JPEG, PNG or DICOM files ({len(files)} candidates, {len(skipped)} unreadable)")
    return np.stack(images), {"source": str(folder), "count": len(images), "kinds": kinds, "skipped": skipped[:20], "skipped_count": len(skipped), "fit": fit}


def resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    """(N, H, H) uint8 -> (N, size, size) uint8, anti-aliased (Pillow's Lanczos)."""
    from PIL import Image

    return np.stack([np.asarray(Image.fromarray(im).resize((size, size), Image.LANCZOS)) for im in images])


# ----------------------------------------------------------------------------------------- helpers


class Run:
    """The output folder, the clock, and the report being built."""

    def __init__(self, out: Path, budget_s: float, device: str, plan: Plan, tiny: bool):
        self.out, self.budget_s, self.device, self.plan, self.tiny = out, budget_s, device, plan, tiny
        self.started = time.perf_counter()
        self.results: dict[str, Any] = {"device": device, "tiny": tiny, "budget_s": budget_s, "parts": {}}
        self.failed: list[str] = []
        self.work = out / "work"
        self.work.mkdir(parents=True, exist_ok=True)
        self._log = (out / "log.txt").open("a")

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def remaining(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, message: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {message}"
        print(line, flush=True)
        self._log.write(line + "\n")
        self._log.flush()

    def part(self, name: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        self.log(f"{name}: start")
        t0 = time.perf_counter()
        try:
            value = fn()
        except Exception as exc:  # noqa: BLE001 - one failed part must not hide the others' figures
            self.failed.append(name)
            self.results["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            self._log.write(traceback.format_exc())
            self.log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
            return None
        finally:
            _free_memory(self.device)
        value["seconds"] = round(time.perf_counter() - t0, 1)
        self.results["parts"][name] = value
        self.log(f"{name}: done in {value['seconds']} s")
        return value

    def close(self) -> None:
        self._log.close()


def _free_memory(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()


def _train_rows(run_dir: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("event") == "train"]


def _steady_rate(run_dir: Path) -> float:
    """Median images/s over the run's minibatches, the first (kernel selection, caches) left out."""
    rates = [r["images_per_s"] for r in _train_rows(run_dir)]
    rates = rates[1:] if len(rates) > 1 else rates
    if not rates:
        raise RuntimeError(f"no training rows in {run_dir / 'metrics.jsonl'}")
    return float(statistics.median(rates))


@contextlib.contextmanager
def _peak_memory(device: str):
    """Yields a dict that holds the peak allocated/reserved GPU memory (GiB) of the block afterwards."""
    import torch

    box: dict[str, float | None] = {"allocated_gib": None, "reserved_gib": None}
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    yield box
    if cuda:
        torch.cuda.synchronize()
        box["allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        box["reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)


def _quiet():
    return open(os.devnull, "w")


# ------------------------------------------------------------------------------------------- parts


def part_dcgan_speed(run: Run, datasets: Path) -> dict[str, Any]:
    from models.train.runner import TrainOptions, train

    p = run.plan
    kimg = p.dcgan_probe_steps * p.dcgan_batch / 1000
    opts = TrainOptions(arch="dcgan", dataset="gpu-speed", batch=p.dcgan_batch, kimg=kimg, device=run.device, log_every=1,
                        grid_size=4, snapshots=[], run_id="dcgan-speed", keep_checkpoints=1, checkpoint_every=kimg, hparams=dict(p.dcgan_hparams))
    result = train(opts, datasets, run.work / "runs", progress_stream=_quiet())
    rate = _steady_rate(result.run_dir)
    minutes = 1000 * SET_SIZE / rate / 60
    shutil.rmtree(result.run_dir, ignore_errors=True)
    return {
        "resolution": p.resolution, "batch": p.dcgan_batch, "images_per_s": round(rate, 1),
        "projected_minutes_1000_epochs_476": round(minutes, 2),
        "seed_minutes": SEED_MINUTES_1000_EPOCHS, "target_minutes": TARGET_MINUTES_1000_EPOCHS,
        "meets_target": minutes <= TARGET_MINUTES_1000_EPOCHS,
    }


def part_stylegan3(run: Run, datasets_sg3: Path) -> dict[str, Any]:
    import torch

    from models.train.runner import TrainOptions, train

    p = run.plan
    rows = []
    for config in ("t", "r"):
        for batch in p.sg3_batches:
            if run.remaining() < run.plan.reserve_s * 2:
                rows.append({"config": config, "batch": batch, "skipped": "out of time"})
                continue
            kimg = p.sg3_steps * batch / 1000
            opts = TrainOptions(arch=f"stylegan3-{config}", dataset="gpu-sg3", batch=batch, kimg=kimg, device=run.device, log_every=1,
                                grid_size=4, snapshots=[], run_id=f"sg3-{config}-{batch}", keep_checkpoints=1, checkpoint_every=kimg,
                                hparams=dict(p.sg3_hparams))
            row: dict[str, Any] = {"config": config, "batch": batch}
            try:
                with _peak_memory(run.device) as peak:
                    result = train(opts, datasets_sg3, run.work / "runs", progress_stream=_quiet())
                rate = _steady_rate(result.run_dir)
                row.update(s_per_kimg=round(1000 / rate, 1), images_per_s=round(rate, 2), peak_allocated_gib=peak["allocated_gib"], peak_reserved_gib=peak["reserved_gib"])
                shutil.rmtree(result.run_dir, ignore_errors=True)
            except torch.cuda.OutOfMemoryError as exc:
                row["error"] = f"out of GPU memory: {str(exc).splitlines()[0]}"
            except Exception as exc:  # noqa: BLE001 - one configuration failing must not hide the others
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                run.failed.append(f"stylegan3-{config}-{batch}")
            run.log(f"stylegan3-{config} batch {batch}: {row}")
            rows.append(row)
            _free_memory(run.device)
    return {"resolution": p.sg3_resolution, "steps": p.sg3_steps, "rows": rows, "nvlabs_a100_batch32": {k: {"s_per_kimg": v[0], "gb": v[1]} for k, v in NVLABS_A100.items()}}


def part_inference(run: Run) -> dict[str, Any]:
    import torch

    from bench import bench_inference as bi
    from service.logs import configure

    configure(level="warning")  # a log line per request would cost the servers' CPU time
    threads = torch.get_num_threads()
    saved = (bi.SECONDS, bi.ROUNDS, bi.WARMUP)
    bi.SECONDS, bi.ROUNDS, bi.WARMUP = run.plan.inference_seconds, 1, run.plan.inference_warmup
    try:
        home = run.work / "inference"
        registry, ref, described = bi._large_model(home / "models", run.plan.resolution)
        r = bi._compare(home, registry, ref, 0, device=run.device)
    finally:
        bi.SECONDS, bi.ROUNDS, bi.WARMUP = saved
        torch.set_num_threads(threads)
    return {"described": described, "table": bi._table(r), "raw": {k: r[k] for k in ("a", "b", "c", "a1", "amax", "bulk", "ceiling")}, "dtype": r["dtype"], "device": r["device"]}


def part_train_and_export(run: Run, datasets: Path, images: np.ndarray, rate: float | None) -> dict[str, Any]:
    from models import registry as reg_mod
    from models.metrics.evaluate import EvaluationSettings, Inputs, evaluate_generator
    from models.train.export import export_run
    from models.train.grids import sample_images, save_grid
    from models.train.runner import TrainOptions, train

    p = run.plan
    batch = min(p.dcgan_batch, len(images))
    steps_per_epoch = max(1, len(images) // batch)
    epoch_images = steps_per_epoch * batch
    seconds = max(0.0, run.remaining() - p.reserve_s)
    # A rate from part 2 sizes the run (85 %: snapshots and data loading also take time); without one
    # (that part failed), one epoch.
    epochs = max(1, int(0.85 * seconds * rate / epoch_images)) if rate else 1
    if p.max_final_epochs is not None:
        epochs = min(epochs, p.max_final_epochs)
    run.log(f"final DCGAN: {epochs} epochs of {epoch_images} images in about {seconds:.0f} s")
    opts = TrainOptions(arch="dcgan", dataset="gpu", batch=batch, epochs=epochs, device=run.device, grid_size=p.grid_size,
                        run_id="dcgan-final", keep_checkpoints=1, checkpoint_every=float(epochs), hparams=dict(p.dcgan_hparams))
    result = train(opts, datasets, run.work / "runs", progress_stream=_quiet())
    package = run.work / "package"
    samples = package / "samples"
    samples.mkdir(parents=True, exist_ok=True)
    for grid in sorted((result.run_dir / "samples").glob("*.png")):
        shutil.copy2(grid, samples / grid.name)
    if (samples / "progression.png").exists():
        shutil.copy2(samples / "progression.png", run.out / "progression.png")

    registry = reg_mod.Registry([package / "models"])
    name = f"gpu-dcgan-{p.resolution}"
    mv = export_run(result.run_dir, registry, name)
    size_mb = sum(f.stat().st_size for f in mv.path.rglob("*") if f.is_file()) / 1e6
    half = False
    if size_mb > MODEL_LIMIT_MB:
        shutil.rmtree(mv.path)
        mv = export_run(result.run_dir, registry, name, half=True)
        size_mb = sum(f.stat().st_size for f in mv.path.rglob("*") if f.is_file()) / 1e6
        half = True
    G, _mv = registry.load(name, device=run.device)
    params = sum(t.numel() for t in G.parameters())
    grid = sample_images(G, list(range(p.grid_size)), device=run.device)
    save_grid(grid, run.out / "grid.png")
    settings = EvaluationSettings(metrics=("ssim_psnr", "diversity", "memorization"), n=p.eval_images,
                                  diversity_pairs=min(1000, p.eval_images * 2), device=run.device)
    evaluation, _fake = evaluate_generator(G, Inputs(reference=images, training=images), settings)
    (run.out / "evaluation.json").write_text(json.dumps(evaluation, indent=2, default=str))
    del G
    info = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    end = next((r for r in reversed(info) if r.get("event") in ("end", "interrupted")), {})
    shutil.rmtree(result.run_dir / "checkpoints", ignore_errors=True)
    parts = pack(package, run.out / "model.tar")
    return {
        "package": parts,
        "epochs": epochs, "epoch_images": epoch_images, "wall_time_s": end.get("wall_time_s"), "model": mv.ref,
        "model_path": str(mv.path.relative_to(package)), "model_mb": round(size_mb, 1), "half_precision": half, "generator_parameters": params,
        "evaluation": evaluation.get("metrics", {}),
    }


def pack(folder: Path, tar_path: Path, part_mb: float = 15.0) -> list[str]:
    """``folder`` as one tar file, cut into parts of at most ``part_mb`` MiB (``NAME.00``, ``NAME.01``,
    ...; ``cat NAME.* > NAME`` joins them) when larger: a device machine returns files of at most 16 MiB."""
    import tarfile

    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder, arcname=".")
    limit = int(part_mb * 2**20)
    if tar_path.stat().st_size <= limit:
        return [tar_path.name]
    names = []
    with tar_path.open("rb") as src:
        for i in range(10_000):
            chunk = src.read(limit)
            if not chunk:
                break
            part = tar_path.with_name(f"{tar_path.name}.{i:02d}")
            part.write_bytes(chunk)
            names.append(part.name)
    tar_path.unlink()
    return names


def prepare_images(src: Path, dst: Path, resolution: int, fit: str) -> int:
    """Write the images of ``src`` fitted to ``resolution`` px as PNG files into ``dst``: small enough to
    travel with the working tree to a device machine (the 476 radiographs: 8.5 MB)."""
    from PIL import Image

    images, info = load_images(src, resolution, fit)
    dst.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(dst / f"{i:05d}.png", optimize=True)
    (dst / "SOURCE.txt").write_text(f"{info['count']} images from {src}, fitted ({fit}) to {resolution} px by bench/bench_gpu.py --prepare-images\n")
    return len(images)


# ------------------------------------------------------------------------------------------ report


def report(run: Run) -> str:
    r = run.results
    parts = r["parts"]
    lines = ["## GPU run (`bench/bench_gpu.py`)", ""]
    lines.append(f"Device: {r.get('device_name', r['device'])}; torch {r.get('torch')}; budget {r['budget_s']:.0f} s, used {r.get('wall_s', 0):.0f} s"
                 + (" (**tiny CPU configuration**: code paths only, no figures to compare)" if r["tiny"] else "") + ".")
    data = r.get("data", {})
    lines.append(f"Training images: {data.get('note', '?')}")
    lines.append("")
    d = parts.get("dcgan_speed")
    if d and "error" not in d:
        lines += [f"**DCGAN {d['resolution']} px training**, batch {d['batch']}: {d['images_per_s']} img/s; 1,000 epochs of {SET_SIZE} images would take "
                  f"**{d['projected_minutes_1000_epochs_476']} min** (seed {SEED_MINUTES_1000_EPOCHS:.0f} min; target <= {TARGET_MINUTES_1000_EPOCHS:.0f} min: "
                  f"{'met' if d['meets_target'] else 'not met'}).", ""]
    elif d:
        lines += [f"DCGAN training speed: failed ({d['error']}).", ""]
    s = parts.get("stylegan3")
    if s and "error" not in s:
        lines += [f"**StyleGAN3 at {s['resolution']} px** ({s['steps']} minibatches each, first left out; NVlabs on one A100 at batch 32: T 49.8 s/kimg at 9.5 GB, R 56.7 s/kimg at 6.7 GB):", "",
                  "| config | batch | s/kimg | img/s | peak allocated GiB | peak reserved GiB |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
        for row in s["rows"]:
            if "s_per_kimg" in row:
                lines.append(f"| {row['config'].upper()} | {row['batch']} | {row['s_per_kimg']} | {row['images_per_s']} | {row['peak_allocated_gib']} | {row['peak_reserved_gib']} |")
            else:
                lines.append(f"| {row['config'].upper()} | {row['batch']} | {row.get('error') or row.get('skipped')} | | | |")
        lines.append("")
    elif s:
        lines += [f"StyleGAN3: failed ({s['error']}).", ""]
    i = parts.get("inference")
    if i and "error" not in i:
        lines += [f"**gRPC inference** ({i['described']}; {i['device']}, {i['dtype']}; one short round):", "", *i["table"], ""]
    elif i:
        lines += [f"gRPC inference: failed ({i['error']}).", ""]
    t = parts.get("train_and_export")
    if t and "error" not in t:
        ev = t["evaluation"]
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, (int, float)) else f"{k} {v}" for k, v in ev.items() if not isinstance(v, (dict, list)))
        lines += [f"**Final DCGAN**: {t['epochs']} epochs of {t['epoch_images']} images in {t['wall_time_s']} s; exported as `{t['model_path']}` "
                  f"({t['model_mb']} MB{', half precision' if t['half_precision'] else ''}) in {', '.join(t['package'])} (with every sample grid; "
                  f"`cat model.tar* > m.tar && tar -xf m.tar -C ~/.synthpacs`); samples of the exported model in grid.png; evaluation: {shown}.", ""]
    elif t:
        lines += [f"Final DCGAN: failed ({t['error']}).", ""]
    if run.failed:
        lines.append(f"Failed parts: {', '.join(run.failed)} (see log.txt).")
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench gpu", description="The prepared GPU run (module docstring of bench/bench_gpu.py).")
    ap.add_argument("--images", default=os.environ.get("BENCH_GPU_IMAGES"), help="folder of JPEG/PNG or DICOM radiographs (default $BENCH_GPU_IMAGES; none: generated phantoms)")
    ap.add_argument("--out", default=os.environ.get("OUT"), help="output folder (default $OUT, else bench-gpu-<time>)")
    ap.add_argument("--budget-s", type=float, default=None, help="wall-clock budget in seconds (default 480; --tiny: 1800, so that a busy CPU skips no part)")
    ap.add_argument("--device", default=None, help="cuda, cuda:N or cpu (default: cuda; --tiny: cpu)")
    ap.add_argument("--fit", choices=("pad", "crop"), default="pad", help="how images are fitted to the square (default pad)")
    ap.add_argument("--tiny", action="store_true", help="the tiny CPU configuration the tests run (seconds)")
    ap.add_argument("--skip-inference", action="store_true", help="leave out the gRPC part")
    ap.add_argument("--prepare-images", metavar="DST", default=None, help="only write the --images fitted to 256 px as PNG files into DST, to carry to a GPU machine")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import torch

    args = parse_args(sys.argv[1:] if argv is None else argv)
    plan = TINY if args.tiny else FULL
    if args.prepare_images:
        if not args.images:
            print("bench gpu: --prepare-images needs --images SRC", file=sys.stderr)
            return 2
        try:
            n = prepare_images(Path(args.images), Path(args.prepare_images), plan.resolution, args.fit)
        except BenchError as exc:
            print(f"bench gpu: {exc}", file=sys.stderr)
            return 2
        print(f"bench gpu: {n} images written to {args.prepare_images}")
        return 0
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("bench gpu: no CUDA GPU here (torch.cuda.is_available() is False; torch "
              f"{torch.__version__}). Run it on a GPU machine, or try the code paths with --tiny.", file=sys.stderr)
        return 2
    out = Path(args.out or f"bench-gpu-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = Run(out, args.budget_s or (1800.0 if args.tiny else 480.0), device, plan, args.tiny)
    r = run.results
    r["torch"] = torch.__version__
    r["device_name"] = torch.cuda.get_device_name(torch.device(device)) if device.startswith("cuda") else "CPU"
    try:
        from bench.results import machine

        r["machine"] = machine()
        run.log(f"bench gpu: {r['machine']}; output in {out}")

        # 1. Data.
        try:
            if args.images:
                images, data = load_images(Path(args.images), plan.resolution, args.fit)
                data["note"] = f"{data['count']} images from `{args.images}` ({data['kinds']}; {data['skipped_count']} unreadable), fitted ({args.fit}) to {plan.resolution} px."
            else:
                images = phantoms(plan.phantoms, plan.resolution)
                data = {"source": "phantoms", "count": len(images),
                        "note": f"**no --images folder was given: {len(images)} generated phantoms** (bone-like shapes), so the trained model shows phantoms, not anatomy."}
        except BenchError as exc:
            print(f"bench gpu: {exc}", file=sys.stderr)
            return 2
        r["data"] = data
        run.log(data["note"])
        from models.datasets import write_dataset

        datasets = run.work / "datasets"
        write_dataset(datasets, "gpu", images)
        # The speed probes need a full minibatch: a small folder is repeated for them (not for the final run).
        largest = max(plan.dcgan_batch, *plan.sg3_batches)
        tiled = np.concatenate([images] * math.ceil(largest / len(images))) if len(images) < largest else images
        write_dataset(datasets, "gpu-speed", tiled)
        sg3_images = tiled if plan.sg3_resolution == plan.resolution else resize_uint8(tiled, plan.sg3_resolution)
        datasets_sg3 = run.work / "datasets-sg3"
        write_dataset(datasets_sg3, "gpu-sg3", sg3_images)

        # 2-5.
        speed = run.part("dcgan_speed", lambda: part_dcgan_speed(run, datasets))
        run.part("stylegan3", lambda: part_stylegan3(run, datasets_sg3))
        if not args.skip_inference:
            run.part("inference", lambda: part_inference(run))
        run.part("train_and_export", lambda: part_train_and_export(run, datasets, images, speed["images_per_s"] if speed else None))
    finally:
        r["wall_s"] = round(run.elapsed(), 1)
        r["failed"] = run.failed
        (out / "results.json").write_text(json.dumps(r, indent=2, default=str))
        md = report(run)
        (out / "results.md").write_text(md + "\n")
        if not args.tiny and "data" in r:
            from bench.results import write_section

            with contextlib.suppress(OSError):
                write_section("gpu", md)
        shutil.rmtree(run.work, ignore_errors=True)
        run.log(f"bench gpu: finished in {r['wall_s']} s; results in {out / 'results.md'}")
        run.close()
    return 1 if run.failed else 0


if __name__ == "__main__":
    sys.exit(main())
