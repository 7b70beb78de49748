"""service/data/pixels.py against real CR radiographs (pydicom-data RG1, RG3), pydicom's own LUT code
as an independent reference, and phantoms of known geometry."""

from __future__ import annotations

import copy

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import JPEG2000Lossless

from service.data.phantom import phantom_dataset, phantom_image
from service.data.pixels import PixelOptions, SkipImage, display_image, fit_square, prepare, quantize


def _rg(name: str) -> pydicom.Dataset:
    path = get_testdata_file(name)
    if path is None:
        pytest.skip(f"{name} is not installed (pip install pydicom-data)")
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def rg3() -> pydicom.Dataset:
    return _rg("RG3_UNCR.dcm")


def _no_window(ds: pydicom.Dataset) -> pydicom.Dataset:
    ds = copy.deepcopy(ds)
    for k in ("WindowCenter", "WindowWidth", "VOILUTFunction", "VOILUTSequence"):
        if k in ds:
            delattr(ds, k)
    return ds


def _inverse_mono2(ds: pydicom.Dataset) -> pydicom.Dataset:
    """The MONOCHROME2 image that displays like this MONOCHROME1 one: values T - x and, for the
    LINEAR window of PS3.3 C.11.2.1.2.1, centre T + 1 - c (so that x' - (c' - 0.5) = -(x - (c - 0.5)))."""
    out = copy.deepcopy(ds)
    top = (1 << int(ds.BitsStored)) - 1
    out.PixelData = (top - ds.pixel_array.astype(np.int64)).astype(np.uint16).tobytes()
    out.PhotometricInterpretation = "MONOCHROME2"
    if "WindowCenter" in ds:
        out.WindowCenter = top + 1 - float(ds.WindowCenter)
    return out


def test_rg3_bone_bright_air_dark(rg3):
    img, info = prepare(rg3)
    assert img.shape == (256, 256) and img.dtype == np.uint8
    assert info["photometric"] == "MONOCHROME1" and info["inverted"] is True
    # RG3 is a distal tibia and fibula, AP: the tibial shaft runs down the middle of the exposed field,
    # air lies between the leg and the collimation on the left.
    tibia = img[20:120, 115:135].astype(float).mean()
    air = img[20:120, 68:74].astype(float).mean()
    assert tibia > air + 100, (tibia, air)
    # In MONOCHROME1 the bone has the low stored values: the output runs against the stored values.
    stored = rg3.pixel_array[::55, ::55].astype(float).ravel()
    shown = display_image(rg3).image[::55, ::55].ravel()
    assert np.corrcoef(stored, shown)[0, 1] < -0.9


def test_rg3_window_follows_the_header(rg3):
    shown = display_image(rg3)
    assert shown.info["window"] == {"source": "header", "center": 550.0, "width": 1024.0, "function": "LINEAR"}
    # pydicom's own VOI LUT code is the reference (output 0..1023 for 10 bits stored), inverted for MONOCHROME1.
    reference = 1 - apply_voi_lut(rg3.pixel_array, rg3) / 1023.0
    np.testing.assert_allclose(shown.image, reference, atol=1e-6)
    narrow = copy.deepcopy(rg3)
    narrow.WindowCenter, narrow.WindowWidth = 300, 101
    shown_narrow = display_image(narrow)
    np.testing.assert_allclose(shown_narrow.image, 1 - apply_voi_lut(narrow.pixel_array, narrow) / 1023.0, atol=1e-6)
    assert not np.allclose(shown_narrow.image, shown.image)
    x = narrow.pixel_array
    assert (shown_narrow.image[x <= 249] == 1).all() and (shown_narrow.image[x > 350] == 0).all()


@pytest.mark.parametrize("name", ["RG3", "RG1"])
def test_jpeg2000_lossless_gives_exactly_the_uncompressed_output(name):
    uncompressed = prepare(_rg(f"{name}_UNCR.dcm"))
    j2k = _rg(f"{name}_J2KR.dcm")
    assert j2k.file_meta.TransferSyntaxUID == JPEG2000Lossless
    compressed = prepare(j2k)
    np.testing.assert_array_equal(compressed[0], uncompressed[0])
    assert compressed[1] == uncompressed[1]


def test_jpeg2000_lossy_is_close(rg3):
    lossy = prepare(_rg("RG3_J2KI.dcm"))[0].astype(float)
    assert np.abs(lossy - prepare(rg3)[0]).mean() < 2.0


@pytest.mark.parametrize("window", [True, False])
def test_monochrome1_and_its_monochrome2_inverse_give_the_same_output(rg3, window):
    mono1 = rg3 if window else _no_window(rg3)
    mono2 = _inverse_mono2(mono1)
    a, info1 = prepare(mono1)
    b, info2 = prepare(mono2)
    assert info1["inverted"] and not info2["inverted"]
    np.testing.assert_array_equal(a, b)


def test_phantom_monochrome1_equals_monochrome2():
    a, _ = prepare(phantom_dataset(200, 300, photometric="MONOCHROME1", seed=3), PixelOptions(resolution=64, dtype="uint16"))
    b, _ = prepare(phantom_dataset(200, 300, photometric="MONOCHROME2", seed=3), PixelOptions(resolution=64, dtype="uint16"))
    np.testing.assert_array_equal(a, b)


def _bright_centroid(img: np.ndarray, threshold: float) -> tuple[float, float]:
    ys, xs = np.nonzero(img >= threshold)
    return ys.mean() + 0.5, xs.mean() + 0.5  # pixel centres, in pixel-edge coordinates


@pytest.mark.parametrize("rows,cols", [(600, 300), (300, 600), (512, 512)])
def test_pad_puts_phantom_features_where_the_geometry_says(rows, cols):
    ds = phantom_dataset(rows, cols, seed=5)
    _, g = phantom_image(rows, cols, seed=5)
    img, info = prepare(ds, PixelOptions(resolution=128, window="percentile", percentiles=(0.0, 100.0)))
    s = 128 / max(rows, cols)
    new_h, new_w = round(rows * s), round(cols * s)
    off_y, off_x = (128 - new_h) // 2, (128 - new_w) // 2
    assert info["geometry"]["offset"] == [off_x, off_y] and info["geometry"]["size"] == [new_w, new_h]
    # The marker is the densest feature (value 1.0), alone in the top-left corner (the shaft starts
    # right of 0.24 of the width): its centroid is the geometry's marker centre.
    corner = img[: off_y + int(0.22 * new_h), : off_x + int(0.22 * new_w)]
    cy, cx = _bright_centroid(corner, 240)
    assert cy == pytest.approx(off_y + g.marker_row * new_h, abs=0.75)
    assert cx == pytest.approx(off_x + g.marker_col * new_w, abs=0.75)
    # The shaft's centre line: marrow is darker than the cortex on both sides, symmetric about it.
    row = int(off_y + (g.shaft_top + g.shaft_bottom) / 2 * new_h)
    centre = off_x + g.shaft_center_col * new_w
    profile = img[row].astype(float)
    half = g.shaft_half_width * new_w
    left, right = int(centre - 0.8 * half), int(centre + 0.8 * half)
    assert profile[left] > profile[int(centre)] + 40 and profile[right] > profile[int(centre)] + 40
    # Outside the image (padding of the square) is black.
    if off_y:
        assert img[: off_y - 1].max() == 0 and img[off_y + new_h + 1 :].max() == 0
    if off_x:
        assert img[:, : off_x - 1].max() == 0 and img[:, off_x + new_w + 1 :].max() == 0


def test_crop_fills_the_square_from_the_centre():
    rows, cols = 300, 600
    ds = phantom_dataset(rows, cols, seed=5)
    _, g = phantom_image(rows, cols, seed=5)
    img, info = prepare(ds, PixelOptions(resolution=100, fit="crop", window="percentile", percentiles=(0.0, 100.0)))
    scale = 100 / 300
    x0 = (600 - 300) / 2
    assert info["geometry"]["crop_origin"] == [x0, 0.0] and info["geometry"]["scale"] == [scale, scale]
    # The shaft's centre line is inside the crop; it maps through the same geometry.
    centre = (g.shaft_center_col * cols - x0) * scale
    row = int((g.shaft_top + g.shaft_bottom) / 2 * rows * scale)
    half = g.shaft_half_width * cols * scale
    profile = img[row].astype(float)
    assert profile[int(centre - 0.8 * half)] > profile[int(centre)] + 40
    assert profile[int(centre + 0.8 * half)] > profile[int(centre)] + 40
    assert img.min() > 0  # no padding anywhere: the square is filled


def test_pixel_padding_is_masked_and_left_out_of_the_window():
    ds = phantom_dataset(120, 160, bits_stored=12, seed=2)
    px = ds.pixel_array.copy()
    px[:, :30] = 4095  # a padded band, brighter than anything in the image
    ds.PixelData = px.tobytes()
    plain = copy.deepcopy(ds)
    ds.PixelPaddingValue = 4095
    shown = display_image(ds)
    assert (shown.image[:, :30] == 0).all()
    assert shown.info["padding"] == [4095, 4095]
    # Without the padding value the band drags the window up to 4095; with it the window ends lower.
    assert shown.info["window"]["center"] + shown.info["window"]["width"] / 2 < 4000
    assert display_image(plain).info["window"]["center"] + display_image(plain).info["window"]["width"] / 2 >= 4095
    ds.PixelPaddingRangeLimit = 4000
    assert display_image(ds).info["padding"] == [4000, 4095]


def test_rescale_and_window_match_pydicom():
    ds = phantom_dataset(64, 64, bits_stored=12, seed=1)
    ds.RescaleSlope, ds.RescaleIntercept = 2, -1000
    ds.WindowCenter, ds.WindowWidth = 2500, 3000
    shown = display_image(ds)
    reference = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
    # pydicom's output range after a rescale is the rescaled range: normalize by it.
    lo, hi = -1000, 2 * 4095 - 1000
    np.testing.assert_allclose(shown.image, (reference - lo) / (hi - lo), atol=1e-6)
    assert shown.info["rescale"] == [2.0, -1000.0]


@pytest.mark.parametrize("function", ["LINEAR_EXACT", "SIGMOID"])
def test_voi_lut_functions_match_pydicom(function):
    ds = phantom_dataset(64, 64, bits_stored=12, seed=1)
    ds.WindowCenter, ds.WindowWidth, ds.VOILUTFunction = 1500, 1200, function
    shown = display_image(ds)
    np.testing.assert_allclose(shown.image, apply_voi_lut(ds.pixel_array, ds) / 4095.0, atol=1e-6)
    assert shown.info["window"]["function"] == function


def test_voi_lut_sequence_matches_pydicom():
    ds = phantom_dataset(64, 64, bits_stored=12, seed=1)
    item = pydicom.Dataset()
    table = np.clip((np.arange(2048) - 200) * 40, 0, 65535).astype(np.uint16)
    item.LUTDescriptor = [2048, 1000, 16]
    item.LUTData = table.tolist()
    ds.VOILUTSequence = [item]
    shown = display_image(ds)
    assert shown.info["window"]["source"] == "voi_lut_sequence"
    np.testing.assert_allclose(shown.image, apply_voi_lut(ds.pixel_array, ds) / 65535.0, atol=1e-6)


def test_percentile_fallback_without_a_window():
    ds = phantom_dataset(128, 128, bits_stored=12, seed=4)
    shown = display_image(ds)
    w = shown.info["window"]
    assert w["source"] == "percentile" and w["percentiles"] == [0.5, 99.5]
    img = quantize(shown.image)
    assert img.min() == 0 and img.max() == 255
    forced = copy.deepcopy(ds)
    forced.WindowCenter, forced.WindowWidth = 100, 50
    assert display_image(forced, PixelOptions(window="percentile")).info["window"] == w
    bad = copy.deepcopy(ds)
    bad.WindowCenter, bad.WindowWidth = 100, 0
    assert display_image(bad).info["window"]["source"] == "percentile"


def _rgb(ds: pydicom.Dataset, rgb: np.ndarray) -> pydicom.Dataset:
    out = copy.deepcopy(ds)
    out.SamplesPerPixel, out.PhotometricInterpretation, out.PlanarConfiguration = 3, "RGB", 0
    out.BitsAllocated, out.BitsStored, out.HighBit = 8, 8, 7
    out.PixelData = rgb.astype(np.uint8).tobytes()
    return out


def test_gray_rgb_is_reduced_to_luminance_and_colour_refused():
    gray = phantom_dataset(64, 96, bits_stored=8, seed=6)
    px = gray.pixel_array
    rgb = _rgb(gray, np.stack([px, px, px], axis=-1))
    a, info = prepare(rgb, PixelOptions(resolution=32))
    b, _ = prepare(gray, PixelOptions(resolution=32))
    np.testing.assert_array_equal(a, b)
    assert info["converted"] == "luminance"
    colour = np.stack([px, np.zeros_like(px), 255 - px], axis=-1)
    with pytest.raises(SkipImage) as exc:
        prepare(_rgb(gray, colour))
    assert exc.value.reason == "colour_content"


@pytest.mark.parametrize("photometric", ["PALETTE COLOR", "HSV", ""])
def test_unsupported_photometric_is_refused(photometric):
    ds = phantom_dataset(32, 32, seed=1)
    ds.PhotometricInterpretation = photometric
    with pytest.raises(SkipImage) as exc:
        prepare(ds)
    assert exc.value.reason == "unsupported_photometric" and "MONOCHROME" in str(exc.value)


def test_multi_frame_refused_or_first_frame():
    ds = phantom_dataset(48, 48, seed=1)
    single, _ = prepare(ds, PixelOptions(resolution=32))
    multi = copy.deepcopy(ds)
    second = (4095 - ds.pixel_array).astype(np.uint16)
    multi.NumberOfFrames = 2
    multi.PixelData = ds.PixelData + second.tobytes()
    with pytest.raises(SkipImage) as exc:
        prepare(multi)
    assert exc.value.reason == "multi_frame" and "2 frames" in str(exc.value)
    first, info = prepare(multi, PixelOptions(resolution=32, multiframe="first"))
    np.testing.assert_array_equal(first, single)
    assert info["frame"] == 0 and info["frames"] == 2


def test_refusals_name_their_reason():
    no_pixels = phantom_dataset(32, 32)
    del no_pixels.PixelData
    empty = phantom_dataset(32, 32)
    empty.Rows = 0
    empty.PixelData = b""
    wide = phantom_dataset(32, 32)
    wide.BitsAllocated, wide.BitsStored, wide.HighBit = 32, 32, 31
    blank = phantom_dataset(32, 32)
    blank.PixelData = np.full((32, 32), 700, np.uint16).tobytes()
    small = phantom_dataset(32, 40)
    broken = phantom_dataset(64, 64)
    broken.file_meta.TransferSyntaxUID = JPEG2000Lossless
    broken.PixelData = encapsulate([b"\xff\x4f\xff\x51" + b"\x00" * 40])
    cases = {"no_pixel_data": no_pixels, "empty_image": empty, "unsupported_bits": wide, "blank": blank, "decode_failed": broken}
    for reason, ds in cases.items():
        with pytest.raises(SkipImage) as exc:
            prepare(ds)
        assert exc.value.reason == reason, (reason, str(exc.value))
        assert str(exc.value)
    with pytest.raises(SkipImage) as exc:
        prepare(small, PixelOptions(min_size=33))
    assert exc.value.reason == "too_small"
    prepare(small, PixelOptions(min_size=32))


def test_signed_pixels_and_high_bits():
    ds = phantom_dataset(64, 64, bits_stored=12, seed=1)
    values = ds.pixel_array.astype(np.int32) - 2048
    ds.PixelRepresentation = 1
    ds.PixelData = values.astype(np.int16).tobytes()
    shown = display_image(ds)
    reference = display_image(phantom_dataset(64, 64, bits_stored=12, seed=1))
    np.testing.assert_allclose(shown.image, reference.image, atol=1e-6)
    # Bits above Bits Stored are not part of the value (PS3.5 §8.1.1): an overlay bit changes nothing.
    dirty = phantom_dataset(64, 64, bits_stored=12, seed=1)
    dirty.PixelData = (dirty.pixel_array | np.uint16(0x8000)).tobytes()
    np.testing.assert_array_equal(display_image(dirty).image, reference.image)


def test_uint16_output_and_options_validation():
    img, _ = prepare(phantom_dataset(64, 64, seed=1), PixelOptions(resolution=32, dtype="uint16"))
    assert img.dtype == np.uint16 and img.max() > 255
    for bad in ({"fit": "stretch"}, {"dtype": "float32"}, {"percentiles": (50.0, 10.0)}, {"resolution": 4}, {"window": "auto"}):
        with pytest.raises(ValueError):
            PixelOptions(**bad)


def test_fit_square_keeps_a_flat_image_flat():
    out, geometry = fit_square(np.full((30, 90), 0.5, np.float32), 60, "pad")
    assert geometry["size"] == [60, 20] and geometry["offset"] == [0, 20]
    np.testing.assert_allclose(out[20:40], 0.5, atol=1e-6)
    assert out[:20].max() == 0 and out[40:].max() == 0


@pytest.mark.parametrize("resample", ["bicubic", "lanczos"])
def test_uint8_output_is_within_one_level_of_the_float_path(rg3, resample):
    """uint8 builds resample 8-bit display values (fast); uint16 builds keep float32 (exact)."""
    fast, _ = prepare(rg3, PixelOptions(dtype="uint8", resample=resample))
    exact, _ = prepare(rg3, PixelOptions(dtype="uint16", resample=resample))
    assert np.abs(fast.astype(int) - np.rint(exact / 257.0).astype(int)).max() <= 1
    # At the phantom's hard synthetic edges Pillow's 8-bit intermediate clips the filter's overshoot
    # (the float path keeps it until the end): a few pixels differ more, nearly all by at most one level.
    phantom = phantom_dataset(300, 200, seed=8)
    fast, _ = prepare(phantom, PixelOptions(dtype="uint8", resample=resample))
    exact, _ = prepare(phantom, PixelOptions(dtype="uint16", resample=resample))
    diff = np.abs(fast.astype(int) - np.rint(exact / 257.0).astype(int))
    assert (diff <= 1).mean() > 0.995 and diff.mean() < 0.25


def test_enhanced_functional_groups_give_rescale_and_window():
    """Enhanced objects keep rescale and window in functional groups (PS3.3 C.7.6.16)."""
    ds = phantom_dataset(64, 64, bits_stored=12, seed=1)
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    for keyword in ("RescaleSlope", "RescaleIntercept", "RescaleType"):  # enhanced objects keep them in groups only
        delattr(ds, keyword)
    transform, voi, shared = pydicom.Dataset(), pydicom.Dataset(), pydicom.Dataset()
    transform.RescaleSlope, transform.RescaleIntercept = 2, -1000
    voi.WindowCenter, voi.WindowWidth = 2500, 3000
    shared.PixelValueTransformationSequence = [transform]
    shared.FrameVOILUTSequence = [voi]
    ds.SharedFunctionalGroupsSequence = [shared]
    shown = display_image(ds, PixelOptions(multiframe="first"))
    assert shown.info["rescale"] == [2.0, -1000.0]
    assert shown.info["window"]["center"] == 2500.0 and shown.info["window"]["width"] == 3000.0
    flat = phantom_dataset(64, 64, bits_stored=12, seed=1)
    flat.RescaleSlope, flat.RescaleIntercept, flat.WindowCenter, flat.WindowWidth = 2, -1000, 2500, 3000
    np.testing.assert_array_equal(shown.image, display_image(flat).image)
