"""``synthpacs generate``: PNG images from a registry model, on this machine.

The registry is ``<home>/models`` plus the bundled demo model (:meth:`models.registry.Registry.with_bundled`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from models.seeds import MAX_SEED
from service.cli.common import CommandError, add_command, config_from_args, home_from
from service.cli.conditions import add_condition_options, checked


def register(subparsers: argparse._SubParsersAction) -> None:
    gen = add_command(subparsers, "generate", help="generate PNG images from a registry model on this machine",
                      description="Seeds S, S+1, ..., S+N-1 give images MODEL_vK_seedSSSSSSSSSS.png (and manifest.jsonl); the same model, version, seed and psi always give the same pixels.")
    gen.add_argument("model", metavar="MODEL[:vN]", help="model name (latest version) or name:vN")
    gen.add_argument("--count", type=int, default=1, help="number of images (default 1)")
    gen.add_argument("--seed", type=int, default=0, help="first seed (default 0)")
    gen.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    gen.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1: plain samples)")
    gen.add_argument("--bits", type=int, choices=(8, 16), default=8, help="PNG bit depth (default 8)")
    gen.add_argument("--batch", type=int, default=32, help="images per forward pass (does not change the pixels)")
    gen.add_argument("--device", help="auto, cpu, cuda or cuda:N (default inference.device)")
    gen.add_argument("--sheet", type=Path, metavar="PNG", help="also write a contact sheet of all the images (8-bit) to this PNG")
    add_condition_options(gen)
    gen.set_defaults(func=_generate)


def _registry(cfg: Any):
    from models.registry import Registry

    return Registry.with_bundled(home_from(cfg).models_dir)


def _check_generate_args(args: argparse.Namespace) -> None:
    if args.count < 1:
        raise CommandError(f"--count must be at least 1, not {args.count}")
    if not 0 <= args.seed or args.seed + args.count - 1 > MAX_SEED:
        raise CommandError(f"seeds {args.seed}..{args.seed + args.count - 1} must lie in 0..{MAX_SEED}")
    if not math.isfinite(args.psi) or args.psi < 0:
        raise CommandError(f"--psi must be a finite number >= 0, not {args.psi}")
    if args.batch < 1:
        raise CommandError(f"--batch must be at least 1, not {args.batch}")
    if args.out.exists() and not args.out.is_dir():
        raise CommandError(f"--out {args.out} exists and is not a folder")


def file_name(name: str, version: int, seed: int, psi: float, condition: dict[str, str] | None = None) -> str:
    """The image file for one seed; psi appears in the name when it is not 1, a conditional model's
    condition always (the same seed gives another image under another condition)."""
    stem = f"{name}_v{version}"
    if condition:
        from models.conditions import label

        stem += f"_{label(condition)}"
    stem += f"_seed{seed:010d}"
    if psi != 1.0:
        stem += f"_psi{psi:g}"
    return stem + ".png"


def _generate(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    _check_generate_args(args)
    import torch
    from PIL import Image

    from models.registry import RegistryError
    from models.sampling import seeds_to_pixels
    from service.data.progress import Progress
    from models.device import DeviceError, pick_device

    try:
        device = pick_device(args.device or cfg.inference.device, setting_name="inference.device", deterministic=True)
    except DeviceError as exc:
        raise CommandError(str(exc)) from None
    try:
        G, mv = _registry(cfg).load(args.model, device=device)
    except RegistryError as exc:
        raise CommandError(str(exc)) from None
    condition = checked(G, args, mv.ref)
    c = None
    if condition:
        from models.conditions import space_of

        c = torch.from_numpy(space_of(G).encode(condition)).to(device)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.count))
    sheet: list[np.ndarray] = []
    written = 0
    progress = Progress(len(seeds), f"generating with {mv.ref}")
    with open(args.out / "manifest.jsonl", "a") as manifest:
        for i in range(0, len(seeds), args.batch):
            chunk = seeds[i : i + args.batch]
            pixels = seeds_to_pixels(G, chunk, args.psi, bits=args.bits, batch_size=len(chunk), device=device, c=c, gray=False)
            for seed, img in zip(chunk, pixels):
                name = file_name(mv.name, mv.version, seed, args.psi, condition)
                path = args.out / name
                tmp = path.with_name(f".{name}.part")
                # One channel is a grayscale PNG; a uint16 plane becomes Pillow "I;16", a 16-bit PNG.
                plane = img[0] if img.shape[0] == 1 else np.moveaxis(img, 0, -1)
                Image.fromarray(plane).save(tmp, format="PNG")
                os.replace(tmp, path)
                row = {"file": name, "model": mv.ref, "seed": seed, "truncation_psi": args.psi, "bits": args.bits,
                       "width": int(img.shape[-1]), "height": int(img.shape[-2]), "channels": int(img.shape[0]),
                       "pixels_sha256": hashlib.sha256(np.ascontiguousarray(img).tobytes()).hexdigest(), **condition}
                manifest.write(json.dumps(row) + "\n")
                written += 1
                if args.sheet is not None and img.shape[0] == 1:
                    sheet.append(img[0] if img.dtype == np.uint8 else (img[0] >> 8).astype(np.uint8))
            progress.update(len(chunk))
    progress.close()
    if sheet:
        from models.train.grids import save_grid

        save_grid(np.stack(sheet), args.sheet)
    print(f"wrote {written} image(s) from {mv.ref}" + (f" ({', '.join(condition.values())})" if condition else "") + f" to {args.out}"
          + (f"; contact sheet {args.sheet}" if sheet else ""), file=sys.stderr)
    return 0
