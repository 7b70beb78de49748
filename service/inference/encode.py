"""Generated images to bytes: PNG (8 or 16 bit), raw little-endian samples, or synthetic DICOM SC.

Pixels come from :func:`models.sampling.to_uint`, so an encoding never changes a value: PNG is lossless,
raw is the array itself, and the DICOM encoding stores the same integers (PS3.3 A.8.1 Secondary Capture
Image, written by :mod:`service.synthetic.sc_writer`).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from models.registry import ModelVersion

# zlib level 3: within a few percent of level 6's size on radiographs at a fraction of its time.
PNG_COMPRESS_LEVEL = 3
_PNG_MODES_8 = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


class EncodeError(ValueError):
    """The image cannot be encoded as asked (for example 16-bit PNG of a colour model)."""


@dataclass(frozen=True)
class Format:
    kind: str  # "png", "raw" or "dicom"
    bits: int  # 8 or 16


def check_format(fmt: Format, channels: int) -> None:
    """Raise :class:`EncodeError` when a model with ``channels`` samples per pixel cannot use ``fmt``."""
    if fmt.bits not in (8, 16):
        raise EncodeError(f"bit depth {fmt.bits} is not supported; use 8 or 16")
    if fmt.kind == "png" and fmt.bits == 16 and channels != 1:
        raise EncodeError(f"16-bit PNG is written for grayscale models only; this model has {channels} channels (use RAW_UINT16)")
    if fmt.kind == "png" and channels not in _PNG_MODES_8:
        raise EncodeError(f"PNG holds 1 to 4 channels; this model has {channels}")
    if fmt.kind == "dicom" and channels != 1:
        raise EncodeError(f"synthetic radiographs are grayscale; this model has {channels} channels")
    if fmt.kind not in ("png", "raw", "dicom"):
        raise EncodeError(f"unknown encoding kind {fmt.kind!r}")


def encode_png(pixels: np.ndarray) -> bytes:
    """(C, H, W) uint8 or (1, H, W) uint16 -> PNG bytes (lossless)."""
    channels = pixels.shape[0]
    if pixels.dtype == np.uint16 and channels != 1:
        raise EncodeError("16-bit PNG is written for grayscale images only")
    if channels not in _PNG_MODES_8:
        raise EncodeError(f"PNG holds 1 to 4 channels, not {channels}")
    arr = pixels[0] if channels == 1 else np.moveaxis(pixels, 0, -1)
    # Pillow infers the mode from dtype and shape: uint16 (H, W) is "I;16", a PNG of bit depth 16.
    img = Image.fromarray(np.ascontiguousarray(arr))
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def encode_raw(pixels: np.ndarray) -> bytes:
    """(C, H, W) -> row-major H x W (x C interleaved) samples; uint16 little-endian."""
    arr = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    if arr.dtype == np.uint16:
        arr = arr.astype("<u2", copy=False)
    return np.ascontiguousarray(arr).tobytes()


def decode_raw(data: bytes, height: int, width: int, channels: int, bits: int) -> np.ndarray:
    """The inverse of :func:`encode_raw`: (H, W) or (H, W, C) uint8/uint16 (for clients and tests)."""
    dtype = np.dtype(np.uint8) if bits == 8 else np.dtype("<u2")
    expected = height * width * channels * dtype.itemsize
    if len(data) != expected:
        raise EncodeError(f"raw image has {len(data)} bytes; {height}x{width}x{channels} at {bits} bits needs {expected}")
    arr = np.frombuffer(data, dtype=dtype)
    return arr.reshape((height, width) if channels == 1 else (height, width, channels)).astype(dtype.newbyteorder("="))


class DicomEncoder:
    """Synthetic Secondary Capture instances for one Generate request: one study and series, one instance
    per image, every synthetic marker of ARCHITECTURE.md set by :func:`service.synthetic.sc_writer.synthetic_image`
    and the same provenance GenerateStudy records (:func:`service.synthetic.studies.provenance_for`)."""

    def __init__(self, synthetic_cfg: Any, version: ModelVersion, psi: float, condition: dict[str, str] | None = None):
        from service.synthetic.sc_writer import SyntheticSeries, synthetic_image
        from service.synthetic.studies import provenance_for

        self._synthetic_image = synthetic_image
        self._provenance_for = provenance_for
        self._cfg = synthetic_cfg
        self._version = version
        self._psi = psi
        self._condition = dict(condition or {})
        self.series = SyntheticSeries.new(
            version.name, version.version, uid_root=synthetic_cfg.uid_root, modality=synthetic_cfg.modality,
            institution_name=synthetic_cfg.institution_name,
            body_part_examined=str(self._condition.get("body_part") or version.card.get("body_part", "")), psi=psi,
            view_position=self._condition.get("view", ""), condition=self._condition,
        )

    def encode(self, pixels: np.ndarray, seed: int, instance_number: int) -> tuple[bytes, str]:
        """(1, H, W) pixels -> (Part 10 file bytes, SOP Instance UID)."""
        provenance = self._provenance_for(self._version, int(seed), float(self._psi), self._condition)
        ds = self._synthetic_image(pixels[0], provenance, self.series, instance_number, burn_in_label=bool(self._cfg.burn_in_label))
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        return buf.getvalue(), str(ds.SOPInstanceUID)
