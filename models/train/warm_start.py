"""Start a new run from the weights of another run's checkpoint: fine-tuning, and growing the conditions.

Fine-tuning a trained generator is how a small data set gets a good model without training from
scratch (transfer learning for GANs: Wang et al. 2018, "Transferring GANs: generating images from
limited data", which found that initializing both G and D from a pre-trained pair beats training from
scratch on a few hundred images; Mo et al. 2020 and Karras et al. 2020, ADA §4, start from pre-trained
weights too). ``synthpacs train --init-from CHECKPOINT`` takes G, D and G_ema from a checkpoint of a run
of the same architecture and size; the new run starts at iteration 0 with fresh optimizers, its own
data set and its own length.

The conditions may grow. A run conditioned on body part can start one conditioned on body part, view
and finding (the bundled ``demo-cdcgan:v2`` started from ``v1``'s 1,200 epochs): in the DCGAN, each
field has its own embedding table in G (:class:`models.dcgan.networks.Generator`) and its own projection
in D (Miyato & Koyama 2018, eq. 3), so

- tables and projections of a field both runs have are copied value by value (by name, so a value list
  that gained or reordered values keeps what it learned; a new value starts from the fresh initialization);
- a field only the new run has keeps its fresh initialization, and the weights of G's first layer that
  read its embedding start at zero: at iteration 0 the new generator draws exactly what the old one drew,
  and learns from there how the new field changes the image;
- every other tensor must have the same name and shape in both, or the start is refused with the
  differences named (another resolution, width or architecture is a new model, not a warm start).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from models.conditions import ConditionError, ConditionSpace


class WarmStartError(ValueError):
    """The checkpoint cannot initialize this run; the message says why."""


# G: one embedding table per field, (values, embed_dim); G's first transposed convolution, whose input
# rows are z, then each field's embedding in field order.
_G_EMBED = re.compile(r"^embed\.(?P<field>[a-z][a-z0-9_]*)$")
_G_FIRST = "main.0.weight"
# D: one projection per field, Linear(values -> width); with spectral norm its weight is a parametrization,
# whose power-iteration vector _v has one entry per value (re-estimated from scratch when values change).
_D_PROJECT = re.compile(r"^project\.(?P<field>[a-z][a-z0-9_]*)\.(?P<rest>weight|parametrizations\.weight\.original|parametrizations\.weight\.0\._u|parametrizations\.weight\.0\._v)$")


def _space(hparams: Mapping[str, Any]) -> ConditionSpace | None:
    conditions = hparams.get("conditions")
    try:
        return ConditionSpace.from_json(conditions) if conditions else None
    except ConditionError as exc:
        raise WarmStartError(f"the checkpoint's conditions are not readable: {exc}") from None


def _value_rows(old_values: tuple[str, ...], new_values: tuple[str, ...]) -> list[tuple[int, int]]:
    """(new index, old index) for every value both lists have."""
    return [(i, old_values.index(v)) for i, v in enumerate(new_values) if v in old_values]


def check_compatible(state: Mapping[str, Any], arch: str, resolution: int, channels: int, hparams: Mapping[str, Any], source: Path | str) -> None:
    """Refuse a checkpoint of another architecture, size, or network width."""
    if state.get("arch") != arch:
        raise WarmStartError(f"{source} is a checkpoint of architecture {state.get('arch')!r}; this run trains {arch!r}")
    if int(state.get("resolution", -1)) != int(resolution) or int(state.get("channels", -1)) != int(channels):
        raise WarmStartError(
            f"{source} was trained at {state.get('resolution')} px with {state.get('channels')} channel(s); this run is "
            f"{resolution} px with {channels}: a warm start needs the same image size"
        )
    old = state.get("hparams") or {}
    for key in ("z_dim", "g_channels", "d_channels", "max_channels", "spectral_norm", "minibatch_std", "d_batch_norm", "embed_dim"):
        if key in old or key in hparams:
            a, b = old.get(key), hparams.get(key)
            if key in ("minibatch_std", "d_batch_norm", "spectral_norm"):
                default = key == "d_batch_norm"
                a, b = bool(default if a is None else a), bool(default if b is None else b)
            if key == "embed_dim" and (not old.get("conditions") or not hparams.get("conditions")):
                continue
            if a != b:
                raise WarmStartError(f"{source} has {key}={a!r}; this run has {key}={b!r}: the networks differ, so their weights do not carry over")


def transfer(module: nn.Module, source: Mapping[str, torch.Tensor], old_space: ConditionSpace | None, new_space: ConditionSpace | None,
             z_dim: int, embed_dim: int, label: str) -> dict[str, list[str]]:
    """Copy ``source`` (a state dict) into ``module`` by the rules of the module docstring; returns what
    was copied, grown (copied in part) and left fresh, by tensor name."""
    target = module.state_dict()
    report: dict[str, list[str]] = {"copied": [], "grown": [], "fresh": []}
    old_fields = dict(old_space.fields) if old_space else {}
    new_fields = dict(new_space.fields) if new_space else {}
    mismatched = []
    with torch.no_grad():
        for key, t in target.items():
            s = source.get(key)
            m = _G_EMBED.match(key) or _D_PROJECT.match(key)
            if m is not None and m["field"] in new_fields:
                field = m["field"]
                if field not in old_fields or s is None:
                    report["fresh"].append(key)
                    continue
                rows = _value_rows(old_fields[field], new_fields[field])
                rest = m.groupdict().get("rest")
                if rest is None:  # G's table: one row per value
                    for i, j in rows:
                        t[i].copy_(s[j])
                elif rest.endswith("_u"):  # one entry per output feature: the same in both
                    t.copy_(s)
                elif rest.endswith("_v"):  # one entry per value: re-estimated by the power iteration
                    if s.shape == t.shape and old_fields[field] == new_fields[field]:
                        t.copy_(s)
                else:  # the projection's weight: one column per value
                    for i, j in rows:
                        t[:, i].copy_(s[:, j])
                report["copied" if old_fields[field] == new_fields[field] else "grown"].append(key)
                continue
            if key == _G_FIRST and s is not None and s.shape != t.shape and new_space is not None:
                t.zero_()
                t[:z_dim].copy_(s[:z_dim])
                old_offset = {}
                offset = z_dim
                for name, _values in (old_space.fields if old_space else ()):
                    old_offset[name] = offset
                    offset += embed_dim
                if offset != s.shape[0]:
                    raise WarmStartError(f"{label}.{key}: the checkpoint's first layer reads {s.shape[0]} inputs, not z and {len(old_offset)} embeddings")
                offset = z_dim
                for name, _values in new_space.fields:
                    if name in old_offset:
                        t[offset : offset + embed_dim].copy_(s[old_offset[name] : old_offset[name] + embed_dim])
                    offset += embed_dim
                report["grown"].append(key)
                continue
            if s is None or s.shape != t.shape:
                mismatched.append(f"{label}.{key} ({'absent' if s is None else tuple(s.shape)} in the checkpoint, {tuple(t.shape)} here)")
                continue
            t.copy_(s)
            report["copied"].append(key)
    if mismatched:
        shown = "; ".join(mismatched[:4]) + (f"; and {len(mismatched) - 4} more" if len(mismatched) > 4 else "")
        raise WarmStartError(f"the checkpoint's weights do not fit this run's networks: {shown}")
    module.load_state_dict(target)
    return report


def warm_start(nets: Any, state: Mapping[str, Any], hparams: Mapping[str, Any], source: Path | str) -> dict[str, Any]:
    """Initialize ``nets`` (G, D, G_ema) from checkpoint ``state``; a summary for the run's log and run.json."""
    old_space, new_space = _space(state.get("hparams") or {}), _space(hparams)
    if old_space is not None and new_space is None:
        raise WarmStartError(f"{source} is a conditional model ({old_space.describe()}); train this run with --condition too, or start from scratch")
    saved = state.get("nets") or {}
    z_dim, embed_dim = int(hparams.get("z_dim", 0) or 0), int(hparams.get("embed_dim", 0) or 0)
    summary: dict[str, Any] = {"checkpoint": str(source), "iteration": int((state.get("progress") or {}).get("iteration", 0))}
    for name, module in nets.items():
        src = saved.get(name)
        if src is None and name == "G_ema":
            src = saved.get("G")  # a run without EMA: the average starts at the generator
        if src is None:
            raise WarmStartError(f"{source} holds no {name} weights")
        report = transfer(module, src, old_space, new_space, z_dim, embed_dim, name)
        summary[name] = {k: len(v) for k, v in report.items()}
        if report["grown"] or report["fresh"]:
            summary[f"{name}_changed"] = sorted(report["grown"] + report["fresh"])
    if old_space is not None or new_space is not None:
        summary["conditions_before"] = old_space.to_json() if old_space else None
        summary["conditions_after"] = new_space.to_json() if new_space else None
    return summary
