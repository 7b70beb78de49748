"""DICOM pixels to normalized training images, the way a viewer displays them.

The grayscale pipeline of PS3.4 Annex N.2 (Grayscale Transformations), applied to stored values:

1. decode the Pixel Data (native or compressed: pydicom with the pylibjpeg plugins), keep only the
   Bits Stored (PS3.5 §8.1.1: the other bits of the container are not part of the value);
2. Pixel Padding Value / Pixel Padding Range Limit (PS3.3 C.7.5.1.1.2) marks pixels outside the
   image; they are left out of every statistic and shown black;
3. Modality LUT: Rescale Slope and Intercept, or the Modality LUT Sequence (PS3.3 C.11.1);
4. VOI LUT (PS3.3 C.11.2): Window Center and Width with VOI LUT Function LINEAR, LINEAR_EXACT or
   SIGMOID (C.11.2.1.2-3), else the VOI LUT Sequence; when the header has neither (or ``window =
   "percentile"``), a robust window between two percentiles of the valid pixels;
5. polarity: MONOCHROME1 (PS3.3 C.7.6.3.1.2), or a MONOCHROME2 image with Presentation LUT Shape
   INVERSE (C.11.6.1), is inverted so that bone is bright;
6. resize with anti-aliasing (bicubic, or Lanczos) to a square, keeping the aspect ratio: "pad" shows
   the whole image on black, "crop" fills the square from the centre;
7. quantize to uint8 or uint16. For uint16 the display values stay float32 through the resize; for
   uint8 they are rounded to 8 bits before it, as in a viewer's frame buffer, and Pillow's 8-bit
   resampler is used: several times faster, within one gray level of the float path on radiographs
   (at hard synthetic edges its 8-bit intermediate also clips the filter's overshoot).

Steps 3-5 are one function of the stored value, so they are computed once per image as a lookup table
over every value Bits Stored allows (at most 65536 entries) and applied with one gather; percentiles
come from a histogram of the stored values. Inversion negates the VOI function's argument instead of
computing ``1 - y``, so a MONOCHROME1 image and its MONOCHROME2 inverse give bit-identical output.

RGB and YBR images whose content is gray (a radiograph saved as colour) are reduced to their
luminance; colour content, palette colour and other interpretations are refused. A multi-frame
image is refused unless ``multiframe = "first"``. Every refusal is a :class:`SkipImage` with a
machine-readable reason and a message without patient data.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, pixel_array

# Why an instance gave no image (the build report's "reason").
REASONS = {
    "unreadable": "the file is not a readable DICOM dataset",
    "missing_file": "the indexed file is not in the store",
    "corrupt": "the file no longer matches the sha256 recorded when it was stored",
    "no_pixel_data": "the instance has no Pixel Data",
    "empty_image": "Rows or Columns is zero or missing",
    "unsupported_photometric": "the Photometric Interpretation is not one a radiograph uses",
    "colour_content": "a colour image whose content is not gray",
    "multi_frame": "a multi-frame image (set dataset.multiframe = \"first\" to use the first frame)",
    "unsupported_bits": "the pixel format is not 1-16 bit integers",
    "decode_failed": "the Pixel Data could not be decoded",
    "too_small": "smaller than the minimum size asked for",
    "blank": "every valid pixel has the same value",
}

GRAY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
# Largest mean absolute difference between colour channels, as a fraction of the value range, that
# still counts as gray content (lossy JPEG leaves a little chroma noise on gray images).
GRAY_TOLERANCE = 0.01
# Percentiles are taken over at most about this many pixels (an even subsample of larger images):
# the window moves by less than a gray level and the histogram costs a fraction of a millisecond.
PERCENTILE_SAMPLE = 1 << 20
# Anti-aliased resampling: Pillow's filters widen their support by the reduction factor, so they
# low-pass before sampling. Bicubic is the default, the resize Clean-FID (Parmar et al., CVPR 2022,
# §3) found correct among libraries; Lanczos-3 is sharper and costs about half as much again.
# reducing_gap lets Pillow box-reduce by an integer factor first while at least this much reduction is
# left for the filter (Pillow: 3.0 is "indistinguishable from fair resampling"; 2.0 halves the cost on
# large images and stays anti-aliased: a box average and a >= 2x filtered reduction).
RESAMPLE = "bicubic"
RESAMPLERS = {"bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}
REDUCING_GAP = 2.0


class SkipImage(Exception):
    """An instance that gives no training image; ``reason`` is a key of :data:`REASONS`."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class PixelOptions:
    """Every parameter of the pipeline; recorded in dataset.json so a build can be repeated."""

    resolution: int = 256
    fit: str = "pad"  # pad | crop
    dtype: str = "uint8"  # uint8 | uint16
    window: str = "header"  # header: the header's VOI when it has one; percentile: always the robust window
    percentiles: tuple[float, float] = (0.5, 99.5)
    multiframe: str = "refuse"  # refuse | first
    min_size: int = 0  # skip images whose shorter side is smaller (pixels)
    resample: str = field(default=RESAMPLE)

    def __post_init__(self) -> None:
        if not 8 <= int(self.resolution) <= 8192:
            raise ValueError(f"resolution {self.resolution} is outside 8..8192")
        checks = {"fit": ("pad", "crop"), "dtype": ("uint8", "uint16"), "window": ("header", "percentile"),
                  "multiframe": ("refuse", "first"), "resample": tuple(RESAMPLERS)}
        for key, allowed in checks.items():
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key} {getattr(self, key)!r} is not one of {', '.join(allowed)}")
        lo, hi = self.percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"percentiles {self.percentiles} must satisfy 0 <= low < high <= 100")
        if self.min_size < 0:
            raise ValueError("min_size cannot be negative")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["reducing_gap"] = REDUCING_GAP
        return d


@dataclass
class Display:
    """An image as a viewer shows it, before resizing: float32 in [0, 1], bright = dense."""

    image: np.ndarray
    info: dict[str, Any]


# -- header access ----------------------------------------------------------------------------------


def _functional_item(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of a functional group macro for ``frame`` (PS3.3 C.7.6.16), per-frame before shared."""
    for groups, index in (("PerFrameFunctionalGroupsSequence", frame), ("SharedFunctionalGroupsSequence", 0)):
        seq = ds.get(groups)
        if seq and len(seq) > index and sequence in seq[index] and seq[index][sequence].value:
            return seq[index][sequence].value[0]
    return None


def _value(ds: Dataset, keyword: str, frame: int = 0, group: str | None = None) -> Any:
    """An attribute from the top level, else from an enhanced object's functional group ``group``."""
    value = ds.get(keyword)
    if value is None and group is not None and any(tag in ds for tag in _ENHANCED_TAGS):
        item = _functional_item(ds, frame, group)
        if item is not None:
            value = item.get(keyword)
    return value


_IDENTITY8 = np.arange(256, dtype=np.uint8)
_ENHANCED_TAGS = frozenset({0x52009229, 0x52009230})  # Shared / Per-frame Functional Groups Sequence


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or hasattr(value, "__getitem__") and not isinstance(value, (str, bytes)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _int_attr(ds: Dataset, keyword: str) -> int | None:
    try:
        value = ds.get(keyword)
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# -- decoding ---------------------------------------------------------------------------------------


def _check_header(ds: Dataset, opts: PixelOptions) -> tuple[str, int, int, int]:
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise SkipImage("no_pixel_data", REASONS["no_pixel_data"])
    if "PixelData" not in ds:
        raise SkipImage("unsupported_bits", "floating-point pixel data is not a radiograph format")
    rows, cols = _int_attr(ds, "Rows"), _int_attr(ds, "Columns")
    if not rows or not cols or rows < 0 or cols < 0:
        raise SkipImage("empty_image", f"the image is {rows or 0} x {cols or 0} pixels")
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric not in GRAY + COLOUR:
        raise SkipImage(
            "unsupported_photometric",
            f"Photometric Interpretation {photometric or '(none)'} is not supported; radiographs are MONOCHROME1 or MONOCHROME2",
        )
    bits_stored = _int_attr(ds, "BitsStored") or _int_attr(ds, "BitsAllocated") or 0
    if not 1 <= bits_stored <= 16:
        raise SkipImage("unsupported_bits", f"Bits Stored {bits_stored} is not 1-16")
    frames = _int_attr(ds, "NumberOfFrames") or 1
    if frames > 1 and opts.multiframe == "refuse":
        raise SkipImage("multi_frame", f"the instance has {frames} frames; {REASONS['multi_frame']}")
    if opts.min_size and min(rows, cols) < opts.min_size:
        raise SkipImage("too_small", f"the image is {rows} x {cols}; the minimum size asked for is {opts.min_size}")
    return photometric, rows, cols, bits_stored


_NATIVE_LE = ("1.2.840.10008.1.2", "1.2.840.10008.1.2.1")


def _native_pixels(ds: Dataset, rows: int, cols: int) -> np.ndarray | None:
    """Single-frame 8/16-bit grayscale in a little-endian native transfer syntax, straight from the bytes.

    The common case of a stored radiograph; skipping pydicom's general decoder saves most of the
    decoding time of a small image. Anything else returns None and goes through pydicom.
    """
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    bits = _int_attr(ds, "BitsAllocated")
    if syntax not in _NATIVE_LE or bits not in (8, 16) or (_int_attr(ds, "SamplesPerPixel") or 1) != 1:
        return None
    if (_int_attr(ds, "NumberOfFrames") or 1) != 1:
        return None
    data = ds.PixelData
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    dtype = np.dtype(("<i" if signed else "<u") + str(bits // 8))
    need = rows * cols * dtype.itemsize
    if data is None or len(data) < need:
        raise SkipImage("decode_failed", f"Pixel Data holds {0 if data is None else len(data)} bytes; {rows} x {cols} pixels need {need}")
    return np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)


def _decode(ds: Dataset, frames: int, rows: int, cols: int) -> np.ndarray:
    arr = _native_pixels(ds, rows, cols) if frames == 1 else None
    if arr is not None:
        return arr
    try:
        # index=0 decodes only the first frame of a multi-frame image; YBR is converted to RGB.
        arr = pixel_array(ds, index=0 if frames > 1 else None)
    except Exception as exc:  # decoders raise many kinds; none may stop a build
        raise SkipImage("decode_failed", f"the Pixel Data could not be decoded ({type(exc).__name__}: {_safe(exc)})") from None
    if arr.dtype.kind == "f":
        raise SkipImage("unsupported_bits", "floating-point pixel data is not a radiograph format")
    return arr


def _safe(exc: Exception) -> str:
    """A decoder message, cut short; decoder messages describe streams, not patients."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:160]


def _stored_values(arr: np.ndarray, bits_stored: int, signed: bool) -> np.ndarray:
    """Keep the Bits Stored of each value (PS3.5 §8.1.1), sign-extended when Pixel Representation is 1."""
    container = arr.dtype.itemsize * 8
    if bits_stored >= container:
        return arr
    if signed:
        shift = 32 - bits_stored
        return ((arr.astype(np.int32) << shift) >> shift).astype(np.int32)
    mask = (1 << bits_stored) - 1
    if int(arr.max(initial=0)) > mask:
        arr = arr & np.array(mask, dtype=arr.dtype)
    return arr


def _luminance(arr: np.ndarray, bits: int) -> np.ndarray:
    """Gray content stored as colour: its luminance (ITU-R BT.601 weights), or refuse colour content."""
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise SkipImage("unsupported_photometric", f"expected three colour samples per pixel, found shape {arr.shape}")
    top = (1 << bits) - 1
    a = arr.astype(np.int32)
    step = max(1, math.ceil(math.sqrt(a.shape[0] * a.shape[1] / PERCENTILE_SAMPLE)))
    s = a[::step, ::step]
    spread = max(np.abs(s[..., 0] - s[..., 1]).mean(), np.abs(s[..., 1] - s[..., 2]).mean())
    if spread > GRAY_TOLERANCE * top:
        raise SkipImage(
            "colour_content",
            f"colour content (mean channel difference {100 * spread / top:.1f}% of the range); a radiograph is gray",
        )
    y = np.rint(0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2])
    return np.clip(y, 0, top).astype(np.uint16 if bits > 8 else np.uint8)


# -- the transformations ------------------------------------------------------------------------------


def _percentile_window(values: np.ndarray, hist: np.ndarray, low: float, high: float) -> tuple[float, float]:
    """Values at ranks floor(p_lo (n-1)) and ceil(p_hi (n-1)) of the valid pixels, from a histogram.

    With symmetric percentiles the ranks mirror each other, so an inverted image gets the mirrored window.
    """
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(hist[order])
    n = int(cum[-1])
    lo_rank = math.floor(low / 100.0 * (n - 1))
    hi_rank = math.ceil(high / 100.0 * (n - 1))
    sorted_values = values[order]
    lo = float(sorted_values[np.searchsorted(cum, lo_rank + 1)])
    hi = float(sorted_values[np.searchsorted(cum, hi_rank + 1)])
    return lo, hi


def _check_not_blank(hist: np.ndarray, valid_lut: np.ndarray | None, modality: np.ndarray) -> None:
    if valid_lut is not None:
        hist[~valid_lut] = 0
    present = np.nonzero(hist)[0]
    if present.size == 0:
        raise SkipImage("blank", "every pixel is padding")
    if np.ptp(modality[present]) == 0:
        raise SkipImage("blank", REASONS["blank"])


def _voi_function(u: np.ndarray, function: str) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3 on the normalized argument u = (x - c') / w'; output in [0, 1]."""
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * u))
    return np.clip(u + 0.5, 0.0, 1.0)


def _voi_lut_sequence(ds: Dataset, domain_values: np.ndarray) -> tuple[np.ndarray, dict[str, Any]] | None:
    """The first VOI LUT Sequence item applied to modality values, normalized by its output bit depth."""
    seq = ds.get("VOILUTSequence")
    if not seq:
        return None
    item = seq[0]
    descriptor = item.get("LUTDescriptor")
    data = item.get("LUTData")
    if descriptor is None or data is None or len(descriptor) != 3:
        return None
    entries = int(descriptor[0]) or 65536  # PS3.3 C.11.2.1.1: 0 means 2^16 entries
    first = int(descriptor[1])
    bits = int(descriptor[2])
    table = np.asarray(data if not isinstance(data, (bytes, bytearray)) else np.frombuffer(data, "<u2"), dtype=np.float64)
    if table.size < entries or not 8 <= bits <= 16:
        return None
    table = table[:entries]
    # The first mapped value's VR follows Pixel Representation: a US value above 32767 means negative.
    if first > 32767 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
        first -= 65536
    idx = np.clip(np.floor(domain_values).astype(np.int64) - first, 0, entries - 1)
    top = float((1 << bits) - 1)
    # Some writers declare 16 bits for 12-bit tables (PS3.3 C.11.2.1.1 note): scale by what is there.
    if table.max(initial=0) <= 4095 and bits == 16:
        top = 4095.0
    return np.clip(table[idx] / top, 0.0, 1.0), {"source": "voi_lut_sequence", "entries": entries, "first": first, "bits": bits}


def _display(ds: Dataset, opts: PixelOptions, mode: str = "F") -> tuple[Image.Image, dict[str, Any]]:
    """Steps 1-5 as a Pillow image ready for resampling: float32 ("F") or 8-bit ("L") display values."""
    photometric, rows, cols, bits_stored = _check_header(ds, opts)
    frames = _int_attr(ds, "NumberOfFrames") or 1
    arr = _decode(ds, frames, rows, cols)
    if frames > 1 and arr.ndim == (4 if photometric in COLOUR else 3):
        arr = arr[0]
    expected_shape = (rows, cols) + ((3,) if photometric in COLOUR else ())
    if arr.shape != expected_shape:
        raise SkipImage("decode_failed", f"decoded {arr.shape} pixels but the header describes {expected_shape}")
    info: dict[str, Any] = {"photometric": photometric, "rows": rows, "columns": cols, "bits_stored": bits_stored}
    if frames > 1:
        info["frame"] = 0
        info["frames"] = frames
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    if photometric in COLOUR:
        bits = int(ds.get("BitsAllocated", 8) or 8)
        bits = 8 if bits <= 8 else 16
        stored = _luminance(arr, bits)
        info["converted"] = "luminance"
        bits_stored, signed, header_voi = bits, False, False
    else:
        stored = _stored_values(arr, bits_stored, signed)
        header_voi = opts.window == "header"

    # The domain: every value Bits Stored allows; the lookup table covers it.
    dmin = -(1 << (bits_stored - 1)) if signed else 0
    size = 1 << bits_stored
    index = stored if (dmin == 0 and stored.dtype.kind == "u") else (stored.astype(np.int32) - dmin)
    domain = np.arange(dmin, dmin + size, dtype=np.float64)

    # Pixel padding (PS3.3 C.7.5.1.1.2), in stored values; a range when the limit is present.
    valid_lut = None
    pad = _int_attr(ds, "PixelPaddingValue") if photometric in GRAY else None
    if pad is not None:
        limit = _int_attr(ds, "PixelPaddingRangeLimit")
        if signed and pad > 32767 and bits_stored <= 16:
            pad -= 65536
        if signed and limit is not None and limit > 32767:
            limit -= 65536
        lo_pad, hi_pad = (pad, pad) if limit is None else (min(pad, limit), max(pad, limit))
        valid_lut = ~((domain >= lo_pad) & (domain <= hi_pad))
        info["padding"] = [lo_pad, hi_pad]

    # Modality LUT (PS3.3 C.11.1): the LUT Sequence, else rescale (per frame for enhanced objects).
    if photometric in GRAY and ds.get("ModalityLUTSequence"):
        try:
            modality = np.asarray(apply_modality_lut(domain.astype(np.int64), ds), dtype=np.float64)
        except Exception as exc:
            raise SkipImage("decode_failed", f"the Modality LUT Sequence cannot be applied ({type(exc).__name__})") from None
        info["modality_lut"] = "sequence"
    else:
        slope = _first_number(_value(ds, "RescaleSlope", 0, "PixelValueTransformationSequence"))
        intercept = _first_number(_value(ds, "RescaleIntercept", 0, "PixelValueTransformationSequence"))
        slope = 1.0 if slope is None or slope == 0 else slope
        intercept = 0.0 if intercept is None else intercept
        modality = domain * slope + intercept if (slope, intercept) != (1.0, 0.0) else domain
        if (slope, intercept) != (1.0, 0.0):
            info["rescale"] = [slope, intercept]

    # Histogram of valid stored values, for percentiles and the blank check: Pillow's for 8-bit values
    # (every pixel, in C, and only when needed), else numpy's over an even subsample of large images.
    src8: Image.Image | None = None
    hist: np.ndarray | None = None
    if index.dtype == np.uint8 and index.ndim == 2:
        src8 = Image.frombuffer("L", (cols, rows), np.ascontiguousarray(index), "raw", "L", 0, 1)
        if valid_lut is not None:
            hist = np.asarray(src8.histogram(), dtype=np.int64)[:size]
    else:
        step = max(1, math.ceil(math.sqrt(rows * cols / PERCENTILE_SAMPLE)))
        sample = index[::step, ::step]
        hist = np.bincount(sample.ravel(), minlength=size)[:size].astype(np.int64)
    if hist is not None:
        _check_not_blank(hist, valid_lut, modality)

    # Polarity (PS3.3 C.7.6.3.1.2, C.11.6.1): bone bright. Negating the VOI argument mirrors exactly.
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    invert = photometric == "MONOCHROME1" or (photometric == "MONOCHROME2" and shape == "INVERSE")
    sign = -1.0 if invert else 1.0
    info["inverted"] = invert

    # VOI LUT (PS3.3 C.11.2).
    voi: np.ndarray | None = None
    if header_voi:
        center = _first_number(_value(ds, "WindowCenter", 0, "FrameVOILUTSequence"))
        width = _first_number(_value(ds, "WindowWidth", 0, "FrameVOILUTSequence"))
        function = str(_value(ds, "VOILUTFunction", 0, "FrameVOILUTSequence") or "LINEAR").strip().upper()
        if function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            info["voi_function_ignored"] = function
            function = "LINEAR"
        min_width = 1.0 if function == "LINEAR" else 0.0
        if center is not None and width is not None and width > min_width:
            if function == "LINEAR":
                # C.11.2.1.2.1: y = ((x - (c - 0.5)) / (w - 1) + 0.5), clipped to the output range.
                u = (modality - (center - 0.5)) / (width - 1.0)
            else:
                u = (modality - center) / width
            voi = _voi_function(sign * u, function)
            info["window"] = {"source": "header", "center": center, "width": width, "function": function}
        elif center is not None or width is not None:
            info["window_ignored"] = {"center": center, "width": width, "function": function}
        if voi is None and photometric in GRAY:
            lut = _voi_lut_sequence(ds, modality)
            if lut is not None:
                values, lut_info = lut
                voi = 1.0 - values if invert else values
                info["window"] = lut_info
    if voi is None and hist is None:
        assert src8 is not None
        hist = np.asarray(src8.histogram(), dtype=np.int64)[:size]
        _check_not_blank(hist, valid_lut, modality)
    if voi is None:
        assert hist is not None
        low, high = opts.percentiles
        lo, hi = _percentile_window(modality, hist, low, high)
        if hi <= lo:  # a few values dominate: widen to everything that is there
            present = np.nonzero(hist)[0]
            lo, hi = float(modality[present].min()), float(modality[present].max())
        center, width = (lo + hi) / 2.0, hi - lo
        voi = _voi_function(sign * ((modality - center) / width), "LINEAR_EXACT")
        info["window"] = {"source": "percentile", "percentiles": [low, high], "center": center, "width": width}

    if mode == "L":
        lut = np.rint(voi * 255.0).astype(np.uint8)
        pil_type = "L"
    else:
        lut = voi.astype(np.float32)
        pil_type = "F"
    if valid_lut is not None:
        lut[~valid_lut] = 0  # padding is outside the patient: black
    if hist is None:
        # 8-bit values under a header window, never histogrammed: numpy's min and max (SIMD) are the
        # cheapest blank check.
        if int(index.min()) == int(index.max()):
            raise SkipImage("blank", REASONS["blank"])
    if src8 is not None and pil_type == "L" and np.array_equal(lut, _IDENTITY8):
        image = src8  # the window maps every value to itself (a wrapped 8-bit image shown as stored)
    elif src8 is not None:
        # Pillow's table lookup on 8-bit values is several times faster than numpy's gather.
        image = src8.point(lut.tolist(), pil_type)
    else:
        values = np.ascontiguousarray(lut[index])
        image = Image.frombuffer(pil_type, (cols, rows), values, "raw", pil_type, 0, 1)
    return image, info


def display_image(ds: Dataset, opts: PixelOptions | None = None) -> Display:
    """Steps 1-5: the image as a viewer would show it (float32 in [0, 1], bone bright), unresized."""
    image, info = _display(ds, opts or PixelOptions())
    return Display(image=np.asarray(image, dtype=np.float32), info=info)


def _fit(im: Image.Image, resolution: int, fit: str, resample: str = RESAMPLE) -> tuple[np.ndarray, dict[str, Any]]:
    """Resize a Pillow image ("F" or "L") into the square; the array keeps the image's type."""
    w, h = im.size
    flt = RESAMPLERS[resample]
    if fit == "crop":
        side = min(h, w)
        box = ((w - side) / 2.0, (h - side) / 2.0, (w + side) / 2.0, (h + side) / 2.0)
        out = im.resize((resolution, resolution), flt, box=box, reducing_gap=REDUCING_GAP)
        result = np.array(out)
        scale = resolution / side
        geometry = {"fit": "crop", "scale": [scale, scale], "crop_origin": [box[0], box[1]], "offset": [0, 0], "size": [resolution, resolution]}
    else:
        s = resolution / max(h, w)
        new_w, new_h = max(1, round(w * s)), max(1, round(h * s))
        out = im.resize((new_w, new_h), flt, reducing_gap=REDUCING_GAP)
        result = np.zeros((resolution, resolution), dtype=np.float32 if im.mode == "F" else np.uint8)
        off_x, off_y = (resolution - new_w) // 2, (resolution - new_h) // 2
        result[off_y : off_y + new_h, off_x : off_x + new_w] = np.asarray(out)
        geometry = {"fit": "pad", "scale": [new_w / w, new_h / h], "crop_origin": [0, 0], "offset": [off_x, off_y], "size": [new_w, new_h]}
    if result.dtype == np.float32:
        # Bicubic and Lanczos ring a little past the input range at sharp edges; the range is [0, 1].
        np.clip(result, 0.0, 1.0, out=result)
    return result, geometry


def fit_square(image: np.ndarray, resolution: int, fit: str = "pad", resample: str = RESAMPLE) -> tuple[np.ndarray, dict[str, Any]]:
    """Step 6: anti-aliased resize of a float image to ``resolution`` squared, keeping the aspect ratio.

    "pad": the whole image scaled to fit, centred on black. "crop": the centred square of side
    min(H, W) scaled to fill. Returns float32 in [0, 1] and the geometry a source coordinate maps
    through: ``out = (src - crop_origin) * scale + offset`` (x and y, pixel edges).
    """
    im = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32))
    return _fit(im, resolution, fit, resample)


def quantize(image: np.ndarray, dtype: str = "uint8") -> np.ndarray:
    """Step 7: [0, 1] float to uint8 or uint16, rounding to nearest."""
    top = 255.0 if dtype == "uint8" else 65535.0
    return np.rint(image * top).astype(np.uint8 if dtype == "uint8" else np.uint16)


def prepare(ds: Dataset, opts: PixelOptions | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """The whole pipeline: a (resolution, resolution) uint8/uint16 image and what was done to it."""
    opts = opts or PixelOptions()
    if opts.dtype == "uint8":
        # 8-bit display values and Pillow's 8-bit resampler: within one gray level of the float path on
        # radiographs, at a fraction of the cost.
        image, info = _display(ds, opts, "L")
        square, geometry = _fit(image, opts.resolution, opts.fit, opts.resample)
    else:
        image, info = _display(ds, opts, "F")
        square, geometry = _fit(image, opts.resolution, opts.fit, opts.resample)
        square = quantize(square, opts.dtype)
    info["geometry"] = geometry
    return square, info
