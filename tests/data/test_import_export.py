"""dataset import-images (JPG/PNG to CR/DX through Store.put) and export (PNG lossless, JPG)."""

from __future__ import annotations

import csv
import subprocess

import numpy as np
import pydicom
import pytest
from PIL import Image

from models.datasets import load_images, write_dataset
from service.data.export import ExportError, export_dataset
from service.data.images_import import (
    TEST_PATIENT_ID,
    TEST_PATIENT_NAME,
    ImportImagesError,
    import_images,
    read_name_list,
)
from service.data.findings import read_findings
from service.data.phantom import phantom_image
from service.data.pixels import prepare
from tests.helpers import make_config, require_tool


def _write_images(folder, n=3, size=(120, 90)):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        px, _ = phantom_image(size[0], size[1], bits_stored=8, seed=i)
        Image.fromarray(px).convert("RGB").save(folder / f"img{i}.jpg", quality=95)
    return folder


@pytest.fixture
def deid_off_store(tmp_path):
    from service.archive.store import Store

    s = Store(make_config(tmp_path / "home", **{"deid.enabled": False}))
    yield s
    s.index.close()


def test_import_wraps_gray_pixels_unchanged(tmp_path, store):
    folder = _write_images(tmp_path / "in")
    png16 = (np.arange(64 * 48, dtype=np.uint32).reshape(64, 48) * 20).astype(np.uint16)
    Image.fromarray(png16).save(folder / "deep.png")
    result = import_images(store, folder, modality="CR", body_part="hand", view="frontal", progress=False)
    assert result.summary() == {"files": 4, "stored": 4, "identical": 0, "kept": 0, "excluded": 0, "findings": 0, "skipped": {}}
    recs = list(store.index.instances())
    assert {r.modality for r in recs} == {"CR"} and {r.body_part_examined for r in recs} == {"HAND"}
    # A frontal hand is taken postero-anterior.
    assert {r.view_position for r in recs} == {"PA"} and {r.source for r in recs} == {"import"}
    deep = next(r for r in recs if r.bits_stored == 16)
    ds = pydicom.dcmread(store.path_of(deep))
    np.testing.assert_array_equal(ds.pixel_array, png16)
    # The window shows the file as an image viewer did: stored value x displays as x / (2^b - 1).
    img, info = prepare(ds)
    assert info["window"] == {"source": "header", "center": 32768.0, "width": 65536.0, "function": "LINEAR"}
    jpeg = next(r for r in recs if r.bits_stored == 8)
    ds8 = pydicom.dcmread(store.path_of(jpeg))
    assert ds8.LossyImageCompression == "01" and ds8.LossyImageCompressionMethod == "ISO_10918_1"
    # A second import of the same folder adds nothing: the UIDs come from the content.
    again = import_images(store, folder, modality="CR", body_part="hand", view="frontal", progress=False)
    assert (again.stored, again.identical) == (0, 4)


def test_import_uses_a_clearly_fake_patient(tmp_path, deid_off_store):
    folder = _write_images(tmp_path / "in", n=1)
    import_images(deid_off_store, folder, modality="DX", progress=False)
    rec = next(deid_off_store.index.instances())
    assert rec.patient_name == TEST_PATIENT_NAME and rec.patient_id == TEST_PATIENT_ID
    ds = pydicom.dcmread(deid_off_store.path_of(rec))
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.1" and ds.PresentationIntentType == "FOR PRESENTATION"
    assert ds.PatientName == TEST_PATIENT_NAME and not ds.PatientBirthDate


def test_import_labels_from_a_csv(tmp_path, store):
    folder = _write_images(tmp_path / "in", n=3)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "body_part", "views"])
        w.writerow(["img0.jpg", "hand+shoulder", "oblique"])
        w.writerow(["img1.jpg", "leg", "frontal+lateral"])
    import_images(store, folder, body_part="HIP", progress=False)
    got = {(r.body_part_examined, r.view_position) for r in store.index.instances()}
    # A mixed label names no single body part or view: the attribute stays empty.
    assert got == {("", "OBLIQUE"), ("LEG", ""), ("HIP", "")}


def test_frontal_reads_as_pa_for_a_hand_and_ap_elsewhere(tmp_path, store):
    folder = _write_images(tmp_path / "in", n=4)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "body_part", "views"])
        w.writerow(["img0.jpg", "hand", "frontal"])
        w.writerow(["img1.jpg", "leg", "frontal"])
        w.writerow(["img2.jpg", "", "frontal"])  # the body part comes from --body-part
        w.writerow(["img3.jpg", "shoulder", "AP"])
    import_images(store, folder, body_part="hand", progress=False)
    got = sorted((r.body_part_examined, r.view_position) for r in store.index.instances())
    assert got == [("HAND", "PA"), ("HAND", "PA"), ("LEG", "AP"), ("SHOULDER", "AP")]


def test_import_records_findings_and_leaves_out_the_held_out_files(tmp_path, store):
    folder = _write_images(tmp_path / "in", n=4)
    with open(folder / "manifest.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filename", "body_part", "views", "fractured"])
        w.writerow(["img0.jpg", "hand", "frontal", "yes"])
        w.writerow(["img1.jpg", "leg", "lateral", "no"])
        w.writerow(["img2.jpg", "hip", "frontal", "yes"])
    held_out = tmp_path / "heldout.txt"
    held_out.write_text("# held out\nimg2.jpg\n\nimg3.jpg  # no label\n")
    result = import_images(store, folder, exclude=read_name_list(held_out), progress=False)
    assert (result.stored, result.excluded, result.findings) == (2, 2, 2)
    findings = read_findings(store.root)
    by_part = {r.body_part_examined: findings.get(r.sop_instance_uid) for r in store.index.instances()}
    assert by_part == {"HAND": "FRACTURE", "LEG": "NONE"}
    # Importing again records nothing new; an exclusion list that leaves nothing is refused.
    again = import_images(store, folder, exclude={"img2.jpg", "img3.jpg"}, progress=False)
    assert again.identical == 2 and len(read_findings(store.root)) == 2
    with pytest.raises(ImportImagesError, match="every image"):
        import_images(store, folder, exclude={f"img{i}.jpg" for i in range(4)}, progress=False)
    with pytest.raises(ImportImagesError, match="cannot be read"):
        read_name_list(tmp_path / "missing.txt")
    # dataset build carries each image's finding into the manifest, where conditional training reads it.
    from service.data.build import build_dataset
    from service.data.pixels import PixelOptions

    version = build_dataset(store.cfg, "f", options=PixelOptions(resolution=64), workers=1, progress=False, index=store.index).version
    assert sorted((row["body_part"], row["finding"]) for row in version.manifest()) == [("HAND", "FRACTURE"), ("LEG", "NONE")]
    assert version.info["counts"]["finding"] == {"FRACTURE": 1, "NONE": 1}


def test_import_refuses_what_it_cannot_use(tmp_path, store):
    folder = tmp_path / "in"
    folder.mkdir()
    with pytest.raises(ImportImagesError, match="holds no"):
        import_images(store, folder, progress=False)
    with pytest.raises(ImportImagesError, match="not a folder"):
        import_images(store, folder / "missing", progress=False)
    with pytest.raises(ImportImagesError, match="CR or DX"):
        import_images(store, folder, modality="MR", progress=False)
    _write_images(folder, n=1)
    colour = np.zeros((40, 40, 3), np.uint8)
    colour[..., 0] = 200
    Image.fromarray(colour).save(folder / "red.png")
    (folder / "broken.jpg").write_bytes((folder / "img0.jpg").read_bytes()[:300])
    (folder / "notes.jpg").write_text("not an image")
    result = import_images(store, folder, progress=False)
    assert result.stored == 1
    reasons = {name: reason for name, reason, _ in result.skipped}
    assert reasons == {"red.png": "colour_content", "broken.jpg": "unreadable_image", "notes.jpg": "unreadable_image"}
    with pytest.raises(ImportImagesError, match="needs the columns"):
        bad = tmp_path / "labels.csv"
        bad.write_text("name,part\nx,y\n")
        import_images(store, folder, labels_file=bad, progress=False)


def test_import_shared_radiographs(shared_radiographs, store):
    result = import_images(store, shared_radiographs, limit=3, progress=False)
    assert result.stored == 3 and not result.skipped
    for rec in store.index.instances():
        # A study of several body parts (manifest "mixed", e.g. hand+shoulder) has no single Body Part Examined.
        assert rec.body_part_examined in {"HAND", "LEG", "HIP", "SHOULDER", ""}
        ds = pydicom.dcmread(store.path_of(rec))
        assert ds.SamplesPerPixel == 1 and ds.BitsStored == 8


def _dciodvfy_errors(path) -> list[str]:
    out = subprocess.run([require_tool("dciodvfy", "dicom3tools"), str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.mark.integration
def test_imported_instances_pass_dciodvfy(tmp_path, store):
    folder = _write_images(tmp_path / "in", n=1)
    import_images(store, folder, modality="CR", body_part="HAND", progress=False)
    import_images(store, folder, modality="DX", body_part="HAND", progress=False)
    by_modality = {r.modality: store.path_of(r) for r in store.index.instances()}
    assert _dciodvfy_errors(by_modality["CR"]) == []
    # A JPEG does not say how the detector was built: the DX Image and DX Detector facts it cannot
    # supply are the only errors left (the README says so; CR is the default for that reason), with
    # the Acquisition Context Sequence that de-identification removes (PS3.15 Table E.1-1: X).
    dx = _dciodvfy_errors(by_modality["DX"])
    known = ("PixelIntensityRelationship", "ImagerPixelSpacing", "PatientOrientation", "AcquisitionContextSequence")
    assert dx and all(any(k in e for k in known) for e in dx), dx


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_png_export_is_lossless(tmp_path, dtype):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, np.iinfo(dtype).max + 1, (5, 16, 16), dtype=np.int64).astype(dtype)
    dv = write_dataset(tmp_path / "ds", "d", imgs, rows=[{"sop_instance_uid": f"1.2.{i}"} for i in range(5)])
    result = export_dataset(dv, tmp_path / "out", progress=False)
    assert result.files == 5 and result.lossless
    for i in range(5):
        back = np.asarray(Image.open(tmp_path / "out" / f"{i:06d}.png"))
        np.testing.assert_array_equal(back, imgs[i])
    rows = [l for l in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert '"file":"000003.png"' in rows[3].replace(" ", "") and "1.2.3" in rows[3]
    assert (tmp_path / "out" / "dataset.json").exists()


def test_jpg_export_and_refusals(tmp_path):
    imgs = np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (3, 32, 1))
    dv = write_dataset(tmp_path / "ds", "d", imgs)
    result = export_dataset(dv, tmp_path / "jpg", fmt="jpeg", limit=2, progress=False)
    assert result.files == 2 and not result.lossless
    back = np.asarray(Image.open(tmp_path / "jpg" / "000001.jpg")).astype(int)
    assert np.abs(back - imgs[1]).mean() < 3
    with pytest.raises(ExportError, match="not empty"):
        export_dataset(dv, tmp_path / "jpg", progress=False)
    with pytest.raises(ExportError, match="format"):
        export_dataset(dv, tmp_path / "x", fmt="gif", progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ExportError, match="not a folder"):
        export_dataset(dv, tmp_path / "afile", progress=False)
    assert export_dataset(dv, tmp_path / "jpg", fmt="png", overwrite=True, progress=False).files == 3
    assert load_images(dv).shape == (3, 32, 32)
