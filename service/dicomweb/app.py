"""The DICOMweb application: Starlette routes for QIDO-RS, WADO-RS, STOW-RS and the capabilities.

Every resource lives under ``dicomweb.root`` (``/dicom-web``). Endpoints that read the store are plain
functions that Starlette runs in its thread pool (SQLite and file reads block), except the retrieval of one
small instance as stored, which is one indexed lookup and one read (``INLINE_BYTES``), and a search for
one entity by its UID, which are done on the event loop; STOW-RS reads the body asynchronously into a file and stores from a worker thread. Responses with
instances stream from disk.

The middleware, outermost first: CORS (when ``dicomweb.cors_origins`` is set), metrics (every response,
401s included), bearer tokens. No URL, query or body is logged: they hold UIDs and patients' names.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from service.config import Config
from service.dicomweb import capabilities, dicomjson, media, metrics, qido, rendered, security, stow, viewer, wado
from service.dicomweb.errors import BadRequest, HttpError, NotAcceptable, PayloadTooLarge
from service.logs import get_logger

log = get_logger("dicomweb")

_JSON_TYPES = (media.DICOM_JSON, "application/json")
# Instances whose files add up to at most this many bytes are answered in one body rather than streamed.
SMALL_BODY = 8 << 20
# A single instance of at most this many bytes, sent as stored, is looked up and read on the event loop
# itself: the hop to a worker thread and back cost more server CPU than the lookup and the read (0.85 ->
# 0.60 ms per 0.5 MB instance on this 2-core machine). The loop waits for at most one indexed lookup and
# one read of this size; everything larger, series, studies and transcoding run in worker threads.
INLINE_BYTES = 1 << 20


# -- helpers --------------------------------------------------------------------------------------------------


def _accept(request: Request) -> list[media.MediaRange]:
    try:
        return media.parse_accept(request.headers.get("accept"))
    except media.BadMediaType as exc:
        raise BadRequest(f"the Accept header cannot be read: {exc}") from None


def _json_type(request: Request) -> str:
    """application/dicom+json (or application/json when only that is accepted), else 406."""
    for rng in _accept(request):
        for candidate in _JSON_TYPES:
            if rng.matches(candidate):
                return candidate
    raise NotAcceptable("this resource is offered as application/dicom+json (PS3.18 F.2)")


def _uids(request: Request) -> dict[str, str]:
    names = {"study": "StudyInstanceUID", "series": "SeriesInstanceUID", "instance": "SOPInstanceUID"}
    return {names[k]: security.path_uid(v, names[k]) for k, v in request.path_params.items() if k in names}


def _warn(headers: dict[str, str], warnings: list[str]) -> dict[str, str]:
    if warnings:
        headers["Warning"] = ", ".join(warnings)
    return headers


def public_netloc(request: Request) -> str:
    """host:port that clients reach this service at, for Retrieve URLs and BulkDataURIs.

    The Host header, as a proxy in front would set it; some clients (dicomweb-client) send a bare
    loopback host without the port, which is completed with the port this socket listens on.
    """
    netloc = request.headers.get("host") or ""
    server = request.scope.get("server")
    host = netloc.rsplit(":", 1)[0] if netloc.count(":") == 1 else netloc
    if server and (not netloc or (":" not in netloc.strip("[]").split("]")[-1] and security.is_loopback(host))):
        address, port = server[0], server[1]
        return f"{'[' + address + ']' if ':' in address else address}:{port}" if not netloc else f"{netloc}:{port}"
    return netloc


def route_template(path: str, root: str) -> str:
    """The route a path took, with UIDs replaced by names: a metrics label of bounded cardinality."""
    if not path.startswith(root):
        return "other"
    segments = [s for s in path[len(root):].split("/") if s]
    names = {"studies": "{study}", "series": "{series}", "instances": "{instance}", "frames": "{frames}", "bulk": "{tag}"}
    out, expect = [], None
    for segment in segments:
        if expect is not None:
            out.append(expect)
            expect = None
            continue
        if segment in names:
            out.append(segment)
            expect = names[segment]
        elif segment in ("metadata", "rendered", "thumbnail"):
            out.append(segment)
        else:
            return "other"
    return "/" + "/".join(out)


class MetricsMiddleware:
    """Count every response by route template and status, and time it to the last byte sent."""

    def __init__(self, app: Any, root: str):
        self.app = app
        self.root = root

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        code = [500]
        recorded = [False]

        def record() -> None:
            if not recorded[0]:
                recorded[0] = True
                route = route_template(scope.get("path", ""), self.root)
                metrics.REQUESTS.labels(route=route, code=str(code[0])).inc()
                metrics.LATENCY.labels(route=route).observe(time.perf_counter() - started)

        async def send_and_note(message: dict) -> None:
            if message["type"] == "http.response.start":
                code[0] = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                record()  # before the last bytes leave, so a client that got its answer sees it counted
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            record()


# -- the application --------------------------------------------------------------------------------------------


def create_app(cfg: Config, store: Any) -> Starlette:
    web = cfg.dicomweb
    root = web.root.rstrip("/")
    searcher = qido.Qido(cfg, store)
    retriever = wado.Wado(cfg, store)
    storer = stow.Stow(cfg, store)

    def base_url(request: Request) -> str:
        return f"{request.url.scheme}://{public_netloc(request)}{root}"

    def instance_url(request: Request) -> Callable[[Any], str]:
        base = base_url(request)
        return lambda rec: f"{base}/studies/{rec.study_uid}/series/{rec.series_uid}/instances/{rec.sop_instance_uid}"

    # -- QIDO-RS --

    def search_endpoint(search: qido.Search) -> Callable[[Request], Awaitable[Response]]:
        def answer_search(request: Request) -> Response:
            ctype = _json_type(request)
            answer = searcher.search(search, _uids(request), request.query_params.multi_items(), base_url(request))
            return Response(dicomjson.dump(answer.matches), media_type=ctype, headers=_warn({}, answer.warnings))

        async def endpoint(request: Request) -> Response:
            # A search for one entity by its UID is answered on the event loop, as one small instance is
            # retrieved (INLINE_BYTES); every other search runs in a worker thread.
            if qido.at_most_one_match(search, request.query_params.multi_items()):
                return answer_search(request)
            return await run_in_threadpool(answer_search, request)

        return endpoint

    # -- WADO-RS --

    def _records(request: Request) -> list:
        uids = _uids(request)
        return retriever.records(uids["StudyInstanceUID"], uids.get("SeriesInstanceUID"), uids.get("SOPInstanceUID"))

    async def retrieve(request: Request) -> Response:
        if "instance" not in request.path_params:
            return await run_in_threadpool(retrieve_in_thread, request, None)
        accept = _accept(request)
        (rec,) = _records(request)  # one indexed lookup by SOP Instance UID
        plan = wado.negotiate_instances(accept, {rec.transfer_syntax_uid}, True)
        if rec.size > INLINE_BYTES or plan.transfer_syntax not in ("*", rec.transfer_syntax_uid):
            return await run_in_threadpool(retrieve_in_thread, request, (accept, [rec], plan))
        # A small instance sent as stored: one read into the body, here on the event loop, costs less than
        # the hop to a worker thread and back (INLINE_BYTES).
        content_type = f"{media.DICOM}; transfer-syntax={rec.transfer_syntax_uid}"
        if not plan.multipart:
            return Response(wado.read_body(store.path_of(rec)), media_type=content_type)
        boundary = media.new_boundary()
        head = media.part_header(boundary, content_type, instance_url(request)(rec))
        body = wado.read_body(store.path_of(rec), head, media.close_delimiter(boundary))
        return Response(body, media_type=media.multipart_content_type(media.DICOM, boundary))

    def retrieve_in_thread(request: Request, found: tuple | None) -> Response:
        single = "instance" in request.path_params
        if found is None:
            accept = _accept(request)
            records = _records(request)
            plan = wado.negotiate_instances(accept, {r.transfer_syntax_uid for r in records}, single)
        else:
            accept, records, plan = found
        parts = retriever.instance_parts(records, plan, instance_url(request))
        # Up to SMALL_BODY bytes are read here, in this worker thread, and sent as one body; larger answers
        # stream (each step of a streaming body is another worker-thread hop, milliseconds on a busy machine).
        small = sum(r.size for r in records) <= SMALL_BODY
        if not plan.multipart:
            content_type, chunks, _location = next(iter(parts))
            if small:
                return Response(b"".join(chunks), media_type=content_type)
            return StreamingResponse(media.coalesce(chunks), media_type=content_type)
        boundary = media.new_boundary()
        ctype = media.multipart_content_type(media.DICOM, boundary)
        if small:
            return Response(b"".join(media.multipart_stream(boundary, parts)), media_type=ctype)
        return StreamingResponse(media.coalesce(media.multipart_stream(boundary, parts)), media_type=ctype)

    def metadata(request: Request) -> Response:
        ctype = _json_type(request)
        records = _records(request)
        return Response(dicomjson.dump(retriever.metadata(records, instance_url(request))), media_type=ctype)

    def bulk(request: Request) -> Response:
        accept = _accept(request)
        inner_ok = (media.OCTET_STREAM, "*/*", "application/*")
        if not any(r.type in ("*/*", "multipart/*", media.OCTET_STREAM)
                   or (r.type == media.MULTIPART_RELATED and (r.param("type") or media.OCTET_STREAM).lower() in inner_ok) for r in accept):
            raise NotAcceptable('bulk data is offered as multipart/related; type="application/octet-stream"')
        (rec,) = _records(request)
        value = retriever.bulk(rec, request.path_params["tag"])
        boundary = media.new_boundary()
        body = media.multipart_stream(boundary, [(media.OCTET_STREAM, [value], None)])
        return Response(b"".join(body), media_type=media.multipart_content_type(media.OCTET_STREAM, boundary))

    def frames(request: Request) -> Response:
        numbers = wado.parse_frame_list(request.path_params["frames"])
        (rec,) = _records(request)
        content_type, values = retriever.frames(rec, numbers, _accept(request))
        boundary = media.new_boundary()
        body = media.multipart_stream(boundary, [(content_type, [v], None) for v in values])
        return Response(b"".join(body), media_type=media.multipart_content_type(content_type.split(";")[0], boundary))

    def render(request: Request, thumbnail: bool) -> Response:
        import pydicom

        req = rendered.parse_request(dict(request.query_params), _accept(request), thumbnail=thumbnail)
        records = [r for r in _records(request) if r.rows]
        if not records:
            raise wado.NotFound("nothing here has pixel data to render")
        frame = 1
        if "frame" in request.path_params:
            numbers = wado.parse_frame_list(request.path_params["frame"])
            if len(numbers) != 1:
                raise BadRequest("one frame is rendered at a time")
            frame = numbers[0]
        # A study's or series' thumbnail shows its first image (in series and instance order).
        ds = pydicom.dcmread(store.path_of(records[0]))
        return Response(rendered.render_frame(ds, frame, req), media_type=req.media_type)

    def rendered_endpoint(request: Request) -> Response:
        return render(request, thumbnail=False)

    def thumbnail_endpoint(request: Request) -> Response:
        return render(request, thumbnail=True)

    # -- STOW-RS --

    async def store_endpoint(request: Request) -> Response:
        boundary = stow.check_content_type(request.headers.get("content-type"))
        ctype = _json_type(request)
        study = _uids(request).get("StudyInstanceUID")
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                raise BadRequest("Content-Length is not a number") from None
            if length > web.max_body_bytes:
                raise PayloadTooLarge(f"the body declares {length} bytes; this server takes at most {web.max_body_bytes} (dicomweb.max_body_bytes)")
        body = storer.new_body()
        try:
            try:
                async for chunk in request.stream():
                    if body.size + len(chunk) > web.max_body_bytes:
                        raise PayloadTooLarge(f"the body is larger than {web.max_body_bytes} bytes (dicomweb.max_body_bytes)")
                    body.write(chunk)
            except ClientDisconnect:
                log.warning("stow_client_disconnected", received=body.size)
                return Response(status_code=400)
            result = await run_in_threadpool(storer.store_body, body, boundary, base_url(request), study)
        finally:
            body.discard()
        metrics.STOW_INSTANCES.labels(outcome="stored").inc(result.stored)
        metrics.STOW_INSTANCES.labels(outcome="failed").inc(result.failed)
        body = dicomjson.dump([dicomjson.to_json(result.response)])[1:-1]
        return Response(body, status_code=result.status, media_type=ctype, headers=_warn({}, result.warnings))

    # -- capabilities --

    def capabilities_endpoint(request: Request) -> Response:
        body, ctype = capabilities.statement(_accept(request), base_url(request))
        return Response(body, media_type=ctype, headers={"Allow": "GET, POST, OPTIONS"})

    study_path = "/studies/{study}"
    series_path = study_path + "/series/{series}"
    instance_path = series_path + "/instances/{instance}"
    # Paths of different routes never match the same URL, so the order only decides how many patterns a
    # request is tried against: the per-instance resources, the most requested, come first.
    routes = [
        Route(instance_path, retrieve, methods=["GET"]),
        Route(instance_path + "/metadata", metadata, methods=["GET"]),
        Route(instance_path + "/bulk/{tag}", bulk, methods=["GET"]),
        Route(instance_path + "/rendered", rendered_endpoint, methods=["GET"]),
        Route(instance_path + "/thumbnail", thumbnail_endpoint, methods=["GET"]),
        Route(instance_path + "/frames/{frames}", frames, methods=["GET"]),
        Route(instance_path + "/frames/{frame}/rendered", rendered_endpoint, methods=["GET"]),
        Route(instance_path + "/frames/{frame}/thumbnail", thumbnail_endpoint, methods=["GET"]),
        Route("/", capabilities_endpoint, methods=["GET", "OPTIONS"]),
        Route("/studies", search_endpoint(qido.STUDIES), methods=["GET"]),
        Route("/studies", store_endpoint, methods=["POST"]),
        Route("/series", search_endpoint(qido.ALL_SERIES), methods=["GET"]),
        Route("/instances", search_endpoint(qido.ALL_INSTANCES), methods=["GET"]),
        Route(study_path, retrieve, methods=["GET"]),
        Route(study_path, store_endpoint, methods=["POST"]),
        Route(study_path + "/series", search_endpoint(qido.STUDY_SERIES), methods=["GET"]),
        Route(study_path + "/instances", search_endpoint(qido.STUDY_INSTANCES), methods=["GET"]),
        Route(study_path + "/metadata", metadata, methods=["GET"]),
        Route(study_path + "/thumbnail", thumbnail_endpoint, methods=["GET"]),
        Route(series_path, retrieve, methods=["GET"]),
        Route(series_path + "/instances", search_endpoint(qido.SERIES_INSTANCES), methods=["GET"]),
        Route(series_path + "/metadata", metadata, methods=["GET"]),
        Route(series_path + "/thumbnail", thumbnail_endpoint, methods=["GET"]),
    ]

    async def http_error(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HttpError)
        return PlainTextResponse(exc.message + "\n", status_code=exc.status)

    middleware = []
    if web.cors_origins:
        middleware.append(Middleware(
            CORSMiddleware, allow_origins=list(web.cors_origins), allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Accept", "Content-Type"],
            expose_headers=["Content-Type", "Content-Location", "Warning"],
            allow_credentials="*" not in web.cors_origins,
        ))
    middleware.append(Middleware(MetricsMiddleware, root=root))
    middleware.append(Middleware(security.BearerTokenMiddleware, tokens=security.tokens_of(cfg)))
    capabilities_at_root = Route(root, capabilities_endpoint, methods=["GET", "OPTIONS"])
    viewer_routes = viewer.routes(web.viewer_dir, base_url) if web.viewer_dir else []
    return Starlette(
        routes=[capabilities_at_root, Mount(root, routes=routes), *viewer_routes],
        middleware=middleware,
        exception_handlers={HttpError: http_error},
    )
