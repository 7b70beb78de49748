"""The ``synthpacs.v1.Synthesizer`` servicer: requests checked, images made through the batcher, errors
answered as status codes a person can act on (proto/synthpacs/v1/synthesizer.proto documents them)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from concurrent.futures import CancelledError
import contextlib
import functools
import inspect
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Protocol

import grpc
import numpy as np
import torch

from models.conditions import space_of_card
from models.registry import ModelNotFound, RegistryError
from service.config import Config
from service.inference import metrics
from service.inference.batcher import BatcherStopped, DynamicBatcher
from service.inference.cache import AVAILABLE, FAILED, LOADING, READY, LoadedModel, ModelCache, ModelStatus, ModelUnavailable
from service.inference.encode import DicomEncoder, EncodeError, Format, check_format, encode_png, encode_raw
from service.inference.validate import (
    InvalidRequest, check_bit_depth, check_condition, check_destination, check_model_name, check_model_ref, check_psi, check_request_id,
    check_series_description, plan_seeds,
)
from service.logs import get_logger
from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc

log = get_logger("grpc")

FORMATS = {
    pb.ENCODING_UNSPECIFIED: Format("png", 8),
    pb.ENCODING_PNG_8: Format("png", 8),
    pb.ENCODING_PNG_16: Format("png", 16),
    pb.ENCODING_RAW_UINT8: Format("raw", 8),
    pb.ENCODING_RAW_UINT16: Format("raw", 16),
    pb.ENCODING_DICOM_SC_8: Format("dicom", 8),
    pb.ENCODING_DICOM_SC_16: Format("dicom", 16),
}
_STATES = {AVAILABLE: pb.MODEL_STATE_AVAILABLE, LOADING: pb.MODEL_STATE_LOADING, READY: pb.MODEL_STATE_READY, FAILED: pb.MODEL_STATE_FAILED}
_INSTANCE_STATES = {
    "stored": pb.InstanceStatus.STATE_STORED,
    "queued": pb.InstanceStatus.STATE_QUEUED,
    "refused-near-copy": pb.InstanceStatus.STATE_REFUSED_NEAR_COPY,
    "failed": pb.InstanceStatus.STATE_FAILED,
}


class RpcFailure(Exception):
    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code


def _failure(exc: BaseException, request_id: str) -> RpcFailure:
    """The status code and message for an exception met while serving a request."""
    if isinstance(exc, RpcFailure):
        return exc
    if isinstance(exc, InvalidRequest):
        return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, ModelNotFound):
        return RpcFailure(grpc.StatusCode.NOT_FOUND, str(exc))
    if isinstance(exc, RegistryError):  # a malformed model reference
        return RpcFailure(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
    if isinstance(exc, ModelUnavailable):
        return RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, f"model not ready: {exc}")
    if isinstance(exc, EncodeError):
        return RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, BatcherStopped):
        return RpcFailure(grpc.StatusCode.UNAVAILABLE, str(exc))
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return RpcFailure(grpc.StatusCode.RESOURCE_EXHAUSTED, "the GPU ran out of memory; retry later or ask for fewer images")
    log.error("request_failed", request_id=request_id, error=f"{type(exc).__name__}: {exc}")
    return RpcFailure(grpc.StatusCode.INTERNAL, f"internal error (request_id {request_id}); the server log has the details")


class _Call:
    """One RPC as the scaffolding sees it: its request id, the status code it ends with, and the fields of
    its closing log line (``finished``: the event name, None for no line)."""

    def __init__(self, request_id: str = "", finished: str | None = None):
        self.request_id = request_id
        self.code = grpc.StatusCode.OK
        self.started = time.monotonic()
        self.finished = finished
        self.fields: dict[str, Any] = {}


def rpc(method: str, *, request_id: bool = False, admitted: bool = False, finished: str | None = None) -> Callable:
    """The scaffolding every Synthesizer method shares, around a method ``fn(self, request, context, call)``:

    - ``request_id``: the client's ``request_id`` checked (a new one when absent; a bad one is
      INVALID_ARGUMENT, still answered under a fresh id) and kept in ``call.request_id``;
    - ``admitted``: the call counts against ``inference.max_inflight`` while it runs;
    - any exception is answered as the status code :func:`_failure` maps it to;
    - the request counter and latency histogram by method and code, and, with ``finished``, one closing log
      line with the request id, the code, the seconds and whatever the method put in ``call.fields``.

    Streaming methods (generator functions) keep all of it around the whole stream.
    """

    def wrap(fn: Callable) -> Callable:
        def begin(request: Any) -> tuple[_Call, InvalidRequest | None]:
            if not request_id:
                return _Call(finished=finished), None
            rid, bad = _request_id(request.request_id)
            return _Call(rid, finished), bad

        def end(self: "SynthesizerServicer", call: _Call, context: grpc.ServicerContext) -> None:
            self._finish(method, call.started, call.code, context)
            if call.finished:
                log.info(call.finished, request_id=call.request_id, **call.fields, code=call.code.name,
                         seconds=round(time.monotonic() - call.started, 4))

        def fail(call: _Call, exc: Exception, context: grpc.ServicerContext) -> None:
            failure = _failure(exc, call.request_id)
            call.code = failure.code
            context.abort(failure.code, str(failure))

        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def stream(self: "SynthesizerServicer", request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
                call, bad = begin(request)
                try:
                    if bad is not None:
                        raise bad
                    with self._admitted() if admitted else contextlib.nullcontext():
                        yield from fn(self, request, context, call)
                except Exception as exc:
                    fail(call, exc, context)
                finally:
                    end(self, call, context)

            return stream

        @functools.wraps(fn)
        def unary(self: "SynthesizerServicer", request: Any, context: grpc.ServicerContext) -> Any:
            call, bad = begin(request)
            try:
                if bad is not None:
                    raise bad
                with self._admitted() if admitted else contextlib.nullcontext():
                    return fn(self, request, context, call)
            except Exception as exc:
                fail(call, exc, context)
            finally:
                end(self, call, context)

        return unary

    return wrap


class StudyWriter(Protocol):
    """What GenerateStudy needs of the synthetic study writer (:class:`service.synthetic.studies.SyntheticStudyWriter`)."""

    def write_study(self, images: np.ndarray, seeds: list[int], psi: float, model: Any, *, destination: str | None = None,
                    burn_in_label: bool | None = None, series_description: str | None = None,
                    condition: dict[str, str] | None = None) -> Any: ...


class SynthesizerServicer(pb_grpc.SynthesizerServicer):
    """``study_writer`` makes the synthetic-study writer (service/synthetic/studies.py) when GenerateStudy needs it."""

    def __init__(self, cfg: Config, cache: ModelCache, batcher: DynamicBatcher, study_writer: Callable[[], StudyWriter] | None = None):
        self.cfg = cfg
        self.cache = cache
        self.batcher = batcher
        self._study_writer_factory = study_writer
        self._study_writer: StudyWriter | None = None
        self._inflight = 0
        self._lock = threading.Lock()

    # -- admission and bookkeeping ------------------------------------------------------------------

    @contextmanager
    def _admitted(self) -> Iterator[None]:
        with self._lock:
            if self._inflight >= self.cfg.inference.max_inflight:
                metrics.REJECTED.labels("max_inflight").inc()
                raise RpcFailure(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"the server is running {self._inflight} requests, its limit (inference.max_inflight); retry with backoff",
                )
            self._inflight += 1
            metrics.INFLIGHT.set(self._inflight)
        try:
            yield
        finally:
            with self._lock:
                self._inflight -= 1
                metrics.INFLIGHT.set(self._inflight)

    @staticmethod
    def _finish(method: str, started: float, code: grpc.StatusCode, context: grpc.ServicerContext) -> None:
        if code == grpc.StatusCode.OK and not context.is_active():
            remaining = context.time_remaining()
            code = grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining <= 0 else grpc.StatusCode.CANCELLED
        metrics.REQUESTS.labels(method, code.name).inc()
        metrics.REQUEST_LATENCY.labels(method).observe(time.monotonic() - started)

    # -- models -------------------------------------------------------------------------------------

    @rpc("ListModels")
    def ListModels(self, request: pb.ListModelsRequest, context: grpc.ServicerContext, call: _Call) -> pb.ListModelsResponse:
        if request.name:
            check_model_name(request.name)
        statuses = self.cache.statuses(all_versions=request.all_versions, name=request.name)
        return pb.ListModelsResponse(models=[model_info(s) for s in statuses])

    @rpc("GetModel")
    def GetModel(self, request: pb.GetModelRequest, context: grpc.ServicerContext, call: _Call) -> pb.ModelInfo:
        return model_info(self.cache.status(check_model_ref(request.model)))

    # -- generation ---------------------------------------------------------------------------------

    @rpc("Generate", request_id=True, admitted=True, finished="generate_finished")
    def Generate(self, request: pb.GenerateRequest, context: grpc.ServicerContext, call: _Call) -> Iterator[pb.GeneratedImage]:
        call.fields.update(model=request.model[:80], images=0, peer=context.peer())
        ref = check_model_ref(request.model)
        seeds = plan_seeds(request.count, request.seeds, request.first_seed if request.HasField("first_seed") else None, self.cfg.inference.max_count)
        psi = check_psi(request.truncation_psi if request.HasField("truncation_psi") else None)
        fmt = FORMATS.get(request.encoding)
        if fmt is None:
            raise InvalidRequest(f"encoding {request.encoding} is not one of {', '.join(pb.Encoding.keys())}")
        model = self.cache.get(ref)
        call.fields["model"] = model.ref
        condition, c = _condition(model, request)
        check_format(fmt, model.channels)
        dicom = self._dicom_encoder(model, psi, condition) if fmt.kind == "dicom" else None
        for index, seed, pixels in self._images(model, seeds, psi, context, fmt.bits, c):
            msg = pb.GeneratedImage(
                seed=seed, index=index, width=model.resolution, height=model.resolution, channels=model.channels,
                encoding=request.encoding or pb.ENCODING_PNG_8, model=model.ref, truncation_psi=psi, request_id=call.request_id,
                **condition,
            )
            if fmt.kind == "png":
                msg.data = encode_png(pixels)
            elif fmt.kind == "raw":
                msg.data = encode_raw(pixels)
            else:
                msg.data, msg.sop_instance_uid = dicom.encode(pixels, seed, index + 1)
            call.fields["images"] += 1
            yield msg

    def _dicom_encoder(self, model: LoadedModel, psi: float, condition: dict[str, str]) -> DicomEncoder:
        try:
            return DicomEncoder(self.cfg.synthetic, model.version, psi, condition)
        except ImportError:
            raise RpcFailure(
                grpc.StatusCode.UNIMPLEMENTED,
                "DICOM encodings need the synthetic Secondary Capture writer (service/synthetic/sc_writer.py), which this installation lacks",
            ) from None
        except ValueError as exc:  # e.g. synthetic.uid_root that cannot make UIDs
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, f"cannot write synthetic DICOM with this server's settings: {exc}") from None

    def _images(self, model: LoadedModel, seeds: list[int], psi: float, context: grpc.ServicerContext, bits: int, c: torch.Tensor | None = None):
        """(index, seed, pixels (C, H, W) of ``bits``) in request order. At most one model batch of this
        request waits in the batcher at a time (refilled at half), so one big request cannot starve many
        small ones; a cancelled or expired call cancels what it still has queued."""
        window = max(1, model.max_batch)
        pending: deque = deque()
        next_index = 0
        ended = threading.Event()

        def refill() -> None:
            nonlocal next_index
            if ended.is_set():
                return
            n = min(window - len(pending), len(seeds) - next_index)
            if n > 0:
                futures = self.batcher.submit(model, seeds[next_index : next_index + n], psi, bits, c)
                pending.extend(zip(range(next_index, next_index + n), futures))
                next_index += n
                if ended.is_set():  # the call ended while these were being queued
                    for fut in futures:
                        fut.cancel()

        def cancel_pending() -> None:
            ended.set()  # no more submissions for this call, even from a refill already under way
            for _i, fut in list(pending):
                fut.cancel()

        if not context.add_callback(cancel_pending):
            return  # the call already ended
        refill()
        while pending:
            index, fut = pending[0]
            try:
                image = fut.result()
            except CancelledError:
                return
            pending.popleft()
            if ended.is_set():
                return
            if len(pending) <= window // 2:
                refill()
            yield index, seeds[index], image

    @rpc("GenerateStudy", request_id=True, admitted=True, finished="study_finished")
    def GenerateStudy(self, request: pb.GenerateStudyRequest, context: grpc.ServicerContext, call: _Call) -> pb.GenerateStudyResponse:
        ref = check_model_ref(request.model)
        seeds = plan_seeds(request.count, request.seeds, request.first_seed if request.HasField("first_seed") else None, self.cfg.inference.max_count)
        psi = check_psi(request.truncation_psi if request.HasField("truncation_psi") else None)
        bits = check_bit_depth(request.bit_depth)
        destination = check_destination(request.destination_ae_title, self.cfg.dicom.peers)
        series_description = check_series_description(request.series_description)
        model = self.cache.get(ref)
        condition, c = _condition(model, request)
        if model.channels != 1:
            raise RpcFailure(grpc.StatusCode.FAILED_PRECONDITION, f"synthetic radiographs are grayscale; {model.ref} makes {model.channels}-channel images")
        writer = self._writer()
        log.info("study_started", request_id=call.request_id, model=model.ref, count=len(seeds), psi=psi, bits=bits, destination=destination or None, peer=context.peer(), **condition)
        images = []
        for _index, _seed, pixels in self._images(model, seeds, psi, context, bits, c):
            images.append(pixels[0])
        if len(images) != len(seeds):
            raise RpcFailure(grpc.StatusCode.CANCELLED, "the call was cancelled")
        try:
            outcome = writer.write_study(
                np.stack(images), seeds, psi, model.version, destination=destination or None,
                burn_in_label=request.burn_in_label if request.HasField("burn_in_label") else None,
                series_description=series_description or None, condition=condition,
            )
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from None
        response = pb.GenerateStudyResponse(
            study_instance_uid=outcome.study_instance_uid, series_instance_uid=outcome.series_instance_uid,
            destination=outcome.destination or "", model=model.ref, truncation_psi=psi, request_id=call.request_id,
        )
        for inst in outcome.instances:
            response.instances.add(
                sop_instance_uid=inst.sop_instance_uid or "", seed=int(inst.seed),
                state=_INSTANCE_STATES.get(inst.status, pb.InstanceStatus.STATE_UNSPECIFIED), detail=inst.detail or "",
            )
        return response

    def _writer(self) -> StudyWriter:
        with self._lock:
            if self._study_writer is None:
                if self._study_writer_factory is None:
                    raise RpcFailure(grpc.StatusCode.UNIMPLEMENTED, "GenerateStudy needs the archive, which this server was started without")
                try:
                    self._study_writer = self._study_writer_factory()
                except ImportError:
                    raise RpcFailure(
                        grpc.StatusCode.UNIMPLEMENTED,
                        "GenerateStudy needs the synthetic study writer (service/synthetic/studies.py), which this installation lacks",
                    ) from None
            return self._study_writer


CONDITION_FIELDS = ("body_part", "view", "finding")


def _condition(model: LoadedModel, request: Any) -> tuple[dict[str, str], torch.Tensor | None]:
    """The request's condition checked against the model (INVALID_ARGUMENT naming the known values),
    and its condition vector (None for an unconditional model)."""
    given = {f: getattr(request, f) if request.HasField(f) else None for f in CONDITION_FIELDS}
    condition = check_condition(model.space, given, model.ref)
    if model.space is None:
        return {}, None
    return condition, torch.from_numpy(model.space.encode(condition))


def _request_id(given: str) -> tuple[str, InvalidRequest | None]:
    """The id to log and echo: the client's when it is acceptable, else a new one (and why not)."""
    if not given:
        return uuid.uuid4().hex[:16], None
    try:
        return check_request_id(given), None
    except InvalidRequest as exc:
        return uuid.uuid4().hex[:16], exc


def model_info(status: ModelStatus) -> pb.ModelInfo:
    """A registry version and its state as the API describes it."""
    mv, card, loaded = status.version, status.version.card, status.loaded
    info = pb.ModelInfo(
        name=mv.name, version=mv.version, ref=mv.ref, latest=status.latest, architecture=str(card.get("architecture", "")),
        state=_STATES.get(status.state, pb.MODEL_STATE_UNSPECIFIED), error=status.error,
        card_json=json.dumps({k: v for k, v in card.items() if k != "error"}, sort_keys=True),
    )
    for field in ("resolution", "channels", "z_dim"):
        try:
            setattr(info, field, int(card.get(field) or 0))
        except (TypeError, ValueError):
            pass
    if loaded is not None:
        info.resolution, info.channels, info.z_dim = loaded.resolution, loaded.channels, loaded.z_dim
        info.device, info.dtype = str(loaded.device), str(loaded.dtype).replace("torch.", "")
        info.batch_sizes.extend(loaded.batch_sizes)
    try:
        space = space_of_card(card)
    except ValueError:
        space = None  # a card whose conditions cannot be read fails to load and says so in `error`
    for name, values in space.fields if space is not None else ():
        info.conditions.add(name=name, values=list(values))
    return info
