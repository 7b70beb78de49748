"""The model cache: registry versions loaded on demand or at start, a bounded number kept in memory.

Triton-style model management (a repository of named models with numbered versions, each folder
self-describing; models/registry.py):

- ``"name"`` means the newest version of that model that loads; ``"name:vN"`` pins a version.
- At most ``max_loaded`` versions stay in memory; the least recently used one is dropped first.
- :meth:`ModelCache.rescan` (run every ``inference.reload_interval_s`` by the server) picks up new
  versions without a restart. When the served version of a name is in memory, the new version is loaded
  and calibrated first and only then takes over, so no request waits for it; if it fails to load, the old
  one keeps serving and the new one reports FAILED.
- A version that cannot be loaded is FAILED with a message naming the file; it is tried again only when
  its files change on disk. Other models are not affected.
"""

from __future__ import annotations

import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch

from models.conditions import ConditionSpace, space_of
from models.registry import CARD_FILE, GENERATOR_FILE, CorruptModel, ModelNotFound, ModelVersion, Registry, RegistryError, load_generator, parse_ref
from models.sampling import latents
from service.inference import metrics
from service.inference.calibrate import Calibration, calibrate, half_is_faithful, pad_to
from service.inference.device import memory_stats
from service.logs import get_logger

log = get_logger("inference")

AVAILABLE, LOADING, READY, FAILED = "available", "loading", "ready", "failed"


class ModelUnavailable(Exception):
    """The model version exists but cannot be loaded; the message names the file at fault."""


@dataclass(eq=False)
class LoadedModel:
    """A generator in memory, with the forward sizes that keep its images batch-invariant."""

    version: ModelVersion
    net: torch.nn.Module
    device: torch.device
    dtype: torch.dtype
    z_dim: int
    resolution: int
    channels: int
    batch_sizes: tuple[int, ...]
    weight_bytes: int
    load_seconds: float
    calibration: Calibration | None = None
    space: ConditionSpace | None = None  # a conditional model's conditions (models.conditions)

    @property
    def ref(self) -> str:
        return self.version.ref

    def _default_c(self, n: int) -> torch.Tensor | None:
        """Probes and calibration of a conditional model use its first condition: the condition only
        enters the first layer's input, so every condition takes the same kernels."""
        if self.space is None:
            return None
        return torch.from_numpy(self.space.encode(next(self.space.combinations()))).expand(n, -1).contiguous()

    @property
    def max_batch(self) -> int:
        return self.batch_sizes[-1]

    def run(self, z: torch.Tensor, psi: float = 1.0, c: torch.Tensor | None = None) -> torch.Tensor:
        """One forward pass of exactly these latents (and condition vectors); float32 images on the CPU."""
        if self.space is not None and c is None:
            c = self._default_c(len(z))
        cond = {"c": c.to(self.device, self.dtype)} if c is not None else {}
        with torch.inference_mode():
            out = self.net(z.to(self.device, self.dtype), psi=psi, **cond)
        return out.float().cpu()

    def generate(self, seeds: list[int], psi: float, c: torch.Tensor | None = None) -> torch.Tensor:
        """Images (N, C, H, W) in [-1, 1] for these seeds, computed only at calibrated forward sizes.

        ``c``: (N, c_dim) condition vectors of a conditional model, row i for ``seeds[i]``.
        """
        z = latents(seeds, self.z_dim)
        if self.space is not None and c is None:
            raise ValueError(f"{self.ref} is conditional: every image needs a condition ({self.space.describe()})")
        outs = []
        for start in range(0, len(seeds), self.max_batch):
            chunk = z[start : start + self.max_batch]
            c_chunk = c[start : start + self.max_batch] if c is not None else None
            size = pad_to(self.batch_sizes, len(chunk))
            if size > len(chunk):
                metrics.PADDED_ROWS.inc(size - len(chunk))
                chunk = torch.cat([chunk, torch.zeros(size - len(chunk), self.z_dim)])
                if c_chunk is not None:
                    c_chunk = torch.cat([c_chunk, c_chunk[:1].expand(size - len(c_chunk), -1)])
            outs.append(self.run(chunk, psi, c_chunk)[: min(self.max_batch, len(seeds) - start)])
        return torch.cat(outs)


@dataclass(frozen=True)
class ModelStatus:
    """What ListModels and GetModel report about one version."""

    version: ModelVersion
    state: str
    error: str = ""
    latest: bool = False
    loaded: LoadedModel | None = None


@dataclass(eq=False)
class _Entry:
    version: ModelVersion
    state: str = AVAILABLE
    error: str = ""
    fingerprint: tuple = ()
    loaded: LoadedModel | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


def _canonical(ref: str) -> str:
    """``"name"`` or ``"name:vN"`` for any accepted spelling (``name:N``), as health names use."""
    try:
        name, version = parse_ref(ref.strip())
    except RegistryError:
        return ref.strip()
    return name if version is None else f"{name}:v{version}"


def fingerprint(folder: Path) -> tuple:
    """Modification time and size of a version's files: a failed version is retried when they change."""
    out = []
    for name in (CARD_FILE, GENERATOR_FILE):
        try:
            st = os.stat(folder / name)
            out.append((name, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((name, None, None))
    return tuple(out)


def load_model(version: ModelVersion, device: torch.device, max_batch: int, half_precision: bool) -> LoadedModel:
    """Load, check and calibrate one version. Raises :class:`CorruptModel` naming the file at fault."""
    started = time.perf_counter()
    net, card = load_generator(version.path, device=device, dtype=torch.float32)
    version = ModelVersion(version.name, version.version, version.path, card)  # the card as loaded
    card_path = version.path / CARD_FILE
    try:
        z_dim = int(card.get("z_dim") or getattr(net, "z_dim"))
        resolution = int(card.get("resolution") or getattr(net, "resolution"))
        channels = int(card.get("channels") or getattr(net, "channels", 1))
    except (AttributeError, TypeError, ValueError):
        raise CorruptModel(f"{card_path} must give z_dim, resolution and channels as integers") from None
    try:
        space = space_of(net)
    except ValueError as exc:
        raise CorruptModel(f"{card_path}: its conditions cannot be read: {exc}") from None
    model = LoadedModel(version, net, device, torch.float32, z_dim, resolution, channels, (1,), 0, 0.0, space=space)
    try:
        probe = model.run(latents([0], z_dim))
    except Exception as exc:  # a generator that cannot run is as unusable as a damaged file
        raise CorruptModel(f"{version.path / GENERATOR_FILE}: the generator fails on a probe latent: {type(exc).__name__}: {exc}") from None
    expected = (1, channels, resolution, resolution)
    if tuple(probe.shape) != expected:
        raise CorruptModel(f"{card_path} describes images {expected[1:]} (channels, height, width) but the generator makes {tuple(probe.shape)[1:]}")
    if device.type == "cuda" and half_precision:
        half_net = _half_copy(net)
        half_model = LoadedModel(version, half_net, device, torch.float16, z_dim, resolution, channels, (1,), 0, 0.0, space=space)
        ok, reason = half_is_faithful(model.run, half_model.run, z_dim)
        log.info("half_precision_check", model=version.ref, used=ok, reason=reason)
        if ok:
            model = half_model
            net = half_net
    calibration = calibrate(model.run, z_dim, max_batch)
    model.batch_sizes, model.calibration = calibration.sizes, calibration
    log.info(
        "model_calibrated", model=version.ref, consistent_sizes=list(calibration.consistent), batch_sizes=list(model.batch_sizes),
        ms_per_image={s: round(1000 * t / s, 2) for s, t in calibration.seconds.items()},
    )
    model.weight_bytes = sum(t.numel() * t.element_size() for t in [*net.parameters(), *net.buffers()])
    model.load_seconds = time.perf_counter() - started
    return model


def _half_copy(net: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(net).half()


class ModelCache:
    """Loaded model versions over a :class:`Registry`; thread-safe.

    ``on_change`` is called (without locks held) after any version changes state, so the health
    service can follow readiness.
    """

    def __init__(
        self,
        registry: Registry,
        device: torch.device,
        *,
        max_loaded: int = 4,
        max_batch: int = 32,
        half_precision: bool = True,
        on_change: Callable[[], None] | None = None,
    ):
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.registry = registry
        self.device = device
        self.max_loaded = max_loaded
        self.max_batch = max_batch
        self.half_precision = half_precision
        self.on_change = on_change
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._lru: OrderedDict[str, LoadedModel] = OrderedDict()
        self._latest: dict[str, int] = {}
        self._wanted: set[str] = set()  # preloaded refs, retried by rescan when their files change

    # -- resolution ---------------------------------------------------------------------------------

    def resolve(self, ref: str) -> ModelVersion:
        """The version a request means. Raises :class:`ModelNotFound`, or :class:`RegistryError` for a
        reference that is not well formed."""
        name, version = parse_ref(ref.strip())
        if version is None:
            with self._lock:
                version = self._latest.get(name)
            if version is None:
                mv = self.registry.resolve(name)
                with self._lock:
                    self._latest.setdefault(name, mv.version)
                    self._entry(mv)
                return mv
        key = f"{name}:v{version}"
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.version.path.is_dir():
            return entry.version
        mv = self.registry.resolve(key)
        with self._lock:
            return self._entry(mv).version

    def _entry(self, mv: ModelVersion) -> _Entry:
        entry = self._entries.get(mv.ref)
        if entry is None:
            entry = self._entries[mv.ref] = _Entry(mv)
            if "error" in mv.card:  # the registry could not read the card
                entry.state, entry.error, entry.fingerprint = FAILED, str(mv.card["error"]), fingerprint(mv.path)
        return entry

    # -- loading ------------------------------------------------------------------------------------

    def get(self, ref: str) -> LoadedModel:
        """The loaded model for ``ref``, loading it now if needed (concurrent callers share one load).

        Raises :class:`ModelNotFound`, :class:`RegistryError` (bad reference) or :class:`ModelUnavailable`.
        """
        mv = self.resolve(ref)
        with self._lock:
            entry = self._entry(mv)
            if entry.loaded is not None:
                self._lru.move_to_end(mv.ref)
                return entry.loaded
        with entry.lock:
            if entry.loaded is not None:
                with self._lock:
                    if mv.ref in self._lru:
                        self._lru.move_to_end(mv.ref)
                return entry.loaded
            if entry.state == FAILED and entry.fingerprint == fingerprint(mv.path):
                raise ModelUnavailable(entry.error)
            return self._load(entry)

    def _load(self, entry: _Entry) -> LoadedModel:
        mv = entry.version
        self._set_state(entry, LOADING, "")
        log.info("model_loading", model=mv.ref, path=str(mv.path), device=str(self.device))
        fp = fingerprint(mv.path)
        try:
            model = load_model(mv, self.device, self.max_batch, self.half_precision)
        except CorruptModel as exc:
            entry.fingerprint = fp
            metrics.MODEL_LOAD_FAILURES.labels(mv.ref).inc()
            log.error("model_load_failed", model=mv.ref, error=str(exc))
            self._set_state(entry, FAILED, str(exc))
            raise ModelUnavailable(str(exc)) from None
        except Exception as exc:  # e.g. out of device memory: not the files' fault, retry on next request
            log.exception("model_load_error", model=mv.ref)
            self._set_state(entry, AVAILABLE, "")
            raise ModelUnavailable(f"model {mv.ref} could not be loaded on {self.device}: {type(exc).__name__}: {exc}") from None
        metrics.MODEL_LOAD_TIME.labels(mv.ref).observe(model.load_seconds)
        evicted = []
        with self._lock:
            entry.version = model.version
            entry.loaded = model
            self._lru[mv.ref] = model
            while len(self._lru) > self.max_loaded:
                old_ref, _old = self._lru.popitem(last=False)
                old = self._entries[old_ref]
                old.loaded, old.state = None, AVAILABLE
                evicted.append(old_ref)
            metrics.MODELS_LOADED.set(len(self._lru))
        self._update_memory()
        log.info(
            "model_loaded", model=mv.ref, device=str(model.device), dtype=str(model.dtype).replace("torch.", ""),
            batch_sizes=list(model.batch_sizes), seconds=round(model.load_seconds, 3), evicted=evicted,
        )
        self._set_state(entry, READY, "")
        return model

    def _set_state(self, entry: _Entry, state: str, error: str) -> None:
        with self._lock:
            entry.state, entry.error = state, error
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:
                log.exception("on_change_failed")

    def _update_memory(self) -> None:
        with self._lock:
            weights = sum(m.weight_bytes for m in self._lru.values())
        for kind, value in memory_stats(self.device, weights).items():
            metrics.DEVICE_MEMORY.labels(str(self.device), kind).set(value)

    def preload(self, refs: Iterable[str]) -> None:
        """Load these models now; one that is missing or broken is logged and skipped."""
        for ref in refs:
            with self._lock:
                self._wanted.add(ref)
            try:
                self.get(ref)
            except ModelNotFound as exc:
                log.error("preload_model_not_found", model=ref, error=str(exc))
            except (ModelUnavailable, RegistryError) as exc:
                log.error("preload_failed", model=ref, error=str(exc))
        if self.on_change is not None:
            self.on_change()

    # -- new versions -------------------------------------------------------------------------------

    def rescan(self) -> None:
        """Look for new models and versions; switch names to new versions (warm) and retry wanted
        models whose files changed. Never raises: problems are logged."""
        try:
            names = self.registry.names()
        except OSError as exc:
            log.error("registry_scan_failed", error=str(exc))
            return
        for name in names:
            try:
                versions = self.registry.versions(name)
            except (OSError, RegistryError) as exc:
                log.error("registry_scan_failed", model=name, error=str(exc))
                continue
            if not versions:
                continue
            with self._lock:
                for mv in versions:
                    self._entry(mv)
                current = self._latest.get(name)
            newest = versions[-1]
            if current is None or newest.version <= current:
                with self._lock:
                    self._latest.setdefault(name, newest.version)
                continue
            with self._lock:
                warm = self._entries.get(f"{name}:v{current}")
                warm = warm is not None and warm.loaded is not None
            if warm:
                try:
                    self.get(newest.ref)
                except ModelUnavailable as exc:
                    log.error("new_version_not_served", model=newest.ref, still_serving=f"{name}:v{current}", error=str(exc))
                    continue
            with self._lock:
                self._latest[name] = newest.version
            log.info("model_version_switched", model=name, previous=f"v{current}", now=newest.ref, warm=warm)
        with self._lock:
            gone = [n for n in self._latest if n not in names]
            for n in gone:
                del self._latest[n]
            retry = [r for r in self._wanted]
        for ref in retry:
            try:
                mv = self.resolve(ref)
            except (ModelNotFound, RegistryError):
                continue
            with self._lock:
                entry = self._entry(mv)
                stale = entry.state == FAILED and entry.fingerprint != fingerprint(mv.path)
            if stale:
                try:
                    self.get(ref)
                except (ModelUnavailable, ModelNotFound, RegistryError):
                    pass
        if self.on_change is not None:
            self.on_change()

    # -- reporting ----------------------------------------------------------------------------------

    def statuses(self, all_versions: bool = False, name: str = "") -> list[ModelStatus]:
        """Every model (or one name) with its latest version, or all versions; cards read from disk."""
        names = [name] if name else self.registry.names()
        out = []
        for n in names:
            versions = self.registry.versions(n)
            if not versions:
                continue
            with self._lock:
                served = self._latest.get(n, versions[-1].version)
                for mv in versions:
                    entry = self._entry(mv)
                    if all_versions or mv.version == served:
                        out.append(ModelStatus(entry.version, entry.state, entry.error, mv.version == served, entry.loaded))
        return out

    def status(self, ref: str) -> ModelStatus:
        mv = self.resolve(ref)
        with self._lock:
            entry = self._entry(mv)
            latest = self._latest.get(mv.name) == mv.version
            return ModelStatus(entry.version, entry.state, entry.error, latest, entry.loaded)

    def readiness(self) -> dict[str, bool]:
        """Health entries: ``"name"`` (its served version) and ``"name:vN"`` -> loaded and ready.
        Preloaded models that are missing from the registry are listed as not ready."""
        with self._lock:
            out = {ref: entry.loaded is not None for ref, entry in self._entries.items()}
            for name, version in self._latest.items():
                out[name] = out.get(f"{name}:v{version}", False)
            for ref in self._wanted:
                out.setdefault(_canonical(ref), False)
        return out

    def loaded(self) -> list[LoadedModel]:
        with self._lock:
            return list(self._lru.values())

    def clear(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                entry.loaded = None
                if entry.state == READY:
                    entry.state = AVAILABLE
            self._lru.clear()
            metrics.MODELS_LOADED.set(0)
