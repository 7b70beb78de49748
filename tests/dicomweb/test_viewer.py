"""The viewer path a person sees (issue 19): OHIF Viewer served at /viewer by the DICOMweb service.

The routes are tested over HTTP with a stand-in bundle file; the end-to-end check runs headless Chromium
(Debian ``chromium``) with the real bundle (``make viewer``) inside a network namespace that holds only
loopback, opens the study list, clicks the synthetic study, and waits for its image in the viewport
(service/viewer_demo.py). It skips, saying why, where Chromium, the bundle or ``unshare`` is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from service.config import ConfigError
from service.dicomweb import viewer
from tests.dicomweb.conftest import Service
from tests.helpers import make_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def _get(url: str) -> tuple[int, dict[str, str], bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    bundle = tmp_path_factory.mktemp("bundle")
    (bundle / "index.umd.js").write_text("window.OHIFViewer = {installViewer: function () {}};\n")
    (bundle / "LICENSE").write_text("MIT\n")
    (bundle.parent / "outside.txt").write_text("not part of the viewer\n")
    svc = Service(make_config(tmp_path_factory.mktemp("viewer-home"), **{"dicomweb.viewer_dir": str(bundle)}))
    yield svc
    svc.close()


def test_page_config_and_bundle_are_served_from_the_same_origin(served):
    origin = served.url.rsplit("/dicom-web", 1)[0]
    status, headers, page = _get(origin + "/viewer/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/viewer/app-config.js" in page and b"/viewer/index.umd.js" in page and b"polyfill.io" not in page
    status, headers, config = _get(origin + "/viewer/app-config.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    text = config.decode()
    assert f'"qidoRoot": "{served.url}"' in text and f'"wadoRoot": "{served.url}"' in text
    assert '"routerBasename": "/viewer"' in text and '"supportsFuzzyMatching": false' in text
    status, _headers, bundle = _get(origin + "/viewer/index.umd.js")
    assert status == 200 and bundle.startswith(b"window.OHIFViewer")


def test_viewer_routes_fall_back_to_the_page_and_reach_nothing_outside_the_bundle(served):
    origin = served.url.rsplit("/dicom-web", 1)[0]
    # The viewer's own routes (a study opened by URL, a reload) get the page.
    status, headers, page = _get(origin + "/viewer/viewer/1.2.3.4")
    assert status == 200 and b"app-config.js" in page
    for path in ("/viewer/../outside.txt", "/viewer/%2e%2e/outside.txt", "/viewer/..%2Foutside.txt", "/viewer/index.html"):
        status, _headers, body = _get(origin + path)
        assert b"not part of the viewer" not in body, path
    status, headers, _ = _get(origin + "/viewer")
    assert status == 200  # redirected to /viewer/


def test_a_viewer_dir_without_the_bundle_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="make viewer"):
        viewer.find_bundle(str(tmp_path))
    (tmp_path / "package" / "dist").mkdir(parents=True)
    (tmp_path / "package" / "dist" / "index.umd.js").write_text("//")
    assert viewer.find_bundle(str(tmp_path)) == (tmp_path / "package" / "dist").resolve()


def test_without_viewer_dir_there_is_no_viewer(tmp_path):
    svc = Service(make_config(tmp_path))
    try:
        status, _headers, _body = _get(svc.url.rsplit("/dicom-web", 1)[0] + "/viewer/")
        assert status == 404
    finally:
        svc.close()


def _viewer_dir() -> Path | None:
    candidates = [os.environ.get("SYNTHPACS_TEST_VIEWER_DIR", ""), str(REPO / "var" / "viewer")]
    for folder in filter(None, candidates):
        try:
            return Path(viewer.find_bundle(folder))
        except ConfigError:
            continue
    return None


def _can_unshare() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_headless_chromium_opens_the_synthetic_study_in_ohif(tmp_path):
    from service.dicomweb.browser import find_chromium
    from service.viewer_demo import demo_home, isolated_check

    if find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    bundle = _viewer_dir()
    if bundle is None:
        pytest.skip("OHIF Viewer's bundle is not installed (`make viewer`, or SYNTHPACS_TEST_VIEWER_DIR)")
    if not _can_unshare():
        pytest.skip("no network namespace can be made here (unshare --net): Chromium runs only inside one")
    home = tmp_path / "home"
    _cfg, study_uid = demo_home(home)
    shot = tmp_path / "viewer.png"
    seen = isolated_check(home, str(bundle), study_uid, shot)
    assert "SYNTHETIC" in seen["study_list_row"]
    assert seen["url"].endswith(study_uid)  # the click opened this study in the viewer
    assert seen["image"]["sd"] > 5 and seen["image"]["width"] >= 256
    on_screen = " ".join(seen["synthetic_on_screen"])
    assert seen["study_description"] in on_screen and "SYNTHETIC" in on_screen
    png = shot.read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
