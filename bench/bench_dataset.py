"""Dataset build against the seed notebook's preprocessing, over the same stored files, in one run.

Inputs: ../shared/data/radiographs (476 FracAtlas JPEGs) wrapped as CR instances by
``dataset import-images`` into a fresh store, plus pydicom-data's RG1 and RG3 (real CR, MONOCHROME1,
15 and 10 bits) stored as received. Both contenders read the same store files from the page cache:

* baseline (bench/seed_notebook.py): pydicom read, min-max, Pillow resize to 256x256, JPG write, one
  process (the seed project's notebook);
* ``dataset build``: the full pipeline (sha256 check, VOI window, MONOCHROME1, padding, aspect-kept
  anti-aliased resize) on every core, into a lossless memory-mapped uint8 array.

Each runs several times, interleaved, and the best run counts (other work on a shared machine only
ever slows a run down). The ratio is of images per second. CPU seconds (user + system, the build's
worker processes included) are reported beside wall time: they show the work per image whatever else
the machine is doing, while wall time on a busy machine shows mostly the others.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from pydicom.data import get_testdata_file

from bench.results import write_section
from bench.seed_notebook import preprocess
from models.datasets import load_images
from service.archive.store import Store
from service.config import load_config
from service.data.build import Filters, _start_method, build_dataset, options_from_config, worker_count
from service.data.images_import import import_images

RADIOGRAPHS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "radiographs"
ROUNDS = 5


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the build's workers, once joined)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _config(home: Path):
    return load_config(path=None, env={}, overrides={"home": str(home), "metrics.enabled": False, "log.level": "warning"})


def _import(home: str) -> tuple[int, int, float]:
    """(files, stored, seconds): the JPEGs through ``import-images``, then RG1 and RG3 as received."""
    store = Store(_config(Path(home)))
    started = time.perf_counter()
    result = import_images(store, RADIOGRAPHS, modality="CR", progress=False)
    import_seconds = time.perf_counter() - started
    for name in ("RG1_UNCR.dcm", "RG3_UNCR.dcm"):
        path = get_testdata_file(name)
        if path is None:
            raise RuntimeError(f"pydicom-data's {name} is not installed (pip install pydicom-data)")
        store.put(pydicom.dcmread(path), source="cstore")
    store.close()
    return result.files, result.stored + result.identical, import_seconds


def _setup(home: Path):
    # The import runs in a child process: the store hashes large instances on a thread pool that lives as
    # long as its process, and a build started from a process with other threads spawns its workers
    # instead of forking them (service/data/build.py). `synthpacs dataset build` is a fresh,
    # single-threaded process, so this keeps the benchmark's build the same as the command's.
    with multiprocessing.get_context("fork").Pool(1) as pool:
        files_n, stored, import_seconds = pool.apply(_import, (str(home),))
    cfg = _config(home)
    store = Store(cfg)
    files = [store.path_of(r) for r in store.index.instances(order="i.sop_instance_uid")]
    store.close()
    return cfg, files, files_n, stored, import_seconds


def main() -> None:
    if not RADIOGRAPHS.is_dir():
        raise RuntimeError(f"{RADIOGRAPHS} is not here; this benchmark needs the shared FracAtlas radiographs")
    with tempfile.TemporaryDirectory(prefix="synthpacs-bench-dataset-") as tmp:
        home = Path(tmp) / "home"
        cfg, files, jpegs, stored_jpegs, import_seconds = _setup(home)
        n = len(files)
        total_bytes = sum(f.stat().st_size for f in files)
        for f in files:  # both contenders read from the page cache
            f.read_bytes()
        workers = worker_count(cfg)
        start_method = _start_method()
        options = options_from_config(cfg)
        filters = Filters(modalities=("CR",))
        baseline_s: list[float] = []
        ours_s: list[float] = []
        single_s: list[float] = []
        cpu = {"seed": [], "build": [], "single": []}
        hashes = set()
        load_before = os.getloadavg()[0]
        for r in range(ROUNDS):
            out = Path(tmp) / f"seed-{r}"
            c0, started = _cpu(), time.perf_counter()
            done = preprocess(files, out)
            baseline_s.append(time.perf_counter() - started)
            cpu["seed"].append(_cpu() - c0)
            assert done == n
            shutil.rmtree(out)
            c0, started = _cpu(), time.perf_counter()
            result = build_dataset(cfg, "bench", options, filters, workers=workers, progress=False)
            ours_s.append(time.perf_counter() - started)
            cpu["build"].append(_cpu() - c0)
            hashes.add(result.version.content_hash)
            if r < 2:
                c0, started = _cpu(), time.perf_counter()
                single = build_dataset(cfg, "bench", options, filters, workers=1, progress=False)
                single_s.append(time.perf_counter() - started)
                cpu["single"].append(_cpu() - c0)
                hashes.add(single.version.content_hash)
        load_after = os.getloadavg()[0]
        arr = load_images(single.version)
        assert arr.shape == (n, 256, 256) and arr.dtype == np.uint8

    base_rate = n / min(baseline_s)
    ours_rate = n / min(ours_s)
    single_rate = n / min(single_s)
    ratio = ours_rate / base_rate
    ms = {k: 1000 * min(v) / n for k, v in cpu.items()}
    lines = [
        "## Dataset build vs the seed notebook",
        "",
        f"{n} stored instances: {stored_jpegs} FracAtlas JPEGs wrapped as CR by `dataset import-images` "
        f"(373x454 up to 2304x2880, 8 bits) plus pydicom-data RG1 and RG3 (CR, MONOCHROME1, 15 and 10 bits); "
        f"{total_bytes / 1e6:.0f} MB, read from the page cache by both. Best of {ROUNDS} interleaved runs.",
        "",
        "| pipeline | processes | output | best wall s | img/s | vs seed | CPU ms/img | vs seed (CPU) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| seed notebook (pydicom, min-max, Pillow resize, JPG) | 1 | JPG q75, aspect lost | {min(baseline_s):.2f} | {base_rate:.0f} | 1.00x | {ms['seed']:.2f} | 1.00x |",
        f"| `dataset build` | {workers} | images.npy uint8, lossless | {min(ours_s):.2f} | {ours_rate:.0f} | **{ratio:.2f}x** | {ms['build']:.2f} | {ms['seed'] / ms['build']:.2f}x |",
        f"| `dataset build --workers 1` | 1 | images.npy uint8, lossless | {min(single_s):.2f} | {single_rate:.0f} | {single_rate / base_rate:.2f}x | {ms['single']:.2f} | {ms['seed'] / ms['single']:.2f}x |",
        "",
        f"Load average {load_before:.1f} before and {load_after:.1f} after the runs ({os.cpu_count()} cores). "
        f"Worker processes started by {start_method}, as `synthpacs dataset build` starts them. "
        f"All wall times: seed {', '.join(f'{s:.2f}' for s in baseline_s)} s; build {', '.join(f'{s:.2f}' for s in ours_s)} s; "
        f"build --workers 1 {', '.join(f'{s:.2f}' for s in single_s)} s "
        f"(median ratio {statistics.median(baseline_s) / statistics.median(ours_s):.2f}x). "
        f"The build's time includes starting its worker processes, the index query, the sha256 check of every file, "
        f"the contact sheet and the atomic commit. Content hash identical across all {ROUNDS + len(single_s)} builds: "
        f"{'yes' if len(hashes) == 1 else 'NO'}. Importing the {jpegs} JPEGs (decode, wrap, de-identify, fsync, index) "
        f"took {import_seconds:.1f} s ({jpegs / import_seconds:.0f} files/s).",
    ]
    print("\n".join(lines))
    write_section("dataset", "\n".join(lines))


if __name__ == "__main__":
    main()
