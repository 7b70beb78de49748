"""The capabilities statement (PS3.18 8.9, the Retrieve Capabilities transaction): WADL or JSON.

``OPTIONS`` on the service root (and on any resource) answers which resources exist, with their methods,
query parameters and media types. The default representation is WADL (``application/vnd.sun.wadl+xml``,
as PS3.18 8.9 describes); ``Accept: application/json`` gets the same content as JSON.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from service.dicomweb import media
from service.dicomweb.errors import NotAcceptable

WADL = "application/vnd.sun.wadl+xml"
JSON = "application/json"
_WADL_NS = "http://wadl.dev.java.net/2009/02"

_QIDO_PARAMS = ("includefield", "limit", "offset", "fuzzymatching", "{attributeID}")
_MULTIPART_DICOM = 'multipart/related; type="application/dicom"'
_FRAMES = 'multipart/related; type="application/octet-stream"'


@dataclass(frozen=True)
class Resource:
    path: str
    method: str
    service: str
    produces: tuple[str, ...]
    params: tuple[str, ...] = ()
    consumes: tuple[str, ...] = ()


RESOURCES: tuple[Resource, ...] = (
    Resource("/studies", "GET", "QIDO-RS", (media.DICOM_JSON, JSON), _QIDO_PARAMS),
    Resource("/series", "GET", "QIDO-RS", (media.DICOM_JSON, JSON), _QIDO_PARAMS),
    Resource("/instances", "GET", "QIDO-RS", (media.DICOM_JSON, JSON), _QIDO_PARAMS),
    Resource("/studies/{study}/series", "GET", "QIDO-RS", (media.DICOM_JSON, JSON), _QIDO_PARAMS),
    Resource("/studies/{study}/instances", "GET", "QIDO-RS", (media.DICOM_JSON, JSON), _QIDO_PARAMS),
    Resource("/studies/{study}/series/{series}/instances", "GET", "QIDO-RS", (media.DICOM_JSON, JSON), _QIDO_PARAMS),
    Resource("/studies/{study}", "GET", "WADO-RS", (_MULTIPART_DICOM,)),
    Resource("/studies/{study}/series/{series}", "GET", "WADO-RS", (_MULTIPART_DICOM,)),
    Resource("/studies/{study}/series/{series}/instances/{instance}", "GET", "WADO-RS", (_MULTIPART_DICOM, media.DICOM)),
    Resource("/studies/{study}/metadata", "GET", "WADO-RS", (media.DICOM_JSON, JSON)),
    Resource("/studies/{study}/series/{series}/metadata", "GET", "WADO-RS", (media.DICOM_JSON, JSON)),
    Resource("/studies/{study}/series/{series}/instances/{instance}/metadata", "GET", "WADO-RS", (media.DICOM_JSON, JSON)),
    Resource("/studies/{study}/series/{series}/instances/{instance}/bulk/{tag}", "GET", "WADO-RS", (_FRAMES,)),
    Resource("/studies/{study}/series/{series}/instances/{instance}/frames/{frames}", "GET", "WADO-RS",
             (_FRAMES, 'multipart/related; type="image/jpeg"', 'multipart/related; type="image/jls"', 'multipart/related; type="image/jp2"')),
    Resource("/studies/{study}/series/{series}/instances/{instance}/rendered", "GET", "WADO-RS",
             ("image/jpeg", "image/png"), ("window", "viewport", "quality")),
    Resource("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/rendered", "GET", "WADO-RS",
             ("image/jpeg", "image/png"), ("window", "viewport", "quality")),
    Resource("/studies/{study}/thumbnail", "GET", "WADO-RS", ("image/jpeg", "image/png"), ("viewport",)),
    Resource("/studies/{study}/series/{series}/thumbnail", "GET", "WADO-RS", ("image/jpeg", "image/png"), ("viewport",)),
    Resource("/studies/{study}/series/{series}/instances/{instance}/thumbnail", "GET", "WADO-RS", ("image/jpeg", "image/png"), ("viewport",)),
    Resource("/studies/{study}/series/{series}/instances/{instance}/frames/{frame}/thumbnail", "GET", "WADO-RS",
             ("image/jpeg", "image/png"), ("viewport",)),
    Resource("/studies", "POST", "STOW-RS", (media.DICOM_JSON,), consumes=(_MULTIPART_DICOM,)),
    Resource("/studies/{study}", "POST", "STOW-RS", (media.DICOM_JSON,), consumes=(_MULTIPART_DICOM,)),
)


def as_json(base_url: str) -> bytes:
    return json.dumps({
        "base": base_url,
        "resources": [
            {"path": r.path, "method": r.method, "service": r.service, "produces": list(r.produces),
             "consumes": list(r.consumes), "queryParameters": list(r.params)}
            for r in RESOURCES
        ],
    }, indent=1).encode()


def as_wadl(base_url: str) -> bytes:
    ET.register_namespace("", _WADL_NS)
    app = ET.Element(f"{{{_WADL_NS}}}application")
    resources = ET.SubElement(app, f"{{{_WADL_NS}}}resources", base=base_url + "/")
    for r in RESOURCES:
        res = ET.SubElement(resources, f"{{{_WADL_NS}}}resource", path=r.path.lstrip("/"))
        method = ET.SubElement(res, f"{{{_WADL_NS}}}method", name=r.method, id=f"{r.service}:{r.method}:{r.path}")
        request = ET.SubElement(method, f"{{{_WADL_NS}}}request")
        for p in r.params:
            ET.SubElement(request, f"{{{_WADL_NS}}}param", name=p, style="query", required="false")
        for c in r.consumes:
            ET.SubElement(request, f"{{{_WADL_NS}}}representation", mediaType=c)
        response = ET.SubElement(method, f"{{{_WADL_NS}}}response", status="200")
        for m in r.produces:
            ET.SubElement(response, f"{{{_WADL_NS}}}representation", mediaType=m)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(app)


def statement(accept: list[media.MediaRange], base_url: str) -> tuple[bytes, str]:
    for rng in accept:
        if rng.matches(WADL) or rng.type in ("application/xml", "text/xml"):
            return as_wadl(base_url), WADL
        if rng.matches(JSON):
            return as_json(base_url), JSON
    raise NotAcceptable(f"the capabilities statement is offered as {WADL} and {JSON}")
