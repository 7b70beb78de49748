"""The synthetic Secondary Capture writer: generated pixels plus provenance in, a fully tagged SC Image out.

A synthetic image must be unmistakable to every system and every person (ARCHITECTURE.md "What marks an
instance synthetic"). Every instance this module builds carries all of these:

* Synthetic Data (0008,001C) = ``YES`` (PS3.3 C.12.1, SOP Common Module);
* Conversion Type (0008,0064) = ``SYN``, "synthetic image" (PS3.3 C.8.6.1, SC Equipment Module);
  highdicom's :class:`~highdicom.sc.SCImage` writes ``DI``, so it is overwritten here;
* Image Type (0008,0008) = ``DERIVED\\SECONDARY`` (PS3.3 C.7.6.1.1.2);
* Series Description beginning with ``SYNTHETIC``, and a Study Description that says so too;
* a synthetic patient: Patient's Name ``SYNTHETIC^<model>`` and a Patient ID ``SYNTHETIC-<random>``,
  never a real person's identity;
* a Contributing Equipment Sequence item with Purpose of Reference (DCM, 109100, "Synthesizing
  Equipment") naming the model, its version and the software version, as IHE AI Results (AIR) asks
  results of an algorithm to identify the algorithm (PS3.3 C.12.1.1.8 / IHE RAD TF-3 AIR);
* Image Comments ``SYNTHETIC IMAGE, not a patient. model=... version=... seed=... psi=...`` (and the
  condition of a conditional model, ``body_part=HAND view=AP finding=NONE``): everything needed to
  regenerate the pixels exactly (:class:`Provenance` parses it back);
* fresh UIDs under the configured root (PS3.5 §9; UUID-derived under 2.25 by default, PS3.5 §B.2);
* a burned-in ``SYNTHETIC`` label (on by default for every study written as DICOM: ``synthetic.burn_in_label``),
  then Burned In Annotation (0028,0301) = ``YES``, so a screenshot, an export or a film still says what the
  image is (:func:`burn_in_synthetic_label`: a top-left corner box, about 3 % of the shorter side high).

Modality defaults to ``OT`` (Other). The SC Equipment Module lets Modality name the source equipment
(PS3.3 C.8.6.1); a generator is no acquisition device, and ``CR`` or ``DX`` would put synthetic images
into the hanging protocols, worklists, dose and QA statistics, and dataset filters that select real
radiographs by modality. ``synthetic.modality`` can change it for a PACS that insists.

Laterality (0020,0060) is Type 2C in the General Series Module (PS3.3 C.7.3.1): required if the body
part examined is a paired structure and no Image Laterality (or Frame/Measurement Laterality) is present;
being Type 2, it is empty when the side is unknown. A generator does not know which side it drew, so:

* a side the caller knows (R or L) is written;
* a Body Part Examined that is not a paired structure (:data:`UNPAIRED_BODY_PARTS`, the body parts whose
  laterality PS3.16 Annex L gives as unpaired: CHEST, SKULL, PELVIS, ...) leaves Laterality absent (the
  condition does not hold; an empty value would claim the side is merely unknown);
* a paired body part (HAND, KNEE, ...) or no body part at all (an unconditional generator: nothing says
  the structure is unpaired) gets an empty Laterality: the side is actually unknown. dciodvfy (2022)
  accepts that with one Warning, "is only permitted to be empty when actually unknown", which is our
  case; left absent, it would be an Error (missing Type 2C), since dciodvfy, like the standard, cannot
  rule out a paired structure. Image Laterality is no way out: its values (R, L, U unpaired, B both)
  have none for "unknown".

Patient Orientation is empty (Type 2C, General Image Module C.7.6.1): a generated image has no patient
to be oriented to.

An image generated for a condition carries it where a radiograph would: Body Part Examined (0018,0015,
General Series Module C.7.3.1) and View Position (0018,5101). View Position belongs to the CR Series
and DX Positioning Modules (C.8.1.1, C.8.11.5), not to the SC Image IOD, so it is a Standard Extended
attribute (PS3.4 B.1.3) here: viewers and worklists that sort by view find it where they look.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
import uuid
from dataclasses import dataclass
from enum import Enum

import numpy as np
from highdicom import ContributingEquipment
from highdicom.sc import SCImage
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from models.seeds import MAX_SEED
from service import __version__
from service.archive.uids import InvalidUID, new_uid, validate_uid

MANUFACTURER = "synthpacs"
# Body Part Examined values (PS3.16 Annex L, CID 4031) of structures that are not paired: Laterality is
# then absent rather than empty (PS3.3 C.7.3.1). Paired ones, and anything not listed, get an empty
# Laterality when the side is unknown.
UNPAIRED_BODY_PARTS = frozenset({
    "ABDOMEN", "ABDOMENPELVIS", "AORTA", "BACK", "BLADDER", "BRAIN", "CEREBELLUM", "CERVIX", "CHEST", "CHESTABDOMEN",
    "CHESTABDPELVIS", "CIRCLEOFWILLIS", "COCCYX", "COLON", "CORONARYARTERY", "CSPINE", "CTSPINE", "DUODENUM",
    "ESOPHAGUS", "FACE", "GALLBLADDER", "HEAD", "HEADNECK", "HEART", "ILEUM", "JAW", "JEJUNUM", "LARYNX", "LIVER",
    "LSPINE", "LSSPINE", "MAXILLA", "MEDIASTINUM", "MOUTH", "NECK", "NECKCHEST", "NECKCHESTABDOMEN", "NECKCHESTABDPELV",
    "NOSE", "PANCREAS", "PELVIS", "PENIS", "PHARYNX", "PROSTATE", "RECTUM", "SACRUM", "SCALP", "SKULL", "SPINE",
    "SPLEEN", "SSPINE", "STERNUM", "STOMACH", "THYMUS", "THYROID", "TLSPINE", "TONGUE", "TRACHEA", "TSPINE",
    "URETER", "URETHRA", "UTERUS", "VAGINA", "VULVA", "WHOLEBODY",
})
SYNTHETIC_PREFIX = "SYNTHETIC"
COMMENT_HEADER = "SYNTHETIC IMAGE, not a patient."
NEAR_COPY_CHECK_VALUES = ("", "passed", "not-run")

# Value Representation limits used below (PS3.5 Table 6.2-1).
_LO_MAX = 64
_SH_MAX = 16
_PN_COMPONENT_MAX = 64
_CS_RE = re.compile(r"^[A-Z0-9_ ]{1,16}$")
# Condition fields written to Image Comments, in this order (models.conditions.KNOWN_FIELDS).
CONDITION_KEYS = ("body_part", "view", "finding")
_CONDITION_VALUE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class ConversionType(str, Enum):
    """Defined Terms of Conversion Type (0008,0064), PS3.3 C.8.6.1."""

    SYNTHETIC = "SYN"
    DIGITIZED_VIDEO = "DV"
    DIGITAL_INTERFACE = "DI"
    WORKSTATION = "WSD"


class SyntheticWriteError(ValueError):
    """An argument that cannot become a valid synthetic instance; the message names it."""


@dataclass(frozen=True)
class Provenance:
    """What made the pixels: model name and version, seed and truncation psi regenerate them exactly.

    ``weights_sha256`` pins the exact weights file, ``dataset`` the training data (``name@vN``).
    """

    model: str
    version: int
    seed: int
    psi: float = 1.0
    architecture: str = ""
    weights_sha256: str = ""
    dataset: str = ""
    software: str = f"synthpacs {__version__}"
    # The condition of a conditional model as (field, value) pairs in CONDITION_KEYS order; () if none.
    condition: tuple[tuple[str, str], ...] = ()
    # Whether the memorization guard checked the image before it was written: "passed", or "not-run" where
    # the operator let studies go out without the check (service/synthetic/studies.py); "" for instances made before.
    near_copy_check: str = ""

    def __post_init__(self) -> None:
        if self.near_copy_check not in NEAR_COPY_CHECK_VALUES:
            raise SyntheticWriteError(f"near_copy_check {self.near_copy_check!r} must be one of {', '.join(NEAR_COPY_CHECK_VALUES[1:])} or empty")
        for key, value in self.condition:
            if key not in CONDITION_KEYS:
                raise SyntheticWriteError(f"condition field {key!r} is not one of {', '.join(CONDITION_KEYS)}")
            if not _CONDITION_VALUE_RE.match(str(value)):
                raise SyntheticWriteError(f"condition {key}={value!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if not self.model or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", self.model):
            raise SyntheticWriteError(f"model name {self.model!r} must be 1-64 letters, digits, '.', '_' or '-'")
        if not isinstance(self.version, int) or self.version < 1:
            raise SyntheticWriteError(f"model version {self.version!r} must be a positive integer")
        if not isinstance(self.seed, int) or not 0 <= self.seed <= MAX_SEED:
            raise SyntheticWriteError(f"seed {self.seed!r} must be an integer in 0..{MAX_SEED}")
        if not isinstance(self.psi, (int, float)) or not math.isfinite(self.psi):
            raise SyntheticWriteError(f"truncation psi {self.psi!r} must be a finite number")
        for name in ("architecture", "weights_sha256", "dataset", "software"):
            if re.search(r"\s", getattr(self, name)) and name != "software":
                raise SyntheticWriteError(f"provenance {name} {getattr(self, name)!r} must not contain spaces")

    @property
    def model_ref(self) -> str:
        return f"{self.model}:v{self.version}"

    @property
    def condition_dict(self) -> dict[str, str]:
        return dict(self.condition)

    @staticmethod
    def condition_pairs(condition: dict[str, str] | None) -> tuple[tuple[str, str], ...]:
        """A condition mapping as the ordered pairs :class:`Provenance` keeps."""
        condition = condition or {}
        return tuple((k, str(condition[k])) for k in CONDITION_KEYS if condition.get(k))

    def image_comments(self) -> str:
        """The Image Comments (0020,4000) text: a fixed header, then ``key=value`` pairs.

        ``psi`` is written with :func:`repr`, the shortest text that reads back as the same float.
        """
        pairs = [
            ("model", self.model), ("version", str(self.version)), ("seed", str(self.seed)),
            ("psi", repr(float(self.psi))),
        ]
        pairs += list(self.condition)
        if self.architecture:
            pairs.append(("architecture", self.architecture))
        if self.weights_sha256:
            pairs.append(("weights_sha256", self.weights_sha256))
        if self.dataset:
            pairs.append(("dataset", self.dataset))
        if self.near_copy_check:
            pairs.append(("near_copy_check", self.near_copy_check))
        pairs.append(("software", self.software.replace(" ", "/")))
        return COMMENT_HEADER + " " + " ".join(f"{k}={v}" for k, v in pairs)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> "Provenance":
        """Read the provenance back from a synthetic instance written by :func:`synthetic_image`.

        Raises :class:`SyntheticWriteError` when the instance is not marked synthetic or its Image
        Comments do not carry model, version, seed and psi.
        """
        if str(ds.get("SyntheticData", "")).upper() != "YES":
            raise SyntheticWriteError("the instance is not marked synthetic (Synthetic Data (0008,001C) is not YES)")
        text = str(ds.get("ImageComments", ""))
        if not text.startswith(COMMENT_HEADER):
            raise SyntheticWriteError("Image Comments do not hold synthpacs provenance")
        values = dict(re.findall(r"(\w+)=(\S+)", text[len(COMMENT_HEADER):]))
        missing = [k for k in ("model", "version", "seed", "psi") if k not in values]
        if missing:
            raise SyntheticWriteError(f"Image Comments lack {', '.join(missing)}")
        try:
            return cls(
                model=values["model"], version=int(values["version"]), seed=int(values["seed"]),
                psi=float(values["psi"]), architecture=values.get("architecture", ""),
                weights_sha256=values.get("weights_sha256", ""), dataset=values.get("dataset", ""),
                software=values.get("software", "").replace("/", " "),
                condition=tuple((k, values[k]) for k in CONDITION_KEYS if k in values),
                near_copy_check=values.get("near_copy_check", ""),
            )
        except ValueError as exc:
            raise SyntheticWriteError(f"Image Comments hold unreadable provenance: {exc}") from None


@dataclass(frozen=True)
class SyntheticSeries:
    """The identity every instance of one synthetic series shares: its series, study and synthetic patient.

    Build one with :meth:`new`; the constructor checks that every marker is present.
    """

    study_instance_uid: str
    series_instance_uid: str
    patient_id: str
    patient_name: str
    study_id: str
    series_description: str
    study_description: str
    created: _dt.datetime
    series_number: int = 1
    modality: str = "OT"
    institution_name: str = MANUFACTURER
    body_part_examined: str = ""
    laterality: str = ""
    uid_root: str = ""
    view_position: str = ""

    def __post_init__(self) -> None:
        if self.view_position and not _CS_RE.match(self.view_position):
            raise SyntheticWriteError(f"View Position {self.view_position!r} must be 1-16 upper-case letters, digits or '_' (CS, PS3.5 §6.2)")
        for name in ("study_instance_uid", "series_instance_uid"):
            try:
                validate_uid(getattr(self, name), name)
            except InvalidUID as exc:
                raise SyntheticWriteError(str(exc)) from None
        if not self.series_description.upper().startswith(SYNTHETIC_PREFIX):
            raise SyntheticWriteError(f"Series Description {self.series_description!r} must begin with {SYNTHETIC_PREFIX!r}")
        if len(self.series_description) > _LO_MAX:
            raise SyntheticWriteError(f"Series Description is {len(self.series_description)} characters; LO allows {_LO_MAX}")
        if SYNTHETIC_PREFIX not in self.patient_name.upper() or SYNTHETIC_PREFIX not in self.patient_id.upper():
            raise SyntheticWriteError("the synthetic patient's name and ID must both say SYNTHETIC")
        if not _CS_RE.match(self.modality):
            raise SyntheticWriteError(f"Modality {self.modality!r} must be 1-16 upper-case letters, digits or '_' (CS, PS3.5 §6.2)")
        if self.laterality not in ("", "R", "L"):
            raise SyntheticWriteError(f"Laterality {self.laterality!r} must be R, L or empty (PS3.3 C.7.3.1)")
        if self.series_number < 1:
            raise SyntheticWriteError("Series Number must be at least 1")

    @classmethod
    def new(
        cls,
        model: str,
        version: int,
        uid_root: str = "",
        series_description: str | None = None,
        modality: str = "OT",
        institution_name: str = MANUFACTURER,
        body_part_examined: str = "",
        laterality: str = "",
        psi: float | None = None,
        created: _dt.datetime | None = None,
        view_position: str = "",
        condition: dict[str, str] | None = None,
    ) -> "SyntheticSeries":
        """A new study with one series and a new synthetic patient; UIDs are fresh under ``uid_root``.

        A ``series_description`` that does not begin with SYNTHETIC gets the prefix (truncated to 64).
        """
        try:
            study_uid, series_uid = new_uid(uid_root), new_uid(uid_root)
        except InvalidUID as exc:
            raise SyntheticWriteError(f"synthetic.uid_root {uid_root!r} is not a usable UID root: {exc}") from None
        token = uuid.uuid4().hex[:12].upper()
        ref = f"{model} v{version}"
        if series_description is None or not series_description.strip():
            what = " ".join(str(v) for v in (condition or {}).values())
            series_description = f"{SYNTHETIC_PREFIX} {ref}" + (f" {what}" if what else "") + (f" psi={psi:g}" if psi is not None else "")
        elif not series_description.strip().upper().startswith(SYNTHETIC_PREFIX):
            series_description = f"{SYNTHETIC_PREFIX} {series_description.strip()}"
        # Person Name components are 64 characters at most; model names are at most 64 already.
        given = model.upper()[:_PN_COMPONENT_MAX]
        return cls(
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
            patient_id=f"{SYNTHETIC_PREFIX}-{token}",
            patient_name=f"{SYNTHETIC_PREFIX}^{given}",
            study_id=f"SYN{token[:8]}"[:_SH_MAX],
            series_description=series_description.strip()[:_LO_MAX],
            study_description=f"{SYNTHETIC_PREFIX} radiographs from {ref}"[:_LO_MAX],
            created=created or _dt.datetime.now(),
            modality=modality,
            institution_name=institution_name,
            body_part_examined=body_part_examined,
            laterality=laterality,
            uid_root=uid_root,
            view_position=view_position.upper(),
        )


def full_range_window(bits: int) -> tuple[int, int]:
    """Window Center/Width that maps stored values 0..2**bits-1 linearly onto the display range.

    With the LINEAR function of PS3.3 C.11.2.1.2.1 the window spans [c - 0.5 - (w-1)/2, c - 0.5 + (w-1)/2],
    so c = 2**(bits-1) and w = 2**bits cover exactly 0..2**bits-1. The generator was trained on images
    normalized to that full range, so this is the window its output was meant to be seen with.
    """
    return 1 << (bits - 1), 1 << bits


def synthetic_image(
    pixels: np.ndarray,
    provenance: Provenance,
    series: SyntheticSeries,
    instance_number: int,
    sop_instance_uid: str | None = None,
    burn_in_label: bool = False,
) -> Dataset:
    """Build one synthetic Secondary Capture Image (PS3.3 A.8.1) from generated pixels.

    Parameters
    ----------
    pixels:
        (rows, columns) ``uint8`` or ``uint16``, MONOCHROME2 (brighter is denser), as
        :func:`models.sampling.to_uint` returns them. 8-bit pixels get Bits Allocated/Stored 8, 16-bit
        ones 16.
    provenance:
        Model, version, seed and psi that made the pixels; written to Image Comments and the
        Contributing Equipment Sequence.
    series:
        The study, series and synthetic patient the instance belongs to.
    instance_number:
        Instance Number (0020,0013), from 1.
    sop_instance_uid:
        SOP Instance UID; a fresh one under the series' UID root when None.
    burn_in_label:
        Draw ``SYNTHETIC`` into the top-left corner (:func:`burn_in_synthetic_label`) and set
        Burned In Annotation (0028,0301) to YES.

    Returns a dataset with File Meta Information, ready for :meth:`service.archive.store.Store.put`.
    Raises :class:`SyntheticWriteError` naming the argument that is wrong.
    """
    pixels = _check_pixels(pixels)
    if not isinstance(instance_number, int) or instance_number < 1:
        raise SyntheticWriteError(f"instance number {instance_number!r} must be a positive integer")
    if sop_instance_uid is None:
        sop_instance_uid = new_uid(series.uid_root)
    else:
        try:
            validate_uid(sop_instance_uid, "SOP Instance UID")
        except InvalidUID as exc:
            raise SyntheticWriteError(str(exc)) from None
    bits = 8 if pixels.dtype == np.uint8 else 16
    if burn_in_label:
        pixels = burn_in_synthetic_label(pixels)
    now = _dt.datetime.now()
    software = f"synthpacs {__version__}"
    equipment = ContributingEquipment(
        manufacturer=MANUFACTURER,
        purpose_of_reference=codes.DCM.SynthesizingEquipment,
        manufacturer_model_name=provenance.model[:_LO_MAX],
        software_versions=[provenance.model_ref[:_LO_MAX], software[:_LO_MAX]],
        institution_name=series.institution_name[:_LO_MAX] or None,
        contribution_datetime=now,
        contribution_description=_contribution(provenance)[:1024],
    )
    try:
        sc = SCImage(
            pixel_array=pixels,
            photometric_interpretation="MONOCHROME2",
            bits_allocated=bits,
            coordinate_system="PATIENT",
            study_instance_uid=series.study_instance_uid,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=sop_instance_uid,
            instance_number=instance_number,
            manufacturer=MANUFACTURER,
            patient_id=series.patient_id,
            patient_name=series.patient_name,
            patient_birth_date=None,
            patient_sex=None,
            accession_number=None,
            study_id=series.study_id,
            study_date=series.created.date(),
            study_time=series.created.time(),
            referring_physician_name=None,
            # Replaced by an empty value below: a generated image has no patient to be oriented to.
            patient_orientation=("A", "F"),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            contributing_equipment=[equipment],
            series_description=series.series_description,
            manufacturer_model_name="synthpacs",
            software_versions=software[:_LO_MAX],
            institution_name=series.institution_name[:_LO_MAX] or None,
            series_date=series.created.date(),
            series_time=series.created.time(),
            content_date=now.date(),
            content_time=now.time(),
        )
    except (TypeError, ValueError) as exc:
        raise SyntheticWriteError(f"the Secondary Capture image cannot be built: {exc}") from None
    ds: Dataset = sc
    # The markers of ARCHITECTURE.md, over what highdicom wrote.
    ds.SyntheticData = "YES"
    ds.ConversionType = ConversionType.SYNTHETIC.value
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = series.modality
    ds.StudyDescription = series.study_description
    ds.ImageComments = provenance.image_comments()
    ds.DerivationDescription = _contribution(provenance)[:1024]
    ds.BurnedInAnnotation = "YES" if burn_in_label else "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.LossyImageCompression = "00"
    ds.PatientOrientation = None
    if series.body_part_examined:
        ds.BodyPartExamined = series.body_part_examined[:_SH_MAX].upper()
    _set_laterality(ds, series)
    if series.view_position:
        ds.ViewPosition = series.view_position
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S.%f")
    center, width = full_range_window(bits)
    ds.WindowCenter = center
    ds.WindowWidth = width
    ds.WindowCenterWidthExplanation = "GENERATOR FULL RANGE"
    ds.VOILUTFunction = "LINEAR"
    ds.file_meta.ImplementationVersionName = "SYNTHPACS"
    return ds


def _set_laterality(ds: Dataset, series: SyntheticSeries) -> None:
    """Laterality (0020,0060) by the Type 2C condition of PS3.3 C.7.3.1 (see the module docstring)."""
    if series.laterality:
        ds.Laterality = series.laterality
    elif series.body_part_examined[:_SH_MAX].upper() in UNPAIRED_BODY_PARTS:
        if "Laterality" in ds:
            del ds.Laterality
    else:
        ds.Laterality = None  # paired or not known to be unpaired: present, empty, the side unknown


def _contribution(p: Provenance) -> str:
    arch = f" ({p.architecture})" if p.architecture else ""
    cond = "".join(f", {k} {v}" for k, v in p.condition)
    return f"Synthetic image generated by {p.model_ref}{arch}, seed {p.seed}, psi {p.psi:g}{cond}"


def _check_pixels(pixels: np.ndarray) -> np.ndarray:
    if not isinstance(pixels, np.ndarray):
        raise SyntheticWriteError(f"pixels must be a numpy array, not {type(pixels).__name__}")
    if pixels.ndim != 2:
        raise SyntheticWriteError(f"pixels must be one (rows, columns) image; got shape {pixels.shape}")
    if pixels.dtype not in (np.uint8, np.uint16):
        raise SyntheticWriteError(f"pixels must be uint8 or uint16 (models.sampling.to_uint); got {pixels.dtype}")
    rows, cols = pixels.shape
    if not (1 <= rows <= 65535 and 1 <= cols <= 65535):
        raise SyntheticWriteError(f"an image of {rows} x {cols} pixels cannot be stored (1..65535 each, US in PS3.3 C.7.6.3)")
    return np.ascontiguousarray(pixels)


# A 5 x 7 bitmap font holding the letters of SYNTHETIC: deterministic on every machine, unlike a TrueType
# rasterizer, so a labelled image regenerates bit for bit (the label is a pure function of the image size).
_GLYPHS = {
    "S": (".###.", "#...#", "#....", ".###.", "....#", "#...#", ".###."),
    "Y": ("#...#", "#...#", ".#.#.", "..#..", "..#..", "..#..", "..#.."),
    "N": ("#...#", "##..#", "#.#.#", "#.#.#", "#..##", "#...#", "#...#"),
    "T": ("#####", "..#..", "..#..", "..#..", "..#..", "..#..", "..#.."),
    "H": ("#...#", "#...#", "#...#", "#####", "#...#", "#...#", "#...#"),
    "E": ("#####", "#....", "#....", "####.", "#....", "#....", "#####"),
    "I": (".###.", "..#..", "..#..", "..#..", "..#..", "..#..", ".###."),
    "C": (".###.", "#...#", "#....", "#....", "#....", "#...#", ".###."),
}
LABEL = "SYNTHETIC"


def _label_mask(scale: int) -> np.ndarray:
    glyphs = [np.array([[c == "#" for c in row] for row in _GLYPHS[ch]], dtype=bool) for ch in LABEL]
    spaced = []
    for i, g in enumerate(glyphs):
        spaced.append(g)
        if i < len(glyphs) - 1:
            spaced.append(np.zeros((7, 1), dtype=bool))
    mask = np.concatenate(spaced, axis=1)
    return np.kron(mask, np.ones((scale, scale), dtype=bool))


# Letter height as a fraction of the shorter side: about 3 %, the size of a radiograph's burned-in side
# marker, legible on a full-screen view and on a 128 px thumbnail alike; never below the 7 px font.
LABEL_HEIGHT_FRACTION = 0.03


def label_scale(rows: int, cols: int) -> int:
    """Device pixels per font pixel for an image of this size (at least 1)."""
    return max(1, round(LABEL_HEIGHT_FRACTION * min(rows, cols) / 7))


def label_box(rows: int, cols: int) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the label's black box in an image of this size."""
    scale = label_scale(rows, cols)
    height, width = (7 + 2) * scale, (len(LABEL) * 6 - 1 + 2) * scale
    return scale, scale, height, width


def burn_in_synthetic_label(pixels: np.ndarray) -> np.ndarray:
    """Return a copy with ``SYNTHETIC`` drawn in the top-left corner: white letters on a black box.

    Where: the top-left corner, one font pixel in from the edges. Radiographs are framed with the anatomy
    in the middle and collimation, side markers and text in the corners, and every viewer overlays its
    own text in the corners too; a corner box leaves the centre of the image untouched (the box stays
    within the top 16 % and the left 88 % of a 64 px image, and within the top 6 % and the left 31 % from
    256 px up). How big: letters about 3 % of the shorter side high (:data:`LABEL_HEIGHT_FRACTION`, 7 px
    at least), so the label reads the same on a 64 px thumbnail and a 2048 px radiograph.

    The result depends only on the pixels and their size, so a regenerated image gets the same label bit
    for bit. Raises :class:`SyntheticWriteError` when the image is too small to hold it.
    """
    pixels = _check_pixels(pixels)
    rows, cols = pixels.shape
    scale = label_scale(rows, cols)
    mask = _label_mask(scale)
    top, left, h, w = label_box(rows, cols)
    if top + h > rows or left + w > cols:
        raise SyntheticWriteError(
            f"a {rows} x {cols} image is too small for the burned-in SYNTHETIC label (needs {top + h} x {left + w}); "
            "use a larger model or set synthetic.burn_in_label = false"
        )
    out = pixels.copy()
    out[top:top + h, left:left + w] = 0
    box = out[top + scale:top + scale + mask.shape[0], left + scale:left + scale + mask.shape[1]]
    box[mask] = np.iinfo(out.dtype).max
    return out


__all__ = [
    "LABEL_HEIGHT_FRACTION", "UNPAIRED_BODY_PARTS", "ConversionType", "Provenance", "SyntheticSeries", "SyntheticWriteError", "burn_in_synthetic_label",
    "full_range_window", "label_box", "label_scale", "synthetic_image",
]
