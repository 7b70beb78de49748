"""StyleGAN3 (configs T and R) on this machine's CPU: generator forward+backward throughput at 64 px,
what 256 px costs per image, the activation memory the memory-lean layers save, and EQ-T at
initialization. The peer, measured in the same run, is the project's DCGAN generator at 64 px.

GPU numbers (seconds per kimg and peak memory at 256 px, batch 16 and 32) need a GPU; when none is
present the section says so instead of guessing.

Run alone with ``python -m bench stylegan3``. ``SYNTHPACS_BENCH_SG3_256_BACKWARD=1`` also times a
forward+backward pass at 256 px (several minutes on a 2-core CPU); by default it is timed only when a
256 px forward pass takes under 45 s.
"""

from __future__ import annotations

import os
import time

import torch

from bench.results import write_section
from models.dcgan import Generator as DCGANGenerator
from models.stylegan3 import Generator
from models.stylegan3.equivariance import eq_t_psnr, random_shifts


def _fwd_bwd_seconds(G: torch.nn.Module, batch: int, repeats: int = 1) -> float:
    """Seconds for one forward+backward pass of the generator over ``batch`` latents (mean of
    ``repeats``, after a warm-up forward pass that builds the kernels' caches)."""
    z_dim = G.z_dim
    with torch.no_grad():
        G(torch.randn(1, z_dim))
    total = 0.0
    for _ in range(repeats):
        z = torch.randn(batch, z_dim)
        G.zero_grad(set_to_none=True)
        started = time.perf_counter()
        out = G(z, clamp=False) if isinstance(G, Generator) else G(z)
        out.square().mean().backward()
        total += time.perf_counter() - started
    return total / repeats


def _forward_seconds(G: torch.nn.Module, batch: int) -> float:
    with torch.no_grad():
        started = time.perf_counter()
        G(torch.randn(batch, G.z_dim))
        return time.perf_counter() - started


def saved_activation_bytes(config: str, resolution: int, batch: int, memory_budget: int | None) -> int:
    """Bytes the generator's forward pass keeps for the backward pass (fp32), counted exactly on
    PyTorch's meta device: shapes and dtypes are real, no arithmetic is done."""
    G = Generator(resolution=resolution, config=config, memory_budget=memory_budget).to("meta")
    sizes: dict[int, int] = {}
    keep = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        keep.append(t)  # hold a reference so ids stay unique while counting
        sizes[id(t)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        G(torch.randn(batch, G.z_dim, device="meta"), clamp=False)
    return sum(sizes.values())


def _eq_t(config: str) -> float:
    torch.manual_seed(0)
    G = Generator(z_dim=16, w_dim=16, resolution=64, config=config, channel_base=1024 * (2 if config == "r" else 1), channel_max=32 * (2 if config == "r" else 1), magnitude_ema_beta=0.0).eval()
    with torch.no_grad():
        G(torch.randn(8, 16), update_emas=True)
    return eq_t_psnr(G, torch.randn(8, 16), random_shifts(64, 4, torch.Generator().manual_seed(1)))


def main() -> None:
    torch.manual_seed(0)
    load = os.getloadavg()[0]
    threads = torch.get_num_threads()
    lines = ["## StyleGAN3 (`bench/bench_stylegan3.py`)", ""]

    # Throughput at 64 px, the published layer widths (channel base 32768, max 512; R doubled).
    rows = []
    batch = 2
    for config in ("t", "r"):
        G = Generator(resolution=64, config=config)
        params = sum(p.numel() for p in G.parameters()) / 1e6
        s = _fwd_bwd_seconds(G, batch)
        rows.append((f"StyleGAN3-{config.upper()} G, 64 px ({params:.1f} M parameters)", batch, s))
        print(f"stylegan3-{config} 64 px fwd+bwd: {batch / s:.3f} img/s", flush=True)
    peer = DCGANGenerator(resolution=64)
    peer_params = sum(p.numel() for p in peer.parameters()) / 1e6
    peer_batch = 16
    peer_s = _fwd_bwd_seconds(peer, peer_batch, repeats=3)
    peer_rate = peer_batch / peer_s
    lines += [
        f"CPU, {threads} torch threads, load average {load:.1f} at the start (the machine is shared: these are lower bounds).",
        "Generator forward+backward (a mean-square loss on the raw output), fp32, memory-lean layers on.",
        "",
        "| network | batch | s per pass | images/s | vs DCGAN G |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, b, s in rows:
        lines.append(f"| {name} | {b} | {s:.1f} | {b / s:.3f} | {(b / s) / peer_rate:.4f}x |")
    lines.append(f"| DCGAN G, 64 px ({peer_params:.1f} M parameters; peer) | {peer_batch} | {peer_s:.2f} | {peer_rate:.1f} | 1x |")

    # 256 px per image.
    G256 = Generator(resolution=256, config="t")
    fwd = _forward_seconds(G256, 1)
    print(f"stylegan3-t 256 px forward: {fwd:.1f} s/img", flush=True)
    lines += ["", "StyleGAN3-T at 256 px, published widths, batch 1 on the CPU:", "", f"- forward (inference): {fwd:.1f} s per image"]
    if os.environ.get("SYNTHPACS_BENCH_SG3_256_BACKWARD") == "1" or fwd < 45:
        fb = _fwd_bwd_seconds(G256, 1)
        lines.append(f"- forward+backward: {fb:.1f} s per image")
    else:
        lines.append("- forward+backward: not timed (over 45 s per forward here; set SYNTHPACS_BENCH_SG3_256_BACKWARD=1)")
    del G256

    # Activation memory: what the forward pass keeps for backward, plain autograd vs memory-lean layers.
    lines += [
        "",
        "Activation memory kept for the backward pass by G's forward at 256 px, fp32, published widths (counted on",
        "the meta device: exact sizes, no arithmetic; bf16 autocast on a GPU halves them):",
        "",
        "| config | batch | plain autograd | memory-lean layers (default) | ratio |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for config in ("t", "r"):
        for b in (16, 32):
            plain = saved_activation_bytes(config, 256, b, None)
            lean = saved_activation_bytes(config, 256, b, 1 << 27)
            lines.append(f"| {config.upper()} | {b} | {plain / 2**30:.1f} GiB | {lean / 2**30:.1f} GiB | {plain / lean:.0f}x |")

    # Equivariance at initialization.
    eq = {c: _eq_t(c) for c in ("t", "r")}
    lines += [
        "",
        f"EQ-T (integer shifts, paper §2 definition) of initialized 64 px networks with calibrated magnitude EMAs: "
        f"T {eq['t']:.1f} dB, R {eq['r']:.1f} dB (tests require >= 60 dB; the paper reports 60-65 dB for trained T).",
    ]

    if torch.cuda.is_available():
        lines += ["", f"A GPU ({torch.cuda.get_device_name(0)}) is present; GPU throughput is not part of this CPU benchmark yet."]
    else:
        lines += [
            "",
            "**GPU: not measured.** No GPU was lent to the session that wrote this benchmark, so seconds per kimg and peak",
            "memory at 256 px (batch 16 and 32, T and R) are open. Anchors to compare with when measured: NVlabs' StyleGAN3-T",
            "49.8 s/kimg at 9.5 GB and R 56.7 s/kimg on one A100 (their custom CUDA kernels); the seed 6 h for 100 kimg with",
            "18 GB; target T <= 40 s/kimg on one H100 and <= 10 GB at batch 16. `python -m bench gpu` measures them on a GPU",
            "machine (README, \"GPU run\").",
        ]
    write_section("stylegan3", "\n".join(lines))
