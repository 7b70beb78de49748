"""From a training run to the model registry: the inference generator of a checkpoint and its model card.

The card (``model.json``, see :mod:`models.registry`) says what the generator is and where it came
from: architecture and constructor arguments, resolution, channels, latent size, the dataset's name,
version and content hash, how long and on what it was trained, and the last snapshot metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models import registry
from models.conditions import ConditionSpace
from models.train import checkpoint as ckpt
from models.train.recipe import make_recipe
from models.train.rundir import RunDir, RunError

# Card fields the export writes itself; extra fields from the user may not replace them.
RESERVED = frozenset({"conditions", "format", "architecture", "init_kwargs", "resolution", "channels", "z_dim", "dataset", "training", "files", "name", "version", "weights_dtype", "created_at"})


def checkpoint_path(run: RunDir, checkpoint: str | Path | None = None) -> Path:
    """``checkpoint``: None (the newest), a file, or a file name in the run's checkpoints folder."""
    if checkpoint is None:
        info = ckpt.latest_checkpoint(run.checkpoints)
        if info is None:
            raise RunError(f"run {run.path.name} has no checkpoint yet (in {run.checkpoints})")
        return info.path
    p = Path(checkpoint)
    if not p.exists() and (run.checkpoints / p.name).exists():
        p = run.checkpoints / p.name
    return p


def generator_from_checkpoint(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The inference generator (G_ema, or G without EMA) of a checkpoint, and the checkpoint's state.

    Builds the recipe's networks from the hyper-parameters stored in the checkpoint, loads them, and
    copies the inference weights into a plain generator built from the registry's architecture table,
    so what is returned is exactly what ``models.registry.load_generator`` will rebuild.
    """
    state = ckpt.load_checkpoint(path)
    recipe = make_recipe(state["arch"], int(state["resolution"]), int(state["channels"]), **dict(state["hparams"]))
    with torch.random.fork_rng(devices=[]):  # building draws initial weights; leave the caller's RNG alone
        nets = recipe.build()
    try:
        for name, m in nets.items():
            m.load_state_dict(state["nets"][name])
    except (KeyError, RuntimeError) as exc:
        raise ckpt.CheckpointError(f"checkpoint {path} does not fit architecture {state['arch']!r}: {str(exc).splitlines()[0]}") from None
    src = recipe.inference_generator(nets)
    G = registry.build_generator({"architecture": state["arch"], "init_kwargs": dict(src.init_kwargs)})
    G.load_state_dict(src.state_dict())
    return G.eval().requires_grad_(False), state


def model_card(run: RunDir, path: Path, G: nn.Module, state: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    info = run.read_info()
    options = info.get("options", {})
    progress = state["progress"]
    recipe = make_recipe(state["arch"], int(state["resolution"]), int(state["channels"]), **dict(state["hparams"]))
    sessions = list(state.get("sessions") or [])
    card: dict[str, Any] = {
        "architecture": state["arch"],
        "init_kwargs": dict(G.init_kwargs),
        "resolution": int(G.resolution),
        "channels": int(G.channels),
        "z_dim": int(G.z_dim),
        "latent": "z = numpy.random.RandomState(seed).randn(z_dim) (models.sampling)",
        "dataset": dict(state["dataset"]),
        "training": {
            "run_id": run.path.name,
            "checkpoint": path.name,
            "unit": "kimg" if options.get("kimg") is not None else "epoch",
            "epochs": int(progress["epoch"]),
            "partial_epoch_minibatches": int(progress["batch_in_epoch"]),
            "kimg": round(int(progress["cur_nimg"]) / 1000, 3),
            "iterations": int(progress["iteration"]),
            "images_shown": int(progress["cur_nimg"]),
            "batch": int(state["batch"]),
            "world_size": int(state.get("world_size", 1)),
            "seed": options.get("seed"),
            "xflip": options.get("xflip"),
            "wall_time_s": round(float(state.get("wall_time_s", 0.0)), 1),
            "hardware": sorted({s.get("hardware", "") for s in sessions if s.get("hardware")}),
            "sessions": len(sessions),
        },
        "metrics": dict(state.get("snapshot_metrics") or {}),
    }
    if info.get("conditions"):
        # What a conditional model was trained on, per condition: what a user should expect it to know.
        card["conditions"] = {
            "values": ConditionSpace.from_json((G.init_kwargs or {}).get("conditions")).as_dict(),
            **dict(info["conditions"]),
            "how": "generate with one value per field (synthpacs generate --body-part ... --view ... --finding ...); images of the dataset without a value for every field were left out of training",
        }
    card.update(recipe.card())
    for k, v in (extra or {}).items():
        if k in RESERVED:
            raise ValueError(f"card field {k!r} is written by the export and cannot be given")
        card[k] = v
    return card


def export_run(run_path: Path, reg: registry.Registry, name: str, checkpoint: str | Path | None = None, half: bool = False, extra: Mapping[str, Any] | None = None) -> registry.ModelVersion:
    """Write the run's generator as the next version of ``name`` in the registry's first root."""
    run = RunDir(run_path)
    run.read_info()
    registry.validate_name(name)
    path = checkpoint_path(run, checkpoint)
    G, state = generator_from_checkpoint(path)
    card = model_card(run, path, G, state, extra)
    return reg.export(G, card, name, half=half)
