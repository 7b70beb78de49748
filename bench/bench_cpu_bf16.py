"""bfloat16 on this CPU: is it faster, and does it keep the served images within the calibration's
tolerance? (issue 16, item 5: bf16 only where the CPU supports it natively, float32 where it is not
faster or changes images beyond what the server accepts.)

Measured, float32 against ``torch.autocast("cpu", torch.bfloat16)``, interleaved over rounds (best
round counts), in the same process:

- inference of the bundled demo DCGAN (64 px), batch 32, weights and latents converted to bf16 (its
  batch-invariant kernels are outside autocast's reach): images/s, and the largest pixel difference
  in 8-bit levels over 64 seeds, against the server's tolerance for reduced precision
  (``service.inference.calibrate.HALF_TOLERANCE_LEVELS``, 1 level);
- a 64 px DCGAN training step (G and D forward and backward, Adam), batch 32, under autocast: images/s;
- inference of a StyleGAN3-T generator at 64 px (channel max 64), batch 4: images/s and pixel
  difference, with bf16 applied to the modulated convolutions only (``SpeedOptions.conv_dtype``).

The CPU's native bf16 support is reported from ``torch.backends.cpu.get_cpu_capability()`` and the
``avx512_bf16`` / ``amx_bf16`` flags of /proc/cpuinfo.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from bench.results import write_section

ROUNDS = int(os.environ.get("BENCH_BF16_ROUNDS", "3"))
SECONDS = float(os.environ.get("BENCH_BF16_SECONDS", "3"))
TRAIN_BATCH = 32


def cpu_bf16_support() -> dict[str, object]:
    flags: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    return {"capability": torch.backends.cpu.get_cpu_capability(), "avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags}


def _rate(fn, images: int, seconds: float = SECONDS) -> float:
    fn()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        fn()
        n += images
    return n / (time.perf_counter() - t0)


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _levels(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float().clamp(-1, 1) - b.float().clamp(-1, 1)).abs().max()) * 255 / 2


def _demo_dcgan():
    from models.registry import BUNDLED_ROOT, load_generator

    folder = BUNDLED_ROOT / "demo-dcgan" / "v1"
    if folder.is_dir():
        G, _card = load_generator(folder)
        return G.float().eval(), "bundled demo-dcgan:v1"
    from models.dcgan import Generator, init_weights

    torch.manual_seed(0)
    G = Generator()
    init_weights(G)
    return G.eval(), "an untrained DCGAN of the demo architecture"


def _dcgan_training_step():
    from models.dcgan import Discriminator, Generator, init_weights

    torch.manual_seed(0)
    G, D = Generator(), Discriminator()
    init_weights(G), init_weights(D)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(TRAIN_BATCH, 1, 64, 64) * 2 - 1

    def step(precision):
        def run():
            z = torch.randn(TRAIN_BATCH, G.z_dim)
            with precision():
                fake = G(z)
                loss_d = F.softplus(D(fake.detach())).mean() + F.softplus(-D(real)).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            with precision():
                loss_g = F.softplus(-D(G(z))).mean()
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()

        return run

    return step


def main() -> None:
    from models.sampling import latents
    from models.stylegan3 import Generator as SG3
    from models.stylegan3.speed import SpeedOptions
    from service.inference.calibrate import HALF_TOLERANCE_LEVELS

    support = cpu_bf16_support()
    load = os.getloadavg()[0]
    G, described = _demo_dcgan()
    z32 = latents(list(range(32)), G.z_dim)
    z64 = latents(list(range(64)), G.z_dim)
    # The served DCGAN runs its own batch-invariant kernels, which autocast does not reach: bf16 is
    # tried as the server tries float16, by converting the weights and latents.
    G_bf16 = copy.deepcopy(G).to(torch.bfloat16)
    with torch.inference_mode():
        dcgan_levels = _levels(G_bf16(z64.to(torch.bfloat16)), G(z64))
    zb = z32.to(torch.bfloat16)

    torch.manual_seed(0)
    sg3 = SG3(resolution=64, config="t", channel_max=64).eval()
    sg3_bf16 = copy.deepcopy(sg3)
    sg3_bf16.set_speed(SpeedOptions(conv_dtype=torch.bfloat16))
    zs = latents(list(range(4)), sg3.z_dim)
    with torch.inference_mode():
        sg3_levels = _levels(sg3_bf16(zs), sg3(zs))

    step = _dcgan_training_step()
    rates: dict[str, list[float]] = {k: [] for k in ("dcgan_inf_32", "dcgan_inf_bf16", "train_32", "train_bf16", "sg3_32", "sg3_bf16")}
    for r in range(ROUNDS):
        with torch.inference_mode():
            rates["dcgan_inf_32"].append(_rate(lambda: G(z32), 32))

            rates["dcgan_inf_bf16"].append(_rate(lambda: G_bf16(zb), 32))
            rates["sg3_32"].append(_rate(lambda: sg3(zs), len(zs)))
            rates["sg3_bf16"].append(_rate(lambda: sg3_bf16(zs), len(zs)))
        rates["train_32"].append(_rate(step(contextlib.nullcontext), TRAIN_BATCH))
        rates["train_bf16"].append(_rate(step(_bf16), TRAIN_BATCH))
        print(f"round {r + 1}/{ROUNDS}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in rates.items()), flush=True)
    best = {k: max(v) for k, v in rates.items()}
    tol = HALF_TOLERANCE_LEVELS
    lines = [
        "## bfloat16 on the CPU (`bench/bench_cpu_bf16.py`)",
        "",
        f"CPU capability `{support['capability']}`, avx512_bf16 {'yes' if support['avx512_bf16'] else 'no'}, amx_bf16 {'yes' if support['amx_bf16'] else 'no'}; "
        f"{torch.get_num_threads()} torch threads; load average {load:.1f} at the start; best of {ROUNDS} interleaved rounds of {SECONDS:.0f} s.",
        "",
        "| what | float32 img/s | bf16 img/s | bf16 / float32 | largest pixel change (8-bit levels) |",
        "| --- | ---: | ---: | ---: | ---: |",
        f"| {described}, inference, batch 32 (weights and latents in bf16, as the server tries float16) | {best['dcgan_inf_32']:.0f} | {best['dcgan_inf_bf16']:.0f} | {best['dcgan_inf_bf16'] / best['dcgan_inf_32']:.2f}x | {dcgan_levels:.2f} |",
        f"| DCGAN 64 px training step, batch {TRAIN_BATCH} (autocast) | {best['train_32']:.1f} | {best['train_bf16']:.1f} | {best['train_bf16'] / best['train_32']:.2f}x | |",
        f"| StyleGAN3-T 64 px (channel max 64) inference, batch {len(zs)} (bf16 modulated convolutions) | {best['sg3_32']:.1f} | {best['sg3_bf16']:.1f} | {best['sg3_bf16'] / best['sg3_32']:.2f}x | {sg3_levels:.2f} |",
        "",
        f"The server accepts reduced precision only within {tol:.0f} 8-bit level of float32 (`service/inference/calibrate.py`): "
        + ("bf16 stays within it here. " if max(dcgan_levels, sg3_levels) <= tol else f"bf16 changes pixels by up to {max(dcgan_levels, sg3_levels):.2f} levels, beyond it, so serving stays in float32 on the CPU. ")
        + "Training and inference keep float32 on the CPU by default (`SpeedOptions()`); bf16 is available per run with "
        "`--set 'speed={\"conv_dtype\": \"bfloat16\"}'` (StyleGAN3) where it measures faster.",
    ]
    write_section("cpu_bf16", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
