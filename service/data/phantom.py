"""Phantoms: bone-like images of known geometry, and CR/DX DICOM instances that carry them.

Tests and benchmarks use these instead of patient data. The geometry is exact and reported, so a test
can check that a feature lands where it should after windowing and resizing. The patients are clearly
fake (``PHANTOM^...``), but carry names, IDs and birth dates so de-identification has something to remove.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_IMAGE_STORAGE_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


@dataclass(frozen=True)
class PhantomGeometry:
    """Where the phantom's features are, as fractions of the image height and width."""

    shaft_center_col: float  # centre of the long bone's shaft
    shaft_half_width: float
    shaft_top: float
    shaft_bottom: float
    marker_row: float  # a small dense square marker (like a lead letter)
    marker_col: float
    marker_half_size: float


def phantom_geometry(seed: int = 0) -> PhantomGeometry:
    rng = np.random.default_rng(seed)
    return PhantomGeometry(
        shaft_center_col=float(rng.uniform(0.4, 0.6)),
        shaft_half_width=float(rng.uniform(0.06, 0.1)),
        shaft_top=float(rng.uniform(0.1, 0.2)),
        shaft_bottom=float(rng.uniform(0.8, 0.9)),
        marker_row=float(rng.uniform(0.08, 0.15)),
        marker_col=float(rng.uniform(0.08, 0.15)),
        marker_half_size=0.03,
    )


def phantom_image(rows: int = 256, columns: int = 256, bits_stored: int = 12, seed: int = 0, noise: float = 0.01) -> tuple[np.ndarray, PhantomGeometry]:
    """A radiograph-like image: soft tissue, a long bone with cortex and marrow, a dense marker.

    Returns ``(pixels, geometry)``; pixels are uint16 (uint8 when bits_stored <= 8), brighter = denser,
    as in MONOCHROME2.
    """
    g = phantom_geometry(seed)
    rng = np.random.default_rng(seed + 1)
    y = (np.arange(rows)[:, None] + 0.5) / rows
    x = (np.arange(columns)[None, :] + 0.5) / columns
    img = np.full((rows, columns), 0.05)
    # Soft tissue: a wide rounded band around the bone.
    tissue = np.clip(1 - ((x - g.shaft_center_col) / (3.2 * g.shaft_half_width)) ** 2, 0, 1)
    img += 0.25 * tissue
    # The shaft: dense cortex, lighter marrow, ends flaring like metaphyses.
    dist = np.abs(x - g.shaft_center_col)
    in_length = (y >= g.shaft_top) & (y <= g.shaft_bottom)
    flare = 1 + 0.6 * np.exp(-(((y - g.shaft_top) / 0.06) ** 2)) + 0.6 * np.exp(-(((y - g.shaft_bottom) / 0.06) ** 2))
    half = g.shaft_half_width * flare
    cortex = in_length & (dist <= half) & (dist >= 0.6 * half)
    marrow = in_length & (dist < 0.6 * half)
    img = np.where(cortex, 0.85, img)
    img = np.where(marrow, 0.55, img)
    marker = (np.abs(y - g.marker_row) <= g.marker_half_size) & (np.abs(x - g.marker_col) <= g.marker_half_size)
    img = np.where(marker, 1.0, img)
    img = img + rng.normal(0, noise, img.shape)
    img = np.clip(img, 0, 1)
    top = (1 << bits_stored) - 1
    dtype = np.uint8 if bits_stored <= 8 else np.uint16
    return np.round(img * top).astype(dtype), g


def phantom_dataset(
    rows: int = 256,
    columns: int = 256,
    bits_stored: int = 12,
    seed: int = 0,
    patient_name: str = "PHANTOM^TEST",
    patient_id: str = "PHANTOM-0001",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uid: str | None = None,
    body_part: str = "TIBIA",
    modality: str = "CR",
    photometric: str = "MONOCHROME2",
    instance_number: int = 1,
    window: tuple[float, float] | None = None,
) -> Dataset:
    """A complete CR (or DX) instance holding :func:`phantom_image`, ready for C-STORE or a file.

    With ``photometric="MONOCHROME1"`` the stored values are inverted (bone dark), as CR plates store them.
    """
    pixels, _ = phantom_image(rows, columns, bits_stored, seed)
    bits_allocated = 8 if bits_stored <= 8 else 16
    if photometric == "MONOCHROME1":
        pixels = ((1 << bits_stored) - 1 - pixels.astype(np.int64)).astype(pixels.dtype)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    sop_class = CR_IMAGE_STORAGE if modality == "CR" else DX_IMAGE_STORAGE_PRESENTATION
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.PatientAge = "055Y"
    ds.StudyDate = "20240102"
    ds.StudyTime = "101500"
    ds.AccessionNumber = "PH" + str(seed).zfill(6)
    ds.StudyID = "1"
    ds.ReferringPhysicianName = "PHANTOM^REFERRER"
    ds.InstitutionName = "Phantom General Hospital"
    ds.StudyDescription = "PHANTOM " + body_part
    ds.SeriesDescription = "PHANTOM AP"
    ds.Modality = modality
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.BodyPartExamined = body_part
    ds.ViewPosition = "AP"
    ds.Laterality = "L"
    ds.ImageLaterality = "L"
    ds.Manufacturer = "synthpacs phantom"
    if modality == "DX":
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelSpacing = [0.2, 0.2]
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    ds.BurnedInAnnotation = "NO"
    ds.PixelData = pixels.tobytes()
    return ds
