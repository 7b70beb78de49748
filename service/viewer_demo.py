"""A synthetic study in OHIF Viewer, seen by headless Chromium: the check behind ``make demo-viewer``.

``python -m service.viewer_demo --viewer-dir var/viewer`` writes a synthetic study (the bundled
demo generator's images, through the same writer as every synthetic study) into a demo home, then:

1. in a network namespace that holds only loopback (``unshare -n``, then ``ip link set lo up``), starts
   the DICOMweb service with the viewer on a free port and headless Chromium beside it, opens
   ``/viewer/``, waits for the study list to show the SYNTHETIC study, clicks it, waits for the image
   to be drawn in the viewport, and saves a screenshot (``--screenshot``, default under the home);
2. unless ``--no-serve``, serves the same home on ``--port`` (8080) of this machine's loopback for a
   person's browser (``http://127.0.0.1:8080/viewer/``) until Ctrl-C.

Step 1 alone is ``--check-only``; ``--in-namespace`` is the part that runs inside the namespace and
prints what it saw as one JSON line (the test in tests/dicomweb/test_viewer.py reads it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

STUDY_LIST_TIMEOUT = 60.0
IMAGE_TIMEOUT = 60.0

# The study list's rows (OHIF Viewer 2 draws each study as a table row, or a div row on narrow screens).
_FIND_ROW = """(() => {
  const rows = [...document.querySelectorAll('tr, [class*="studylist"], [class*="StudyList"], [role="row"]')];
  const row = rows.find(r => (r.innerText || '').includes(%s) && r.querySelectorAll('tr').length === 0);
  return row ? (row.innerText || '').trim().slice(0, 300) : '';
})()"""
_CLICK_ROW = """(() => {
  const rows = [...document.querySelectorAll('tr, [class*="studylist"], [class*="StudyList"], [role="row"]')];
  const row = rows.find(r => (r.innerText || '').includes(%s) && r.querySelectorAll('tr').length === 0);
  if (!row) return false;
  (row.querySelector('td') || row).click();
  return true;
})()"""
# An image was drawn: the largest canvas (the viewport's, not a thumbnail's) has pixels that are not all one value.
_IMAGE_DRAWN = """(() => {
  const canvases = [...document.querySelectorAll('canvas')].sort((a, b) => b.width * b.height - a.width * a.height);
  const c = canvases[0];
  if (!c || c.width < 256 || c.height < 256) return null;
  let data;
  try { data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; } catch (e) { return null; }
  let n = 0, sum = 0, sq = 0;
  for (let i = 0; i < data.length; i += 4 * 7) { const v = data[i]; n++; sum += v; sq += v * v; }
  const mean = sum / n, sd = Math.sqrt(Math.max(0, sq / n - mean * mean));
  return sd > 5 ? {width: c.width, height: c.height, mean: mean, sd: sd} : null;
})()"""


def demo_home(home: Path, count: int = 2) -> tuple[Any, str]:
    """(config, StudyInstanceUID) of a home holding one synthetic study by the bundled demo generator."""
    from models.registry import Registry
    from models.sampling import latents, to_uint
    from service.config import load_config
    from service.archive.store import Store
    from service.synthetic.studies import SyntheticStudyWriter

    cfg = load_config(path=None, env={}, overrides={
        "home": str(home), "log.level": "warning",
        # The bundled model carries no near-copy index (README "Synthetic studies"): its studies are
        # written unchecked, and each instance records near_copy_check=not-run.
        "synthetic.allow_unchecked": True,
    })
    store = Store(cfg)
    try:
        for record in store.index.instances():
            return cfg, record.study_uid
        net, version = Registry.with_bundled(home / "models").load("demo-dcgan")
        seeds = list(range(7, 7 + count))
        import torch

        with torch.inference_mode():
            images = to_uint(net(latents(seeds, int(version.card["z_dim"])), psi=1.0), 8)[:, 0]
        outcome = SyntheticStudyWriter(cfg, store).write_study(images, seeds, 1.0, version)
        return cfg, outcome.study_instance_uid
    finally:
        store.close()


def look(base_url: str, study_description: str, screenshot: Path, chromium: str) -> dict[str, Any]:
    """Open the viewer, find the study in the list, open it, wait for its image; what was seen."""
    from service.dicomweb.browser import Chromium

    seen: dict[str, Any] = {}
    started = time.monotonic()
    with Chromium(chromium) as browser:
        browser.navigate(base_url + "/viewer/")
        needle = json.dumps(study_description)
        seen["study_list_row"] = browser.wait_for(_FIND_ROW % needle, STUDY_LIST_TIMEOUT, "the study in the study list")
        seen["study_list_s"] = round(time.monotonic() - started, 1)
        browser.screenshot(screenshot.with_name(screenshot.stem + "-study-list.png"))
        if not browser.evaluate(_CLICK_ROW % needle):
            raise RuntimeError("the study's row disappeared before it could be clicked")
        try:
            seen["image"] = browser.wait_for(_IMAGE_DRAWN, IMAGE_TIMEOUT, "the image in the viewport")
        except Exception:
            browser.screenshot(screenshot.with_name(screenshot.stem + "-failed.png"))  # what the page showed instead
            raise
        time.sleep(1.0)  # the overlays and the series panel are drawn in the frame after the image
        seen["url"] = browser.evaluate("location.pathname")
        text = browser.evaluate("document.body.innerText") or ""
        seen["synthetic_on_screen"] = [line.strip() for line in text.splitlines() if "SYNTHETIC" in line.upper()][:10]
        browser.screenshot(screenshot)
        seen["screenshot"] = str(screenshot)
        seen["seconds"] = round(time.monotonic() - started, 1)
        seen["console_tail"] = browser.console[-5:]
    return seen


def in_namespace(home: Path, viewer_dir: str, study_uid: str, screenshot: Path, chromium: str) -> dict[str, Any]:
    """Inside the namespace: the DICOMweb service with the viewer on a free loopback port, and Chromium."""
    import pydicom

    from service.config import load_config
    from service.archive.store import Store
    from service.dicomweb.server import DicomwebServer

    cfg = load_config(path=None, env={}, overrides={
        "home": str(home), "log.level": "warning", "dicomweb.port": 0, "dicomweb.viewer_dir": viewer_dir,
    })
    store = Store(cfg)
    server = DicomwebServer(cfg, store).start()
    try:
        record = next(r for r in store.index.instances() if r.study_uid == study_uid)
        description = str(pydicom.dcmread(store.path_of(record), stop_before_pixels=True).StudyDescription)
        host, port = server.address
        seen = look(f"http://{host}:{port}", description, screenshot, chromium)
        seen["study_description"] = description
        return seen
    finally:
        server.stop()
        store.close()


def isolated_check(home: Path, viewer_dir: str, study_uid: str, screenshot: Path, timeout: float = 240) -> dict[str, Any]:
    """Run :func:`in_namespace` in a new network namespace with loopback only; its JSON answer."""
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is not installed (Debian: util-linux, iproute2)")
    cmd = [
        "unshare", "--net", "sh", "-c", 'ip link set lo up && exec "$0" "$@"',
        sys.executable, "-m", "service.viewer_demo", "--in-namespace", "--home", str(home),
        "--viewer-dir", viewer_dir, "--study", study_uid, "--screenshot", str(screenshot),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[2])
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"the viewer check failed ({out.returncode}): {(out.stderr or out.stdout)[-3000:]}")
    return json.loads(lines[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.viewer_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewer-dir", required=True, help="the folder `make viewer` filled (dicomweb.viewer_dir)")
    parser.add_argument("--home", type=Path, default=Path("var/demo-viewer"), help="the demo's home folder")
    parser.add_argument("--screenshot", type=Path, help="where the PNG goes (default: <home>/viewer-screenshot.png)")
    parser.add_argument("--port", type=int, default=8080, help="port to leave the viewer on afterwards (loopback)")
    parser.add_argument("--check-only", action="store_true", help="take the screenshot, then stop")
    parser.add_argument("--no-check", action="store_true", help="serve without the headless check")
    parser.add_argument("--in-namespace", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--study", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    home = args.home.resolve()
    screenshot = (args.screenshot or home / "viewer-screenshot.png").resolve()
    viewer_dir = str(Path(args.viewer_dir).resolve())
    from service.dicomweb.browser import find_chromium

    if args.in_namespace:
        chromium = find_chromium()
        if chromium is None:
            raise SystemExit("Chromium is not installed (Debian: apt-get install chromium)")
        print(json.dumps(in_namespace(home, viewer_dir, args.study, screenshot, chromium)), flush=True)
        return 0
    from service.dicomweb.viewer import find_bundle

    find_bundle(viewer_dir)  # a clear error before anything else when `make viewer` has not run
    home.mkdir(parents=True, exist_ok=True)
    cfg, study_uid = demo_home(home)
    if not args.no_check:
        if find_chromium() is None:
            print("Chromium is not installed (Debian: apt-get install chromium); skipping the headless check")
        else:
            seen = isolated_check(home, viewer_dir, study_uid, screenshot)
            print(f"study list row: {seen['study_list_row']!r}")
            print(f"image drawn: {seen['image']}; SYNTHETIC on screen: {seen['synthetic_on_screen']}")
            print(f"screenshot: {seen['screenshot']} ({seen['seconds']} s)")
    if args.check_only:
        return 0
    from service.config import load_config
    from service.runtime import Runtime

    serve_cfg = load_config(path=None, env={}, overrides={
        "home": str(home), "dicomweb.port": args.port, "dicomweb.viewer_dir": viewer_dir, "log.level": "info",
        "metrics.enabled": False,
    })
    runtime = Runtime(serve_cfg)
    runtime.add_dicomweb()
    print(f"OHIF Viewer over synthpacs: http://127.0.0.1:{args.port}/viewer/  (Ctrl-C to stop)", flush=True)
    runtime.run_until_signalled()
    return 0


if __name__ == "__main__":
    sys.exit(main())
