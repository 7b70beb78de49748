"""The model registry: one folder per model, numbered versions, each one self-describing.

Layout (Triton-style, ARCHITECTURE.md "Data contracts")::

    <root>/<name>/v<N>/generator.safetensors   generator weights (G_ema), no code inside
    <root>/<name>/v<N>/model.json              the model card: architecture and constructor arguments,
                                               resolution, channels, latent size, dataset and training
                                               provenance, metrics, sha256 of the weights

A version folder alone is enough to serve the model. Loading never unpickles anything: the card names
an architecture from :data:`models.architectures.ARCHITECTURES` and its constructor arguments, the network is built from
them and the weights are read with safetensors. Versions never change once written; a new export
gets the next number.

The generator contract every architecture meets: ``G(z, psi=1.0)`` takes latents of shape
``(N, G.z_dim)`` (see :mod:`models.sampling`) and returns images in [-1, 1] of shape
``(N, G.channels, G.resolution, G.resolution)``; ``G.init_kwargs`` holds its constructor arguments.
``psi`` is the truncation each architecture defines (DCGAN: the generator sees ``psi * z``; StyleGAN:
w is pulled toward its running mean); ``psi = 1`` is the plain sample. In eval mode on the CPU the
output for one latent does not depend on the batch it is in, to the last bit, so model, version, seed
and psi regenerate the same pixels (DCGAN: see ``models.dcgan.networks._batch_invariant``).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from models import versions as versioned
from models.architectures import ARCHITECTURES
from models.fileio import sha256_file

FORMAT = "synthpacs-model/1"
GENERATOR_FILE = "generator.safetensors"
CARD_FILE = "model.json"
BUNDLED_ROOT = Path(__file__).resolve().parent / "bundled"




class RegistryError(Exception):
    """A registry problem; the message says what to do."""


class ModelNotFound(RegistryError):
    pass


class CorruptModel(RegistryError):
    """A model folder that cannot be loaded; the message names the file."""


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    path: Path
    card: dict[str, Any]

    @property
    def ref(self) -> str:
        return f"{self.name}:v{self.version}"

    @property
    def architecture(self) -> str:
        return str(self.card.get("architecture", ""))


def validate_name(name: str) -> str:
    if not versioned.is_name(name):
        raise RegistryError(f"model name {name!r} must be {versioned.NAME_RULE}")
    return name


def parse_ref(ref: str) -> tuple[str, int | None]:
    """``"name"`` (latest), ``"name:v3"`` or ``"name@v3"`` (or a bare 3: :mod:`models.versions`) -> (name, version or None)."""
    name, version = versioned.split_ref(ref)
    validate_name(name)
    if version is None:
        return name, None
    number = versioned.parse_version(version)
    if number is None:
        raise RegistryError(f"model version {version!r} in {ref!r} must be a positive number like 3 or v3")
    return name, number


def build_generator(card: dict[str, Any]) -> torch.nn.Module:
    """Construct the network a card describes (weights uninitialized)."""
    arch = card.get("architecture")
    entry = ARCHITECTURES.get(str(arch))
    if entry is None:
        raise CorruptModel(f"unknown architecture {arch!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    module_name, cls_name = entry.generator.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    kwargs = card.get("init_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise CorruptModel("init_kwargs in the model card must be an object")
    return cls(**kwargs)


def read_card(folder: Path) -> dict[str, Any]:
    path = folder / CARD_FILE
    try:
        card = json.loads(path.read_text())
    except FileNotFoundError:
        raise CorruptModel(f"{path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptModel(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(card, dict) or card.get("format") != FORMAT:
        raise CorruptModel(f"{path} is not a synthpacs model card (expected format {FORMAT!r})")
    return card


def load_generator(folder: str | os.PathLike[str], device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, verify: bool = True) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Build and load the generator in a version folder; eval mode, no gradients.

    Raises :class:`CorruptModel` naming the file when the card or weights are missing, damaged, or do
    not fit the architecture.
    """
    folder = Path(folder)
    card = read_card(folder)
    weights = folder / GENERATOR_FILE
    if not weights.exists():
        raise CorruptModel(f"{weights} is missing")
    expected = (card.get("files") or {}).get(GENERATOR_FILE)
    if verify and expected and sha256_file(weights) != expected:
        raise CorruptModel(f"{weights} does not match the sha256 in {folder / CARD_FILE}: the file is damaged or was replaced")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CorruptModel(f"{weights} cannot be read as safetensors: {exc}") from None
    try:
        net = build_generator(card)
    except TypeError as exc:
        raise CorruptModel(f"{folder / CARD_FILE}: init_kwargs do not fit {card.get('architecture')}: {exc}") from None
    own = net.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in state.items()}
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CorruptModel(f"{weights} does not fit the architecture in {folder / CARD_FILE}: {str(exc).splitlines()[0]}") from None
    for key in ("z_dim", "resolution", "channels"):
        if key in card and getattr(net, key, card[key]) != card[key]:
            raise CorruptModel(f"{folder / CARD_FILE} says {key} {card[key]}, but its init_kwargs build a network with {key} {getattr(net, key)}")
    net.requires_grad_(False)
    return net.eval().to(device=device, dtype=dtype), card


def save_generator(net: torch.nn.Module, card: dict[str, Any], folder: str | os.PathLike[str], half: bool = False) -> dict[str, Any]:
    """Write ``generator.safetensors`` and ``model.json`` into ``folder`` (which must not exist yet)."""
    folder = Path(folder)
    folder.mkdir(parents=True)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in net.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    save_file(state, str(folder / GENERATOR_FILE), metadata={"format": FORMAT, "architecture": str(card.get("architecture"))})
    card = dict(card)
    card["format"] = FORMAT
    card["weights_dtype"] = "float16" if half else "float32"
    card["files"] = {GENERATOR_FILE: sha256_file(folder / GENERATOR_FILE)}
    card.setdefault("init_kwargs", dict(getattr(net, "init_kwargs", {})))
    for key in ("z_dim", "resolution", "channels"):
        if key not in card and hasattr(net, key):
            card[key] = getattr(net, key)
    (folder / CARD_FILE).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
    return card


class Registry:
    """Model versions under one or more roots. The first root is where exports go; the rest (such as
    the bundled demo model) are read-only. A name found in an earlier root hides later ones."""

    def __init__(self, roots: Sequence[str | os.PathLike[str]]):
        if not roots:
            raise ValueError("a registry needs at least one root folder")
        self.roots = [Path(r) for r in roots]

    @classmethod
    def with_bundled(cls, root: str | os.PathLike[str]) -> "Registry":
        return cls([root, BUNDLED_ROOT])

    def names(self) -> list[str]:
        seen: set[str] = set()
        for root in self.roots:
            if root.is_dir():
                seen.update(p.name for p in root.iterdir() if p.is_dir() and versioned.is_name(p.name))
        return sorted(seen)

    def _root_of(self, name: str) -> Path | None:
        for root in self.roots:
            if (root / name).is_dir():
                return root
        return None

    def versions(self, name: str) -> list[ModelVersion]:
        """Every loadable-looking version of ``name``, oldest first (cards are read, weights are not)."""
        root = self._root_of(validate_name(name))
        if root is None:
            return []
        found = []
        for number, p in versioned.version_folders(root / name):
            try:
                card = read_card(p)
            except CorruptModel as exc:
                card = {"error": str(exc)}
            found.append(ModelVersion(name, number, p, card))
        return found

    def resolve(self, ref: str) -> ModelVersion:
        """``name`` (latest version), ``name:N`` or ``name:vN``."""
        name, version = parse_ref(ref)
        versions = self.versions(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise ModelNotFound(f"no model named {name!r} in the registry (known: {known})")
        picked = versioned.pick_version(versions, version, lambda v: v.version)
        if picked is not None:
            return picked
        raise ModelNotFound(f"model {name!r} has no version {version} (versions: {', '.join(str(v.version) for v in versions)})")

    def load(self, ref: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> tuple[torch.nn.Module, ModelVersion]:
        mv = self.resolve(ref)
        net, _card = load_generator(mv.path, device=device, dtype=dtype)
        return net, mv

    def export(self, net: torch.nn.Module, card: dict[str, Any], name: str, half: bool = False) -> ModelVersion:
        """Write a new version of ``name`` into the first root; returns it. Atomic: a version folder
        appears complete or not at all."""
        validate_name(name)
        base = self.roots[0] / name
        base.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".export-", dir=base))
        try:
            shutil.rmtree(staging)
            for _attempt in range(100):
                version = versioned.next_version(base)
                full = dict(card, name=name, version=version, created_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                save_generator(net, full, staging, half=half)
                try:
                    os.rename(staging, base / f"v{version}")
                except OSError:  # another export took this number first
                    shutil.rmtree(staging)
                    continue
                return ModelVersion(name, version, base / f"v{version}", read_card(base / f"v{version}"))
            raise RegistryError(f"could not find a free version number under {base}")
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)


def describe(versions: Iterable[ModelVersion]) -> list[dict[str, Any]]:
    """Rows for `synthpacs models ls`."""
    rows = []
    for v in versions:
        c = v.card
        rows.append(
            {
                "model": v.ref,
                "architecture": c.get("architecture", "?"),
                "resolution": c.get("resolution"),
                "dataset": (c.get("dataset") or {}).get("name"),
                "path": str(v.path),
                "error": c.get("error"),
            }
        )
    return rows
