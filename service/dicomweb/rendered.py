"""WADO-RS rendered resources and thumbnails (PS3.18 10.4.1.1.3, 10.4.1.1.6, 8.3.5.1): JPEG or PNG.

A frame is rendered as a viewer would show it: Modality LUT (rescale), then the VOI window (the
``window=center,width[,function]`` parameter, else the first window in the header, else the full range
of the stored values) with the functions of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT, SIGMOID), MONOCHROME1
inverted, 8 bits. ``viewport=vw,vh`` scales the image to fit that box, keeping its aspect ratio (the
optional source region ``sx,sy,sw,sh`` crops first). Colour images are shown as decoded.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut

from service.dicomweb import media
from service.dicomweb.errors import BadRequest, NotAcceptable, NotFound

JPEG, PNG = "image/jpeg", "image/png"
THUMBNAIL_SIZE = 128
MAX_VIEWPORT = 8192


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    function: str = "LINEAR"


@dataclass(frozen=True)
class Viewport:
    width: int
    height: int
    source: tuple[int, int, int, int] | None = None


@dataclass(frozen=True)
class RenderRequest:
    media_type: str
    window: Window | None = None
    viewport: Viewport | None = None
    quality: int = 90


def choose_media_type(accept: list[media.MediaRange]) -> str:
    """image/jpeg (the default, 8.7.4) or image/png, the first the Accept header allows."""
    for rng in accept:
        for candidate in (JPEG, PNG):
            if rng.matches(candidate):
                return candidate
    raise NotAcceptable("rendered images are offered as image/jpeg and image/png")


def _numbers(text: str, name: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise BadRequest(f"{name} takes comma-separated numbers (PS3.18 8.3.5.1)") from None
    if any(not math.isfinite(v) for v in values):
        raise BadRequest(f"{name} takes finite numbers")
    return values


def parse_request(params: dict[str, str], accept: list[media.MediaRange], thumbnail: bool = False) -> RenderRequest:
    media_type = choose_media_type(accept)
    window = None
    if params.get("window"):
        parts = params["window"].split(",")
        values = _numbers(",".join(parts[:2]), "window")
        function = (parts[2].strip().upper().replace("-", "_") if len(parts) > 2 else "LINEAR")
        if len(values) != 2 or len(parts) > 3 or function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
            raise BadRequest("window reads center,width[,linear|linear-exact|sigmoid] (PS3.18 8.3.5.1.4)")
        if values[1] <= 0 or (values[1] < 1 and function == "LINEAR"):
            raise BadRequest("the window width must be positive (at least 1 for linear)")
        window = Window(values[0], values[1], function)
    viewport = Viewport(THUMBNAIL_SIZE, THUMBNAIL_SIZE) if thumbnail else None
    if params.get("viewport"):
        values = _numbers(params["viewport"], "viewport")
        if len(values) not in (2, 6) or not all(v == int(v) for v in values):
            raise BadRequest("viewport reads vw,vh[,sx,sy,sw,sh] in whole pixels (PS3.18 8.3.5.1.3)")
        vw, vh = int(values[0]), int(values[1])
        if not (1 <= vw <= MAX_VIEWPORT and 1 <= vh <= MAX_VIEWPORT):
            raise BadRequest(f"viewport sizes are 1-{MAX_VIEWPORT} pixels")
        source = tuple(int(v) for v in values[2:]) if len(values) == 6 else None
        viewport = Viewport(vw, vh, source)  # type: ignore[arg-type]
    quality = 90
    if params.get("quality"):
        try:
            quality = int(params["quality"])
        except ValueError:
            quality = -1
        if not 1 <= quality <= 100:
            raise BadRequest("quality is 1-100 (PS3.18 8.3.5.1.5)")
    return RenderRequest(media_type, window, viewport, quality)


def _header_window(ds: Dataset) -> Window | None:
    if "WindowCenter" not in ds or "WindowWidth" not in ds:
        return None

    def first(value) -> float:
        return float(value[0]) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else float(value)

    try:
        center, width = first(ds.WindowCenter), first(ds.WindowWidth)
    except (TypeError, ValueError, IndexError):
        return None
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").upper()
    if width <= 0 or function not in ("LINEAR", "LINEAR_EXACT", "SIGMOID"):
        return None
    return Window(center, width, function)


def apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """Values mapped to 0..1 by a VOI window (PS3.3 C.11.2.1.2.1-3)."""
    c, w = window.center, window.width
    if window.function == "LINEAR_EXACT":
        out = (values - (c - w / 2)) / w
    elif window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    else:
        out = ((values - (c - 0.5)) / (w - 1)) + 0.5
    return np.clip(out, 0.0, 1.0)


def render_frame(ds: Dataset, number: int, request: RenderRequest) -> bytes:
    """Frame ``number`` (from 1) of ``ds`` as image bytes of ``request.media_type``."""
    if "PixelData" not in ds:
        raise NotFound("this instance has no pixel data to render")
    count = int(ds.get("NumberOfFrames", 1) or 1)
    if not 1 <= number <= count:
        raise NotFound(f"frame {number} does not exist: this instance has {count}")
    arr = ds.pixel_array
    frame = arr[number - 1] if count > 1 else arr
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if samples == 1:
        values = np.asarray(apply_modality_lut(frame, ds), dtype=np.float64)
        window = request.window or _header_window(ds)
        if window is None:
            low, high = float(values.min()), float(values.max())
            window = Window((low + high) / 2 + 0.5, max(high - low + 1, 1.0))
        unit = apply_window(values, window)
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            unit = 1.0 - unit
        image = Image.fromarray(np.round(unit * 255).astype(np.uint8), mode="L")
    else:
        rgb = frame.astype(np.float64)
        top = float((1 << int(ds.get("BitsStored", 8))) - 1)
        image = Image.fromarray(np.round(np.clip(rgb / top, 0, 1) * 255).astype(np.uint8), mode="RGB")
    image = _fit(image, request.viewport)
    buf = io.BytesIO()
    if request.media_type == PNG:
        image.save(buf, format="PNG")
    else:
        image.save(buf, format="JPEG", quality=request.quality)
    return buf.getvalue()


def _fit(image: Image.Image, viewport: Viewport | None) -> Image.Image:
    if viewport is None:
        return image
    if viewport.source is not None:
        sx, sy, sw, sh = viewport.source
        if sw <= 0 or sh <= 0 or sx < 0 or sy < 0 or sx + sw > image.width or sy + sh > image.height:
            raise BadRequest("the viewport's source region must lie inside the image")
        image = image.crop((sx, sy, sx + sw, sy + sh))
    scale = min(viewport.width / image.width, viewport.height / image.height)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC)
