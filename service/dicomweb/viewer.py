"""A web viewer served beside the DICOMweb services: OHIF Viewer 2 (npm ``@ohif/viewer`` 4.x) at ``/viewer``.

The viewer's prebuilt bundle (``dist/index.umd.js``, MIT, about 12 MB) is installed by ``make viewer``
into a folder that ``dicomweb.viewer_dir`` names; it is never part of the repository. This module adds
what ties it to this server:

* ``/viewer/`` (and every other path under it that is not a file of the bundle, so the viewer's own
  routes such as ``/viewer/viewer/{StudyInstanceUID}`` survive a reload): a small page that loads the
  bundle and starts it (OHIF's "script tag" usage), without the third-party polyfill script that the
  package's own ``index.html`` fetches from the internet;
* ``/viewer/app-config.js``: the viewer's configuration, pointing QIDO-RS and WADO-RS at this server's
  own DICOMweb root, so the browser talks to one origin and needs no CORS.

The bundle's files are served read-only from that one folder: a name with a path separator or one that
is not a regular file there falls back to the page, so nothing outside the folder can be reached.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from service.config import ConfigError

PACKAGE = "@ohif/viewer"
VERSION = "4.12.51"
BUNDLE = "index.umd.js"
MOUNT = "/viewer"

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8" />
  <meta name="viewport" content="width=device-width,initial-scale=1.0" />
  <meta name="description" content="synthpacs: OHIF Viewer over this archive's DICOMweb services" />
  <title>synthpacs viewer</title>
</head>
<body>
  <noscript>The viewer needs JavaScript.</noscript>
  <div id="root"></div>
  <script src="{mount}/app-config.js"></script>
  <script src="{mount}/{bundle}"></script>
  <script>window.OHIFViewer.installViewer(window.config, "root", function () {{}});</script>
</body>
</html>
"""


def find_bundle(viewer_dir: str) -> Path:
    """The folder holding ``index.umd.js``: ``viewer_dir`` itself, or the npm package's ``dist/`` below it."""
    root = Path(viewer_dir).expanduser()
    for folder in (root, root / "dist", root / "package" / "dist"):
        if (folder / BUNDLE).is_file():
            return folder.resolve()
    raise ConfigError(
        f"dicomweb.viewer_dir {viewer_dir!r} holds no {BUNDLE} (OHIF Viewer's prebuilt bundle): "
        f"run `make viewer` (npm {PACKAGE}@{VERSION}) and point dicomweb.viewer_dir at the folder it prints"
    )


def app_config(dicomweb_url: str) -> str:
    """OHIF Viewer 2's ``window.config``: one DICOMweb server, this one, retrieved by WADO-RS only."""
    config = {
        "routerBasename": MOUNT,
        "extensions": [],
        "showStudyList": True,
        "filterQueryParam": False,
        "disableServersCache": False,
        "studyPrefetcher": {"enabled": False},
        "servers": {
            "dicomWeb": [{
                "name": "synthpacs",
                # WADO-URI (PS3.18 10.3) is not offered; with wadors rendering the viewer never uses it.
                "wadoUriRoot": dicomweb_url,
                "qidoRoot": dicomweb_url,
                "wadoRoot": dicomweb_url,
                "qidoSupportsIncludeField": True,
                "imageRendering": "wadors",
                "thumbnailRendering": "wadors",
                "enableStudyLazyLoad": True,
                # Fuzzy person-name matching is off in synthpacs' QIDO-RS (as in its C-FIND).
                "supportsFuzzyMatching": False,
            }],
        },
        # HTTP/1.1 without multiplexing: a few series metadata requests at a time load a study fastest.
        "maxConcurrentMetadataRequests": 5,
    }
    return "window.config = " + json.dumps(config, indent=2) + ";\n"


def routes(viewer_dir: str, dicomweb_url: Callable[[Request], str]) -> list[Route]:
    """The viewer's routes under ``/viewer``; ``dicomweb_url(request)`` is this server's DICOMweb root URL."""
    folder = find_bundle(viewer_dir)
    files = {p.name for p in folder.iterdir() if p.is_file()}
    page = PAGE.format(mount=MOUNT, bundle=BUNDLE).encode()

    def config_endpoint(request: Request) -> Response:
        return Response(app_config(dicomweb_url(request)), media_type="text/javascript",
                        headers={"Cache-Control": "no-store"})

    def file_or_page(request: Request) -> Response:
        name = request.path_params.get("path", "")
        if name in files and name != "index.html":
            # The bundle is immutable for one installed version; the page and config are not cached.
            return FileResponse(folder / name, headers={"Cache-Control": "max-age=3600"})
        return Response(page, media_type="text/html", headers={"Cache-Control": "no-store"})

    def to_slash(_request: Request) -> Response:
        return RedirectResponse(MOUNT + "/", status_code=308)

    return [
        Route(MOUNT, to_slash, methods=["GET"]),
        Route(MOUNT + "/app-config.js", config_endpoint, methods=["GET"]),
        Route(MOUNT + "/{path:path}", file_or_page, methods=["GET"]),
    ]
