"""``dataset import-images DIR``: ordinary JPG/PNG radiographs as CR or DX instances of a test patient.

Test and demo data that is not DICOM (such as the FracAtlas JPEGs in ../shared/data/radiographs) enters
the store the way a C-STORE does, through :meth:`Store.put` (validation, de-identification, durable
write, index), so everything downstream sees ordinary instances. Each file becomes one instance:

* pixels: the file's gray levels, unchanged (8 bits, or 16 for 16-bit PNGs), MONOCHROME2. Colour files
  whose content is gray (most radiograph JPEGs are saved as RGB) are reduced to one channel; colour
  content is refused. A JPEG source is recorded as lossy (Lossy Image Compression 01, ISO_10918_1,
  PS3.3 C.7.6.1.1.5), so no one mistakes it for an original acquisition.
* display: Window Center 2^(b-1), Width 2^b with the LINEAR function (PS3.3 C.11.2.1.2.1), which maps
  stored value x to x / (2^b - 1): a viewer shows the file exactly as an image viewer did.
* patient: one clearly fake test patient (:data:`TEST_PATIENT_NAME`, :data:`TEST_PATIENT_ID`); one
  study per imported folder, one series per body part and view.
* labels: body part and view from ``--body-part``/``--view``, or per file from a CSV (``--labels``, or a
  ``manifest.csv`` in the folder) with columns ``filename``, ``body_part`` and optionally ``views`` and
  ``fractured`` (or ``finding``). FracAtlas' labels (``hand``, ``leg``, ``frontal``...) map to Body Part
  Examined and View Position; a mixed label (``hand+shoulder``, ``frontal+lateral``) names an image
  that shows several parts or views (FracAtlas' 50 "hand+shoulder" images are mostly chest and shoulder
  views), so it leaves the attribute empty rather than naming one part: such images stay out of datasets
  filtered by body part or view and out of conditional training on that field. The ``fractured`` column
  (yes/no) becomes the finding FRACTURE/NONE, recorded beside the store (:mod:`service.data.findings`)
  because no header attribute survives de-identification to carry it.
* a held-out split: ``--exclude FILE`` names files (one per line, ``#`` comments) that are not imported,
  so a model trained on the store never sees them (the demo model's held-out FracAtlas images).
* UIDs: derived from the file's content and the labels (PS3.5 §B.2, 2.25 UUID-derived), so a second
  import of the same folder is recognized by the store as identical and adds nothing.
"""

from __future__ import annotations

import csv
import hashlib
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from service.archive.store import IMPLEMENTATION_CLASS_UID, Store, StoreError
from service.data.findings import finding_word, record_findings
from service.data.phantom import CR_IMAGE_STORAGE, DX_IMAGE_STORAGE_PRESENTATION
from service.data.progress import Progress
from service.logs import get_logger, uid_hash

log = get_logger("import")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TEST_PATIENT_NAME = "TEST^IMPORTED RADIOGRAPHS"
TEST_PATIENT_ID = "TEST-IMPORT-0001"
LABELS_FILE = "manifest.csv"
MODALITIES = {"CR": CR_IMAGE_STORAGE, "DX": DX_IMAGE_STORAGE_PRESENTATION}
# View labels people write, to View Position (0018,5101) values. AP/PA/LL/RL... are the defined terms
# (PS3.3 C.8.11.5.1.1). FracAtlas' "frontal" does not say AP or PA: the frontal projection of the hand and
# wrist is taken postero-anterior (palm on the detector), that of the leg, hip and shoulder antero-posterior.
VIEW_TERMS = {"frontal": "AP", "ap": "AP", "pa": "PA", "lateral": "LATERAL", "lat": "LATERAL", "oblique": "OBLIQUE", "obl": "OBLIQUE"}
FRONTAL_PA = frozenset({"HAND", "WRIST", "FINGER"})
# Same tolerance as the pixel pipeline: lossy JPEG leaves a little chroma noise on gray images.
GRAY_TOLERANCE = 0.01
_CS_RE = re.compile(r"[^A-Z0-9 _]")
# Body Part Examined (PS3.16 Annex L) to its CID 4031 Common Anatomic Regions code (SNOMED CT).
ANATOMIC_REGIONS = {
    "HAND": ("85562004", "Hand"), "LEG": ("30021000", "Lower leg"), "HIP": ("29836001", "Hip"),
    "SHOULDER": ("16982005", "Shoulder"), "KNEE": ("72696002", "Knee"), "FOOT": ("56459004", "Foot"),
    "ANKLE": ("344001", "Ankle"), "CHEST": ("51185008", "Thorax"), "PELVIS": ("12921003", "Pelvis"),
    "FOREARM": ("14975008", "Forearm"), "THIGH": ("68367000", "Thigh"),
}
# Body Part Examined terms (PS3.16 Annex L) of unpaired structures, which take no Laterality.
UNPAIRED = frozenset({
    "CHEST", "ABDOMEN", "PELVIS", "SKULL", "HEAD", "HEADNECK", "NECK", "SPINE", "CSPINE", "TSPINE", "LSPINE",
    "SSPINE", "COCCYX", "SACRUM", "THORAX", "WHOLEBODY", "CHESTABDOMEN", "ABDOMENPELVIS", "STERNUM", "MANDIBLE",
})


class ImportImagesError(Exception):
    """The import cannot start (no folder, no images, a labels file that cannot be read)."""


@dataclass
class ImportResult:
    files: int = 0
    stored: int = 0
    identical: int = 0
    kept: int = 0
    excluded: int = 0  # named in --exclude
    findings: int = 0  # instances with a finding recorded
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (file, reason, message)
    study_uid: str = ""

    def summary(self) -> dict[str, Any]:
        reasons: dict[str, int] = {}
        for _, reason, _ in self.skipped:
            reasons[reason] = reasons.get(reason, 0) + 1
        return {"files": self.files, "stored": self.stored, "identical": self.identical, "kept": self.kept, "excluded": self.excluded, "findings": self.findings, "skipped": reasons}


class SkipFile(Exception):
    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


# Namespace of the name-based UUIDs behind imported instances' UIDs (a fixed, random UUID).
_UID_NAMESPACE = uuid.UUID("5d0f3a0e-8f0c-4c56-9a57-4b8c2f1d6e21")


def content_uid(*parts: str) -> str:
    """A UID under 2.25 from a name-based UUID (PS3.5 §B.2, RFC 4122 version 5): same parts, same UID."""
    return f"2.25.{uuid.uuid5(_UID_NAMESPACE, chr(31).join(parts)).int}"


def code_string(value: str, default: str = "") -> str:
    """A label as a DICOM Code String (PS3.5 §6.2 CS: upper case, digits, space, underscore, 16 chars)."""
    text = _CS_RE.sub("_", value.strip().upper())[:16].strip()
    return text or default


def single_label(value: str) -> str:
    """FracAtlas joins several regions or views with '+': such an image has no single one ("")."""
    return "" if "+" in value else value.strip()


def view_position(label: str, body_part: str = "") -> str:
    """A view label as View Position; "frontal" is PA for the body parts in :data:`FRONTAL_PA`, else AP."""
    label = single_label(label)
    if label.lower() == "frontal" and code_string(body_part) in FRONTAL_PA:
        return "PA"
    return VIEW_TERMS.get(label.lower(), code_string(label))


def read_labels(path: Path) -> dict[str, dict[str, str]]:
    """filename -> {"body_part", "view", "finding"} from a CSV with ``filename`` and ``body_part`` (and
    ``views``, ``fractured`` or ``finding``)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields = set(reader.fieldnames or ())
            if not {"filename", "body_part"} <= fields:
                raise ImportImagesError(f"{path} needs the columns filename and body_part; it has {', '.join(sorted(fields)) or 'none'}")
            labels = {}
            for row in reader:
                part, views = row.get("body_part") or "", row.get("views") or row.get("view") or ""
                labels[row["filename"].strip()] = {
                    "body_part": code_string(single_label(part)),
                    "view": view_position(views, single_label(part)),
                    "view_label": single_label(views),
                    # A mixed label is a label: it must not fall back to --body-part/--view.
                    "mixed": ",".join(k for k, v in (("body_part", part), ("view", views)) if "+" in v),
                    "finding": finding_word(row.get("finding") or row.get("fractured") or ""),
                }
            return labels
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ImportImagesError(f"labels file {path} cannot be read ({exc})") from None


def load_gray(path: Path) -> tuple[np.ndarray, bool]:
    """The file's gray levels as uint8 or uint16, and whether the source was lossy (JPEG)."""
    try:
        with Image.open(path) as im:
            im.load()
            fmt = im.format
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im)
                if arr.min(initial=0) < 0 or arr.max(initial=0) > 65535:
                    raise SkipFile("unsupported_image", f"{im.mode} values outside 0-65535")
                return arr.astype(np.uint16), fmt == "JPEG"
            if im.mode == "1":
                im = im.convert("L")
            if im.mode in ("LA", "PA"):
                im = im.convert(im.mode[0])
            if im.mode == "P":
                im = im.convert("RGB")
            if im.mode == "RGBA":
                im = im.convert("RGB")
            if im.mode == "L":
                return np.array(im, dtype=np.uint8), fmt == "JPEG"
            if im.mode != "RGB":
                raise SkipFile("unsupported_image", f"image mode {im.mode} is not gray or RGB")
            rgb = np.asarray(im).astype(np.int16)
    except SkipFile:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise SkipFile("unreadable_image", f"not a readable image ({type(exc).__name__}: {str(exc)[:120]})") from None
    spread = max(np.abs(rgb[..., 0] - rgb[..., 1]).mean(), np.abs(rgb[..., 1] - rgb[..., 2]).mean())
    if spread > GRAY_TOLERANCE * 255:
        raise SkipFile("colour_content", f"colour content (mean channel difference {spread / 2.55:.1f}%); a radiograph is gray")
    gray = np.rint(0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2])
    return np.clip(gray, 0, 255).astype(np.uint8), fmt == "JPEG"


def wrap_pixels(
    pixels: np.ndarray,
    modality: str,
    study_uid: str,
    series_uid: str,
    sop_uid: str,
    instance_number: int,
    series_number: int,
    body_part: str = "",
    view: str = "",
    lossy_source: bool = False,
) -> Dataset:
    """A CR Image (PS3.3 A.2) or DX Image For Presentation (A.26) instance of the test patient."""
    if modality not in MODALITIES:
        raise ValueError(f"modality {modality!r} is not CR or DX")
    if pixels.ndim != 2 or pixels.dtype not in (np.uint8, np.uint16) or 0 in pixels.shape:
        raise ValueError(f"pixels must be a non-empty 2-D uint8 or uint16 array, not {pixels.dtype} {pixels.shape}")
    bits = 8 if pixels.dtype == np.uint8 else 16
    sop_class = MODALITIES[modality]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    # Patient and study (PS3.3 C.7.1.1, C.7.2.1): a test patient that says it is one; dates left empty
    # (Type 2) so a re-import produces the same bytes.
    ds.PatientName = TEST_PATIENT_NAME
    ds.PatientID = TEST_PATIENT_ID
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = "IMPORT"
    ds.StudyDescription = "TEST IMPORTED RADIOGRAPHS"
    # Series and equipment (C.7.3.1, C.8.1.1 / C.8.11.1, C.7.5.1).
    ds.Modality = modality
    ds.SeriesNumber = series_number
    ds.SeriesDescription = f"IMPORTED {body_part or 'IMAGES'}".strip()[:64]
    ds.BodyPartExamined = body_part
    ds.ViewPosition = view
    if modality == "CR" and body_part not in UNPAIRED:
        # Type 2C for paired structures (PS3.3 C.7.3.1): present, value unknown. DX states laterality
        # per image (Image Laterality, C.8.11.5) instead.
        ds.Laterality = ""
    ds.Manufacturer = "synthpacs import-images"
    ds.InstanceNumber = instance_number
    ds.PatientOrientation = ""
    if modality == "DX":
        ds.ImageLaterality = "U"  # unknown: the source file does not say
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["DERIVED", "PRIMARY"]
        ds.DetectorType = ""
        ds.PresentationLUTShape = "IDENTITY"
        ds.RescaleIntercept = 0
        ds.RescaleSlope = 1
        ds.RescaleType = "US"
        # Type 2 attributes of the DX modules (PS3.3 C.8.11.5, C.8.11.7, C.7.6.14, C.8.11.1.1): present,
        # empty, because a JPEG carries none of this.
        ds.AnatomicRegionSequence = _anatomic_region(body_part)
        ds.PositionerType = ""
        ds.AcquisitionContextSequence = []
    else:
        ds.ImageType = ["DERIVED", "PRIMARY"]
    # Image pixel (C.7.6.3).
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = int(pixels.shape[0]), int(pixels.shape[1])
    ds.BitsAllocated = bits
    ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    # VOI (C.11.2.1.2.1): LINEAR with c = 2^(b-1), w = 2^b maps x to x / (2^b - 1), the file's own look.
    ds.WindowCenter = 1 << (bits - 1)
    ds.WindowWidth = 1 << bits
    ds.VOILUTFunction = "LINEAR"
    ds.BurnedInAnnotation = "NO"
    if lossy_source:
        ds.LossyImageCompression = "01"
        ds.LossyImageCompressionMethod = "ISO_10918_1"
    else:
        ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(pixels).astype(pixels.dtype.newbyteorder("<")).tobytes()
    return ds


def _anatomic_region(body_part: str) -> list[Dataset]:
    """Anatomic Region Sequence (PS3.3 C.8.11.5) for a known body part: one SNOMED CT code of CID 4031."""
    code = ANATOMIC_REGIONS.get(body_part)
    if code is None:
        return []
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[0], "SCT", code[1]
    return [item]


def read_name_list(path: Path) -> set[str]:
    """File names, one per line; blank lines and ``#`` comments ignored (a held-out split's list)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ImportImagesError(f"the list of files to exclude, {path}, cannot be read ({exc})") from None
    return {line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()}


def _files(directory: Path, limit: int | None) -> list[Path]:
    files = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    return files[:limit] if limit else files


def import_images(
    store: Store,
    directory: Path,
    modality: str = "CR",
    body_part: str = "",
    view: str = "",
    labels_file: Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    exclude: set[str] | None = None,
) -> ImportResult:
    """Wrap every JPG/PNG under ``directory`` (but those named in ``exclude``) and put it into ``store``
    with source "import"; record their findings beside the store."""
    directory = Path(directory)
    modality = modality.upper()
    if modality not in MODALITIES:
        raise ImportImagesError(f"modality {modality!r} cannot be imported; choose CR or DX")
    if not directory.is_dir():
        raise ImportImagesError(f"{directory} is not a folder")
    if limit is not None and limit < 1:
        raise ImportImagesError("--limit must be at least 1")
    files = _files(directory, None)
    if not files:
        raise ImportImagesError(f"{directory} holds no {', '.join(IMAGE_SUFFIXES)} files")
    excluded = 0
    if exclude:
        kept_files = [p for p in files if p.name not in exclude and str(p.relative_to(directory)) not in exclude]
        excluded = len(files) - len(kept_files)
        files = kept_files
        if not files:
            raise ImportImagesError(f"every image in {directory} is named in the exclusion list")
    files = files[:limit] if limit else files
    labels: dict[str, dict[str, str]] = {}
    if labels_file is not None:
        labels = read_labels(Path(labels_file))
    elif (directory / LABELS_FILE).is_file():
        try:
            labels = read_labels(directory / LABELS_FILE)
        except ImportImagesError:
            labels = {}  # a manifest.csv of another kind: not ours to interpret
    default_part = code_string(body_part)
    root = directory.resolve()
    study_uid = content_uid("study", str(root), TEST_PATIENT_ID)
    result = ImportResult(files=len(files), study_uid=study_uid, excluded=excluded)
    findings: dict[str, str] = {}
    series_numbers: dict[tuple[str, str], int] = {}
    bar = Progress(len(files), f"import-images {directory.name}", enabled=progress)
    for number, path in enumerate(files, start=1):
        rel = str(path.relative_to(directory))
        label = labels.get(path.name) or labels.get(rel) or {}
        mixed = label.get("mixed", "")
        part = "" if "body_part" in mixed else label.get("body_part") or default_part
        # "frontal" reads as PA or AP by body part: the part this file ends up with, from its label or --body-part.
        raw_view = label.get("view_label") or view
        vp = "" if "view" in mixed else view_position(raw_view, part) if raw_view else ""
        try:
            pixels, lossy = load_gray(path)
            digest = hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()
            key = (part, vp)
            series_numbers.setdefault(key, len(series_numbers) + 1)
            series_uid = content_uid("series", study_uid, modality, part, vp)
            sop_uid = content_uid("instance", study_uid, modality, part, vp, digest)
            ds = wrap_pixels(pixels, modality, study_uid, series_uid, sop_uid, number, series_numbers[key], part, vp, lossy)
            put = store.put(ds, source="import")
            outcome = put.outcome
            if label.get("finding") and outcome != "kept":
                findings[put.record.sop_instance_uid] = label["finding"]
        except SkipFile as exc:
            result.skipped.append((rel, exc.reason, str(exc)))
        except StoreError as exc:
            result.skipped.append((rel, f"store_{exc.reason}", str(exc)))
        else:
            if outcome in ("stored", "replaced"):
                result.stored += 1
            elif outcome == "identical":
                result.identical += 1
            else:
                result.kept += 1
        bar.update(1, extra=f"{len(result.skipped)} skipped" if result.skipped else None)
    bar.close()
    record_findings(store.root, findings)
    result.findings = len(findings)
    log.info("images_imported", study=uid_hash(study_uid), modality=modality, **result.summary())
    return result
