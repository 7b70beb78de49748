"""gRPC inference with dynamic batching against the raw batched forward pass, in one run on this machine.

Three measurements of the same generator, interleaved over several rounds (best round counts: other work
on a shared machine only ever slows a run down):

* (a) the raw forward pass in-process (``LoadedModel.run``: latents in, float images on the CPU out) at
  the batch size the batcher reached in (b);
* (b) ``InferenceServer`` with dynamic batching on its defaults (max_batch 32, max_queue_delay_ms 5),
  16 concurrent clients (grpc.aio tasks in a separate process), each asking for one image at a time
  (``count=1``, RAW_UINT8, a new seed every call) over a real loopback channel;
* (c) the same server with batching off (``inference.batching = false``), same clients.

Three more measurements say how far the targets can be reached on the machine at hand:

* one client asking for 32 images per call: the per-call cost paid once for 32 images, against the raw
  forward at batch 32;
* the serving ceiling: the server of (b) and the same clients, with the model's forward pass replaced by
  one that returns zeros at once. Everything else a call costs (the clients, gRPC, validation, the
  batcher, latents, quantization, the response) still runs, so no forward pass, however fast, lets (b)
  go beyond it;
* the raw forward through oneDNN's transposed convolution (DCGAN only), the fastest CPU kernel here but
  not batch-invariant, so not what the server runs (``models.dcgan.networks._batch_invariant``).

When the forward pass uses every core, it and the serving work take CPU time from the same cores, so
(b) can reach at most ``1 / (1 / ceiling + 1 / forward)`` images/s, ``forward`` being the best raw
rate at any batch size; with one intra-op thread, one worker thread runs every pass, so (b) can reach
at most ``forward``. Dividing by (c) bounds what batching can show, whichever kernel served.

Latency is per call as the client sees it. Targets (issue 7): (b) >= 0.9x (a) and (b) >= 3x (c).

On a machine with a CUDA GPU the same (a), (b), (c) also run there at 256 px, with an untrained DCGAN of
the demo architecture at that size (a forward pass costs the same trained or not), in the precision the
server picks (half where it keeps the images right). ``BENCH_INFERENCE_LARGE_DEVICE=cpu`` runs that part
on the CPU instead, to try it on a machine without a GPU; ``none`` skips it.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import tempfile
import time
from pathlib import Path

from bench.results import write_section

CLIENTS = 16
MAX_BATCH = 32  # the server default (inference.max_batch)
SECONDS = float(os.environ.get("BENCH_INFERENCE_SECONDS", "8"))
WARMUP = 2.0
ROUNDS = int(os.environ.get("BENCH_INFERENCE_ROUNDS", "3"))


def _client_process(address: str, model: str, clients: int, warmup: float, seconds: float, out: mp.Queue, count: int = 1) -> None:
    """Run ``clients`` concurrent callers, each asking for ``count`` images per call, for warmup + seconds;
    put (errors, latencies of measured calls, seconds). The callers are asyncio tasks on grpc.aio: the
    cheapest client in CPU, which matters when clients and server share two cores."""
    import asyncio

    import grpc

    from synthpacs.v1 import synthesizer_pb2 as pb
    from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc

    async def run() -> tuple[list[str], list[float]]:
        async with grpc.aio.insecure_channel(address) as channel:
            await asyncio.wait_for(channel.channel_ready(), 60)
            stub = pb_grpc.SynthesizerStub(channel)
            start = time.perf_counter()
            measure_from, stop_at = start + warmup, start + warmup + seconds
            latencies: list[float] = []
            errors: list[str] = []

            async def caller(i: int) -> None:
                k = 0
                while True:
                    t0 = time.perf_counter()
                    if t0 >= stop_at:
                        return
                    try:
                        images = [img async for img in stub.Generate(
                            pb.GenerateRequest(model=model, count=count, first_seed=i * 10_000_000 + k * count, encoding=pb.ENCODING_RAW_UINT8), timeout=60)]
                    except grpc.RpcError as exc:
                        errors.append(f"{exc.code().name}: {exc.details()}")
                        return
                    t1 = time.perf_counter()
                    k += 1
                    if len(images) != count:
                        errors.append(f"expected {count} images, got {len(images)}")
                        return
                    if t0 >= measure_from and t1 <= stop_at:
                        latencies.append(t1 - t0)

            await asyncio.gather(*(caller(i) for i in range(clients)))
            return errors, latencies

    errors, latencies = asyncio.run(run())
    out.put((errors, latencies, seconds))


def _run_clients(address: str, model: str, clients: int = CLIENTS, count: int = 1) -> dict:
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_client_process, args=(address, model, clients, WARMUP, SECONDS, queue, count))
    proc.start()
    errors, latencies, seconds = queue.get(timeout=WARMUP + SECONDS + 180)
    proc.join(60)
    if errors:
        raise RuntimeError(f"clients failed: {errors[:3]}")
    latencies.sort()
    return {
        "img_s": count * len(latencies) / seconds,
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "calls": len(latencies),
    }


def _raw_forward(model, batch: int, seconds: float, run=None) -> dict:
    """Time ``run`` (``model.run`` unless given) on ``batch`` latents for ``seconds``."""
    from models.sampling import latents

    run = run or model.run
    z = latents(list(range(batch)), model.z_dim)
    for _ in range(3):
        run(z)
    times = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        run(z)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"img_s": batch * len(times) / sum(times), "p50_ms": 1000 * times[len(times) // 2], "p99_ms": 1000 * times[min(len(times) - 1, int(len(times) * 0.99))]}


def _zero_forward(model) -> None:
    """Replace this loaded model's forward pass with one that costs nothing (the serving ceiling)."""
    import torch

    shape = (model.channels, model.resolution, model.resolution)
    model.run = lambda z, psi=1.0, c=None: torch.zeros((z.shape[0], *shape))


def _onednn_forward(model, batch: int, seconds: float) -> dict | None:
    """The DCGAN's layers straight through oneDNN (what ``net.main`` runs), timed like :func:`_raw_forward`."""
    import torch

    main = getattr(model.net, "main", None)
    if main is None or model.device.type != "cpu":
        return None

    def run(z):
        with torch.inference_mode():
            return main(z[:, :, None, None])

    return _raw_forward(model, batch, seconds, run=run)


def _model_source(models_dir: Path):
    """The bundled demo generator when it exists, else an untrained DCGAN of the same architecture."""
    from models.registry import BUNDLED_ROOT, Registry

    if (BUNDLED_ROOT / "demo-dcgan").is_dir():
        registry = Registry.with_bundled(models_dir)
        mv = registry.resolve("demo-dcgan")
        return registry, "demo-dcgan", f"the bundled demo generator `{mv.ref}` ({mv.card.get('architecture')}, {mv.card.get('resolution')} px)"
    from models.dcgan import Generator

    registry = Registry([models_dir])
    net = Generator()
    mv = registry.export(net, {"architecture": "dcgan"}, "demo-dcgan")
    kw = net.init_kwargs
    return registry, "demo-dcgan", (
        f"an **untrained** DCGAN of the demo architecture (`models/dcgan/` Generator, {kw['resolution']} px, z_dim {kw['z_dim']}, "
        f"{sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters): the bundled demo model `models/bundled/demo-dcgan` "
        "was not committed when this ran; the forward pass costs the same with trained weights"
    )


def _large_model(models_dir: Path, resolution: int = 256):
    """An untrained DCGAN of the demo architecture at ``resolution`` px, exported into its own registry."""
    from models.dcgan import Generator
    from models.registry import Registry

    registry = Registry([models_dir])
    net = Generator(resolution=resolution)
    mv = registry.export(net, {"architecture": "dcgan"}, f"dcgan-{resolution}")
    described = (f"an untrained DCGAN of the demo architecture at {resolution} px "
                 f"({sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters in the generator)")
    return registry, mv.name, described


def _large_device() -> str | None:
    """Where the 256 px part runs: the env override, else CUDA when there is a GPU, else nowhere."""
    import torch

    wanted = os.environ.get("BENCH_INFERENCE_LARGE_DEVICE", "").strip().lower()
    if wanted in ("none", "off"):
        return None
    if wanted:
        return wanted
    return "cuda" if torch.cuda.is_available() else None


def _compare(home: Path, registry, ref: str, cpu_threads: int, device: str = "cpu") -> dict:
    """(a), (b), (c) and raw forwards at batch 1 and max, ROUNDS interleaved rounds; the best of each."""
    import torch

    from service.config import load_config
    from service.inference.calibrate import pad_to
    from service.inference.server import InferenceServer

    torch.set_num_threads(cpu_threads or os.cpu_count() or 1)

    def server(batching: bool) -> InferenceServer:
        cfg = load_config(path=None, env={}, overrides={
            "home": str(home), "grpc.port": 0, "metrics.enabled": False, "log.level": "warning", "inference.device": device,
            "inference.preload": [ref], "inference.reload_interval_s": 0, "inference.batching": batching, "inference.cpu_threads": cpu_threads,
        })
        s = InferenceServer(cfg, registry=registry)
        s.start()
        s.cache.get(ref)
        return s

    batched, unbatched, ceiling = server(True), server(False), server(True)
    model = batched.cache.get(ref)
    _zero_forward(ceiling.cache.get(ref))
    results: dict[str, list[dict]] = {"a": [], "b": [], "c": [], "a1": [], "amax": [], "ceiling": [], "onednn": [], "bulk": []}
    try:
        for round_ in range(ROUNDS):
            before = (batched.batcher.stats.images, batched.batcher.stats.batches)
            b = _run_clients(batched.address, ref)
            images, batches = batched.batcher.stats.images - before[0], batched.batcher.stats.batches - before[1]
            b["mean_batch"] = images / max(batches, 1)
            results["b"].append(b)
            size = pad_to(model.batch_sizes, max(1, round(b["mean_batch"])))
            a = _raw_forward(model, size, SECONDS)
            a["batch"] = size
            results["a"].append(a)
            results["c"].append(_run_clients(unbatched.address, ref))
            results["a1"].append(_raw_forward(model, 1, SECONDS / 2))
            results["amax"].append(_raw_forward(model, MAX_BATCH, SECONDS / 2))
            results["bulk"].append(_run_clients(batched.address, ref, clients=1, count=MAX_BATCH))
            before = (ceiling.batcher.stats.images, ceiling.batcher.stats.batches)
            top = _run_clients(ceiling.address, ref)
            top["mean_batch"] = (ceiling.batcher.stats.images - before[0]) / max(ceiling.batcher.stats.batches - before[1], 1)
            results["ceiling"].append(top)
            onednn = _onednn_forward(model, MAX_BATCH, SECONDS / 2)
            if onednn is not None:
                results["onednn"].append(onednn)
            print(f"threads {torch.get_num_threads()}, round {round_ + 1}/{ROUNDS}: (a) {a['img_s']:.0f} img/s at batch {size}, "
                  f"(b) {b['img_s']:.0f} img/s (mean batch {b['mean_batch']:.1f}), (c) {results['c'][-1]['img_s']:.0f} img/s, "
                  f"serving ceiling {top['img_s']:.0f} img/s", flush=True)
    finally:
        batched.stop(grace=1.0)
        unbatched.stop(grace=1.0)
        ceiling.stop(grace=1.0)
    best = {k: max(v, key=lambda r: r["img_s"]) for k, v in results.items() if v}
    best["threads"] = torch.get_num_threads()
    best["device"] = str(model.device)
    best["dtype"] = str(model.dtype).replace("torch.", "")
    best["sizes"] = list(model.batch_sizes)
    best["consistent"] = list(model.calibration.consistent)
    best["ms_per_image"] = {s: round(1000 * t / s, 1) for s, t in model.calibration.seconds.items()}
    return best


def _bound(r: dict, forward: float) -> float:
    """The most images/s (b) can reach with a forward pass of ``forward`` images/s at best (module docstring)."""
    if r["threads"] == 1:
        return min(forward, r["ceiling"]["img_s"])
    return 1.0 / (1.0 / r["ceiling"]["img_s"] + 1.0 / forward)


def _bound_note(r: dict, served_best: float) -> str:
    """What the serving ceiling and the forward's best rate allow (b) to reach (module docstring)."""
    if not r["device"].startswith("cpu"):
        return "The CPU bound does not apply on a GPU: the forward pass does not share the CPU's cores with the serving work."
    c, a, ceil, onednn = r["c"]["img_s"], r["a"]["img_s"], r["ceiling"]["img_s"], r.get("onednn")
    threads = r["threads"]
    note = (f"Bound: with {threads} intra-op thread{'s' if threads > 1 else ''} (b) can reach at most "
            f"**{_bound(r, served_best):.0f} img/s** with the served kernel, so (b)/(c) <= **{_bound(r, served_best) / c:.2f}x**")
    if onednn:
        note += f"; with oneDNN's kernel at most {_bound(r, onednn['img_s']):.0f} img/s, (b)/(c) <= {_bound(r, onednn['img_s']) / c:.2f}x"
    note += " (module docstring: serving ceiling and forward share the cores)."
    if threads > 1:
        # 1 / (1/C + 1/a) >= 0.9 a  <=>  C >= 9 a
        note += (f" For (b) >= 0.9x (a) while the forward uses every core, the serving ceiling would have to reach 9x (a), "
                 f"{9 * a:.0f} img/s; it is {ceil:.0f}.")
    return note


def _table(r: dict) -> list[str]:
    a, b, c, a1, amax, ceil = r["a"], r["b"], r["c"], r["a1"], r["amax"], r["ceiling"]
    served_best = max(a["img_s"], a1["img_s"], amax["img_s"])
    onednn = r.get("onednn")
    onednn_row = ([f"| raw forward through oneDNN (not batch-invariant, not served), batch {MAX_BATCH} | {onednn['img_s']:.0f} | "
                   f"{onednn['img_s'] / a['img_s']:.2f}x | {onednn['p50_ms']:.1f} per pass | {onednn['p99_ms']:.1f} per pass | {MAX_BATCH} |"]
                  if onednn else [])
    bound_note = _bound_note(r, served_best)
    return [
        "| measurement | img/s | vs (a) | p50 ms | p99 ms | images per forward pass |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        f"| (a) raw forward in-process, batch {a['batch']} | {a['img_s']:.0f} | 1.00x | {a['p50_ms']:.1f} per pass | {a['p99_ms']:.1f} per pass | {a['batch']} |",
        f"| (b) gRPC, {CLIENTS} clients x 1 image, dynamic batching | {b['img_s']:.0f} | {b['img_s'] / a['img_s']:.2f}x | {b['p50_ms']:.1f} | {b['p99_ms']:.1f} | {b['mean_batch']:.1f} (mean) |",
        f"| (c) gRPC, {CLIENTS} clients x 1 image, batching off | {c['img_s']:.0f} | {c['img_s'] / a['img_s']:.2f}x | {c['p50_ms']:.1f} | {c['p99_ms']:.1f} | 1 |",
        f"| raw forward in-process, batch 1 | {a1['img_s']:.0f} | {a1['img_s'] / a['img_s']:.2f}x | {a1['p50_ms']:.1f} per pass | {a1['p99_ms']:.1f} per pass | 1 |",
        f"| raw forward in-process, batch {MAX_BATCH} | {amax['img_s']:.0f} | {amax['img_s'] / a['img_s']:.2f}x | {amax['p50_ms']:.1f} per pass | {amax['p99_ms']:.1f} per pass | {MAX_BATCH} |",
        *onednn_row,
        f"| gRPC, 1 client x {MAX_BATCH} images per call, dynamic batching | {r['bulk']['img_s']:.0f} | {r['bulk']['img_s'] / a['img_s']:.2f}x | "
        f"{r['bulk']['p50_ms']:.1f} per call | {r['bulk']['p99_ms']:.1f} per call | {MAX_BATCH} per call |",
        f"| serving ceiling: (b) with a forward pass that costs nothing | {ceil['img_s']:.0f} | {ceil['img_s'] / a['img_s']:.2f}x | {ceil['p50_ms']:.1f} | {ceil['p99_ms']:.1f} | {ceil['mean_batch']:.1f} (mean) |",
        "",
        f"Targets (issue 7): (b) >= 0.9x (a): **{b['img_s'] / a['img_s']:.2f}x**; (b) >= 3x (c): **{b['img_s'] / c['img_s']:.2f}x** "
        f"(the raw forward at batch {MAX_BATCH} makes {amax['img_s'] / a1['img_s']:.2f}x the images per second of batch 1 here, "
        "so that is about the most batching could give).",
        "",
        bound_note,
        "",
        f"Calibration at load: sizes with bit-identical images {r['consistent']}, best time per image (ms) {r['ms_per_image']}, "
        f"sizes the batcher used {r['sizes']}.",
    ]


def main() -> None:
    import torch

    from service.logs import configure

    configure(level="warning")  # the servers' per-request log lines would share the 2 cores with them
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="synthpacs-bench-inference-") as tmp:
        home = Path(tmp)
        registry, ref, described = _model_source(home / "models")
        threads = torch.get_num_threads()
        large_device = _large_device()
        try:
            default = _compare(home, registry, ref, 0)
            single = _compare(home, registry, ref, 1)
            large = None
            if large_device is not None:
                large_registry, large_ref, large_described = _large_model(home / "models-256")
                large = _compare(home, large_registry, large_ref, 0, device=large_device)
        finally:
            torch.set_num_threads(threads)  # `python -m bench` runs the training benchmark next, in this process
    load_after = os.getloadavg()[0]
    if large is None:
        large_part = ["", "No GPU was lent to this session, so the issue's 256 px GPU run was not made "
                      "(on a machine with one, this benchmark makes it: module docstring)."]
    else:
        where = large["device"]
        if where.startswith("cuda"):
            where = f"GPU ({torch.cuda.get_device_name(torch.device(where))})"
        large_part = ["", f"**256 px on {where}, {large['dtype']}: {large_described}**", "", *_table(large)]
    md = "\n".join([
        "## gRPC inference (`bench/bench_inference.py`)",
        "",
        f"Generator: {described}. Device: CPU, float32. "
        f"Server defaults: max_batch {MAX_BATCH}, max_queue_delay_ms 5. Clients: {CLIENTS} grpc.aio tasks in a separate process on the same {os.cpu_count()} cores, "
        "each calling Generate(count=1, RAW_UINT8) "
        f"with a new seed; {SECONDS:.0f} s measured after {WARMUP:.0f} s warm-up; best of {ROUNDS} interleaved rounds "
        f"(load average {load_before:.1f} before, {load_after:.1f} after). Request log lines off (log level warning). "
        "(a) runs at the mean batch size (b) reached.",
        "",
        f"**PyTorch default threads ({default['threads']}, `inference.cpu_threads = 0`)**",
        "",
        *_table(default),
        "",
        "**One intra-op thread (`inference.cpu_threads = 1`), server and raw forward alike**",
        "",
        *_table(single),
        *large_part,
    ])
    write_section("inference", md)
    print(md)


if __name__ == "__main__":
    main()
