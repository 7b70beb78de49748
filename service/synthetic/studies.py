"""Synthetic studies: generated images become one DICOM study, stored in the archive and queued for the PACS.

This is the one writer behind gRPC ``GenerateStudy`` and ``synthpacs synthesize``. For N images it makes
one study with one series of Secondary Capture instances (:mod:`service.synthetic.sc_writer`), a new
synthetic patient, stores every instance durably in the same store and index as received instances
(flagged synthetic, never de-identified: there is nothing to remove), and queues them in the outbox for
the destination. Images that the memorization guard finds too close to a training image are refused and
never written (``synthetic.refuse_near_copies``).

:func:`generate` and :func:`regenerate` hold the one definition of how a (model, version, seed, psi,
condition) becomes pixels, so a stored instance can always be regenerated bit for bit from its own tags.
A conditional model's condition (body part, view, finding) is written to Image Comments with the rest of
the provenance, and to Body Part Examined and View Position.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from prometheus_client import Counter

from models.seeds import MAX_SEED
from service.archive.store import Store, StoreError
from service.config import Config
from service.logs import get_logger, uid_hash
from service.synthetic.outbox import Outbox
from service.synthetic.sc_writer import Provenance, SyntheticSeries, SyntheticWriteError, synthetic_image

log = get_logger("studies")

SYNTHETIC_INSTANCES = Counter("synthpacs_synthetic_instances_total", "Synthetic instances by outcome", ["status"])

STORED, QUEUED, REFUSED, FAILED = "stored", "queued", "refused-near-copy", "failed"
# Provenance near_copy_check values (service/synthetic/sc_writer.py).
PASSED, NOT_RUN = "passed", "not-run"


class StudyRequestError(ValueError):
    """A request that cannot become a study (bad images, seeds, psi or destination); nothing was written."""


@dataclass
class InstanceOutcome:
    sop_instance_uid: str
    seed: int
    status: str  # "stored", "queued", "refused-near-copy", "failed"
    detail: str = ""


@dataclass
class StudyOutcome:
    study_instance_uid: str
    series_instance_uid: str
    destination: str | None
    instances: list[InstanceOutcome] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(1 for i in self.instances if i.status == status)


def dataset_ref_of(card: dict[str, Any]) -> str:
    """The training dataset a model card names, as ``name@vN`` ('' when it names none)."""
    ds = card.get("dataset")
    if isinstance(ds, str):
        return ds
    if isinstance(ds, dict) and ds.get("name"):
        if ds.get("ref"):
            return str(ds["ref"])
        version = ds.get("version")
        if version in (None, ""):
            return str(ds["name"])
        v = str(version)
        return f"{ds['name']}@{v if v.startswith('v') else 'v' + v}"
    return ""


def provenance_for(model: Any, seed: int, psi: float, condition: dict[str, str] | None = None) -> Provenance:
    card = getattr(model, "card", {}) or {}
    return Provenance(
        condition=Provenance.condition_pairs(condition),
        model=model.name,
        version=int(model.version),
        seed=int(seed),
        psi=float(psi),
        architecture=str(card.get("architecture", "")),
        weights_sha256=str((card.get("files") or {}).get("generator.safetensors", "")),
        dataset=dataset_ref_of(card).replace(" ", "_"),
    )


class SyntheticStudyWriter:
    """Writes generated images as one synthetic study; thread-safe (one per process is enough).

    ``outbox``: the queue to use; when None, one over the store's index is made (the outbox sender of a
    running ``synthpacs serve`` picks the items up from the same database).
    """

    def __init__(self, cfg: Config, store: Store, outbox: Outbox | None = None, guard_factory: Callable[[str], tuple[Any, str]] | None = None):
        self.cfg = cfg
        self.store = store
        self.outbox = outbox if outbox is not None else Outbox(cfg, store.index)
        self._guard_factory = guard_factory or self._default_guard
        self._guards: dict[str, Any] = {}
        self._guards_lock = threading.Lock()

    # -- the interface --------------------------------------------------------------------------------

    def write_study(
        self,
        images: np.ndarray,
        seeds: list[int],
        psi: float,
        model: Any,
        destination: str | None = None,
        burn_in_label: bool | None = None,
        series_description: str | None = None,
        condition: dict[str, str] | None = None,
    ) -> StudyOutcome:
        """Store ``images`` (N, H, W uint8/uint16) as one synthetic study and queue it for ``destination``.

        ``model`` is a :class:`models.registry.ModelVersion`. ``destination`` None or "" means
        ``outbox.default_destination`` (when that is empty too, the study stays in our archive).
        ``burn_in_label`` None means ``synthetic.burn_in_label`` (on by default); True adds the label, False
        is refused while the operator's setting requires it (only the operator drops the label, in the
        configuration). ``condition``: what a conditional
        model was asked for (``{"body_part": "HAND", "view": "AP"}``), already checked against it; its
        body part and view become Body Part Examined and View Position. Raises :class:`StudyRequestError`
        before writing anything when the request is invalid; per-instance problems are reported in
        the outcome instead.
        """
        images = self._check_images(images, seeds, psi)
        dest = self._destination(destination)
        if burn_in_label is not None and not burn_in_label and self.cfg.synthetic.burn_in_label:
            raise StudyRequestError(
                "this server burns the SYNTHETIC label into every study it writes as DICOM (synthetic.burn_in_label = true); "
                "a request cannot turn it off, only the operator can, in the configuration"
            )
        label = self.cfg.synthetic.burn_in_label if burn_in_label is None else bool(burn_in_label)
        card = getattr(model, "card", {}) or {}
        try:
            series = SyntheticSeries.new(
                model.name, int(model.version), uid_root=self.cfg.synthetic.uid_root, series_description=series_description,
                modality=self.cfg.synthetic.modality, institution_name=self.cfg.synthetic.institution_name,
                body_part_examined=str((condition or {}).get("body_part") or card.get("body_part", "")), psi=float(psi),
                view_position=str((condition or {}).get("view", "")), condition=condition,
            )
            provenances = [provenance_for(model, s, psi, condition) for s in seeds]
        except SyntheticWriteError as exc:
            raise StudyRequestError(str(exc)) from None
        outcome = StudyOutcome(series.study_instance_uid, series.series_instance_uid, dest)
        refused, check, why = self._near_copy_check(images, card, model)
        if check == NOT_RUN and self.cfg.synthetic.refuse_near_copies and not self.cfg.synthetic.allow_unchecked:
            # Fail closed: an image nobody compared with the training set is never written or sent.
            detail = (f"not written: the near-copy check cannot run ({why}); export the model with its index "
                      "(synthpacs models index), or the operator sets synthetic.allow_unchecked = true to write "
                      "and send studies unchecked (each instance then records near_copy_check=not-run)")
            log.error("near_copy_check_unavailable", model=f"{model.name}:v{model.version}", reason=why, count=len(seeds))
            for prov in provenances:
                outcome.instances.append(InstanceOutcome("", prov.seed, FAILED, detail))
                SYNTHETIC_INSTANCES.labels(status=FAILED).inc()
            return outcome
        if check == NOT_RUN:
            log.warning("near_copy_check_not_run", model=f"{model.name}:v{model.version}", reason=why, count=len(seeds))
        try:
            provenances = [dataclasses.replace(p, near_copy_check=check) for p in provenances]
        except SyntheticWriteError as exc:
            raise StudyRequestError(str(exc)) from None
        started = time.perf_counter()
        stored_uids: list[str] = []
        for i, (pixels, prov) in enumerate(zip(images, provenances)):
            if i in refused:
                outcome.instances.append(InstanceOutcome("", prov.seed, REFUSED, refused[i]))
                continue
            try:
                ds = synthetic_image(pixels, prov, series, instance_number=i + 1, burn_in_label=label)
                result = self.store.put(ds, source="synthetic", synthetic=True)
            except (SyntheticWriteError, StoreError) as exc:
                outcome.instances.append(InstanceOutcome("", prov.seed, FAILED, str(exc)))
                continue
            sop = result.record.sop_instance_uid
            stored_uids.append(sop)
            outcome.instances.append(InstanceOutcome(sop, prov.seed, STORED, "stored in the synthpacs archive"))
        if dest and stored_uids:
            try:
                self.outbox.enqueue(stored_uids, dest)
            except Exception as exc:  # stored but not queued: say so, `synthpacs outbox` can queue it later
                log.error("queue_failed", study=uid_hash(series.study_instance_uid), error=f"{type(exc).__name__}: {exc}")
                for inst in outcome.instances:
                    if inst.status == STORED:
                        inst.detail = f"stored, but not queued for {dest}: {exc}"
            else:
                for inst in outcome.instances:
                    if inst.status == STORED:
                        inst.status, inst.detail = QUEUED, f"stored and queued for {dest}"
        for inst in outcome.instances:
            SYNTHETIC_INSTANCES.labels(status=inst.status).inc()
        log.info(
            "study_written", study=uid_hash(series.study_instance_uid), model=f"{model.name}:v{model.version}",
            count=len(seeds), stored=len(stored_uids), refused=len(refused), failed=outcome.count(FAILED),
            destination=dest, seconds=round(time.perf_counter() - started, 3),
        )
        return outcome

    # -- validation -----------------------------------------------------------------------------------

    def _check_images(self, images: Any, seeds: Sequence[int], psi: float) -> np.ndarray:
        if not isinstance(images, np.ndarray):
            raise StudyRequestError(f"images must be a numpy array, not {type(images).__name__}")
        if images.ndim == 4 and images.shape[1] == 1:
            images = images[:, 0]
        if images.ndim != 3:
            raise StudyRequestError(f"images must be (N, H, W) grayscale; got shape {images.shape}")
        if images.dtype not in (np.uint8, np.uint16):
            raise StudyRequestError(f"images must be uint8 or uint16 (models.sampling.to_uint); got {images.dtype}")
        if len(images) == 0:
            raise StudyRequestError("a study needs at least one image")
        seeds = list(seeds)
        if len(seeds) != len(images):
            raise StudyRequestError(f"{len(images)} images but {len(seeds)} seeds; every image needs the seed that made it")
        for s in seeds:
            if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or not 0 <= int(s) <= MAX_SEED:
                raise StudyRequestError(f"seed {s!r} must be an integer in 0..{MAX_SEED}")
        if isinstance(psi, bool) or not isinstance(psi, (int, float)) or not math.isfinite(psi):
            raise StudyRequestError(f"psi {psi!r} must be a finite number")
        return images

    def _destination(self, destination: str | None) -> str | None:
        dest = destination or self.cfg.outbox.default_destination or None
        if dest:
            try:
                self.outbox.check_destination(dest)
            except ValueError as exc:
                raise StudyRequestError(str(exc)) from None
        return dest

    # -- refusing near-copies -------------------------------------------------------------------------

    def _near_copy_check(self, images: np.ndarray, card: dict[str, Any], model: Any) -> tuple[dict[int, str], str, str]:
        """(index -> reason for every image the memorization guard refuses, ``passed`` or ``not-run``, why not).

        The guard (models/metrics/memorization.py) compares each image with the model's training set, in
        two descriptor spaces, against the training set's own nearest-neighbour distances
        (``evaluation.memorization_percentile``). It uses the near-copy index the model version carries
        (service/near_copy_index.py) or, for a version without one, the training dataset the model card
        names when this home has it. Where neither exists the check cannot run: ``not-run`` and why.
        """
        if not self.cfg.synthetic.refuse_near_copies:
            return {}, NOT_RUN, "turned off by the operator (synthetic.refuse_near_copies = false)"
        guard, source, why = self._guard(card, model)
        if guard is None:
            return {}, NOT_RUN, why
        report = guard.check(images)
        refused = {int(i): _near_copy_detail(report, int(i), source) for i in report.offending}
        if refused:
            log.warning("near_copies_refused", count=len(refused), dataset=source)
        return refused, PASSED, ""

    def _guard(self, card: dict[str, Any], model: Any) -> tuple[Any, str, str]:
        """(guard or None, the training set it stands for, why there is none); cached per model version."""
        from service.near_copy_index import NearCopyIndexError, load_guard

        ref = dataset_ref_of(card)
        path = getattr(model, "path", None)
        key = f"index:{path}" if path is not None else f"dataset:{ref}"
        with self._guards_lock:
            # Only guards are kept: an index or dataset that appears later is found by the next study.
            if key not in self._guards:
                index_problem = ""
                try:
                    indexed = load_guard(path, self.cfg.evaluation.memorization_percentile) if path is not None else None
                except NearCopyIndexError as exc:
                    indexed, index_problem = None, f"the model's near-copy index is unusable: {exc}"
                entry: tuple[Any, str, str]
                if indexed is not None:
                    entry = (indexed, ref or indexed.source, "")
                elif not ref:
                    entry = (None, ref, index_problem or "the model has no near-copy index and its card names no training dataset")
                else:  # the training dataset itself, when this home has it
                    guard, why = self._guard_factory(ref)
                    entry = (guard, ref, f"{index_problem}; {why}" if guard is None and index_problem else why)
                if entry[0] is None:
                    return entry
                self._guards[key] = entry
            return self._guards[key]

    def _default_guard(self, ref: str) -> tuple[Any, str]:
        """The memorization guard over the training images of dataset ``ref`` in this home, or (None, why)."""
        from models.datasets import DatasetError, resolve_dataset
        from models.metrics.memorization import MemorizationGuard
        from service.home import Home

        try:
            dv = resolve_dataset(Home.at(self.cfg.home_path).datasets_dir, ref)
            return MemorizationGuard.for_images_file(dv.images_path, percentile=self.cfg.evaluation.memorization_percentile), ""
        except (DatasetError, LookupError, ValueError, OSError) as exc:
            # A model trained elsewhere and exported without its index: nothing here to compare with.
            return None, f"the model has no near-copy index and its training dataset {ref} is not in this home ({exc})"


def _near_copy_detail(report: Any, i: int, ref: str) -> str:
    """Which training image it is close to, and how close against the threshold, in each space."""
    parts = []
    for space in report.spaces:
        ratio = float(report.ratios(space)[i])
        parts.append(f"{space}: nearest training image #{int(report.nearest[space][i])}, {ratio:.2f} x threshold")
    return f"near-copy of a training image of {ref} ({'; '.join(parts)})"


# -- pixels from provenance ----------------------------------------------------------------------------


def generate(net: Any, seeds: Sequence[int], psi: float = 1.0, bits: int = 8, batch_size: int = 32,
             device: Any = "cpu", progress: Callable[[int, int], None] | None = None,
             condition: dict[str, str] | None = None) -> np.ndarray:
    """Run generator ``net`` for ``seeds``: (N, H, W) uint8/uint16, one latent per seed (models.sampling).

    The image of a seed does not depend on the batch it is in (the generator contract), so any
    batch size gives the same pixels. ``condition``: a conditional generator's condition, the same for
    every seed (:class:`models.conditions.ConditionError` names the known values when it does not fit);
    an unconditional generator takes none.
    """
    import torch

    from models.conditions import ConditionError, space_of
    from models.sampling import seeds_to_pixels

    space = space_of(net)
    if space is None and condition:
        raise ConditionError(f"this model is unconditional: it takes no {', '.join(sorted(condition))}")
    vector = torch.from_numpy(space.encode(condition or {})) if space is not None else None
    seeds = list(seeds)
    if not seeds:
        return np.zeros((0, 0, 0), np.uint8)
    return seeds_to_pixels(net, seeds, psi, bits=bits, batch_size=batch_size, device=device, c=vector, progress=progress)


def regenerate(ds: Any, registry: Any, device: str = "cpu") -> np.ndarray:
    """The pixels a stored synthetic instance was made from, regenerated from its own tags.

    Reads model, version, seed, psi and the condition from Image Comments, loads that model version from ``registry``
    (checking the weights' sha256 when the instance recorded it), generates, and burns in the label
    when the instance has one. On the CPU the result equals the stored Pixel Data bit for bit.
    """
    from models.registry import RegistryError
    from service.synthetic.sc_writer import burn_in_synthetic_label

    prov = Provenance.from_dataset(ds)
    net, mv = registry.load(prov.model_ref, device=device)
    recorded = prov.weights_sha256
    actual = str((mv.card.get("files") or {}).get("generator.safetensors", ""))
    if recorded and actual and recorded != actual:
        raise RegistryError(f"{prov.model_ref} in this registry has other weights than the ones that made the instance")
    bits = int(ds.BitsAllocated)
    pixels = generate(net, [prov.seed], prov.psi, bits=bits, device=device, condition=prov.condition_dict or None)[0]
    if str(ds.get("BurnedInAnnotation", "")).upper() == "YES":
        pixels = burn_in_synthetic_label(pixels)
    return pixels
