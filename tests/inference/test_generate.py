"""Generate and the model RPCs over a real gRPC channel: encodings, seeds, reproducibility across
batches with concurrent clients, and every bad input answered with its status code."""

from __future__ import annotations

import io
import math
import threading
import time

import grpc
import numpy as np
import pytest
from PIL import Image

from service.inference.encode import decode_raw
from synthpacs.v1 import synthesizer_pb2 as pb
from tests.inference.nets import Gate

pytestmark = pytest.mark.integration


def _gen(stub, timeout=60, **kw) -> list[pb.GeneratedImage]:
    return list(stub.Generate(pb.GenerateRequest(**kw), timeout=timeout))


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_list_and_get_models(start_server, export) -> None:
    export("alpha")
    export("alpha", seed=1)
    export("beta", channels=3)
    srv = start_server(wait_for=("alpha",))
    models = srv.stub.ListModels(pb.ListModelsRequest()).models
    assert [(m.ref, m.latest) for m in models] == [("alpha:v2", True), ("beta:v1", True)]
    alpha = models[0]
    assert alpha.state == pb.MODEL_STATE_READY and alpha.device == "cpu" and alpha.dtype == "float32"
    assert alpha.resolution == 16 and alpha.channels == 1 and alpha.z_dim == 64 and list(alpha.batch_sizes)
    assert '"dataset"' in alpha.card_json
    assert models[1].state == pb.MODEL_STATE_AVAILABLE and models[1].channels == 3
    every = srv.stub.ListModels(pb.ListModelsRequest(all_versions=True)).models
    assert [m.ref for m in every] == ["alpha:v1", "alpha:v2", "beta:v1"]
    assert [m.ref for m in srv.stub.ListModels(pb.ListModelsRequest(name="beta")).models] == ["beta:v1"]
    assert srv.stub.GetModel(pb.GetModelRequest(model="alpha:1")).ref == "alpha:v1"
    assert srv.stub.GetModel(pb.GetModelRequest(model="alpha")).version == 2
    assert _code(lambda: srv.stub.GetModel(pb.GetModelRequest(model="gamma")))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: srv.stub.GetModel(pb.GetModelRequest(model="alpha:v9")))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: srv.stub.GetModel(pb.GetModelRequest(model="")))[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(lambda: srv.stub.ListModels(pb.ListModelsRequest(name="no/such")))[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_encodings_carry_the_same_pixels(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",))
    got = {}
    for enc in (pb.ENCODING_PNG_8, pb.ENCODING_PNG_16, pb.ENCODING_RAW_UINT8, pb.ENCODING_RAW_UINT16):
        (img,) = _gen(srv.stub, model="m", seeds=[42], encoding=enc, request_id="enc-test")
        assert (img.seed, img.index, img.width, img.height, img.channels) == (42, 0, 16, 16, 1)
        assert img.encoding == enc and img.model == "m:v1" and img.request_id == "enc-test" and img.truncation_psi == 1.0
        got[enc] = img.data
    png8 = np.array(Image.open(io.BytesIO(got[pb.ENCODING_PNG_8])))
    png16 = np.array(Image.open(io.BytesIO(got[pb.ENCODING_PNG_16])))
    raw8 = decode_raw(got[pb.ENCODING_RAW_UINT8], 16, 16, 1, 8)
    raw16 = decode_raw(got[pb.ENCODING_RAW_UINT16], 16, 16, 1, 16)
    assert png8.dtype == np.uint8 and np.array_equal(png8, raw8)
    assert png16.dtype == np.uint16 and np.array_equal(png16, raw16)
    assert len(got[pb.ENCODING_RAW_UINT16]) == 16 * 16 * 2
    assert np.abs(raw16.astype(int) / 257 - raw8.astype(int)).max() <= 1  # the same image at two depths
    (default,) = _gen(srv.stub, model="m", seeds=[42])
    assert default.encoding == pb.ENCODING_PNG_8 and default.data == got[pb.ENCODING_PNG_8]


def test_colour_model(start_server, export) -> None:
    export("rgb", channels=3)
    srv = start_server(wait_for=("rgb",))
    (img,) = _gen(srv.stub, model="rgb", count=1, first_seed=1, encoding=pb.ENCODING_PNG_8)
    assert np.array(Image.open(io.BytesIO(img.data))).shape == (16, 16, 3)
    (raw,) = _gen(srv.stub, model="rgb", count=1, first_seed=1, encoding=pb.ENCODING_RAW_UINT16)
    assert decode_raw(raw.data, 16, 16, 3, 16).shape == (16, 16, 3)
    code, details = _code(lambda: _gen(srv.stub, model="rgb", count=1, encoding=pb.ENCODING_PNG_16))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "RAW_UINT16" in details


def test_seeds(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",))
    by_list = _gen(srv.stub, model="m", seeds=[9, 3, 7], encoding=pb.ENCODING_RAW_UINT16)
    assert [(i.index, i.seed) for i in by_list] == [(0, 9), (1, 3), (2, 7)]
    by_first = _gen(srv.stub, model="m", count=3, first_seed=7, encoding=pb.ENCODING_RAW_UINT16)
    assert [i.seed for i in by_first] == [7, 8, 9]
    assert by_first[0].data == by_list[2].data and by_first[2].data == by_list[0].data
    drawn = _gen(srv.stub, model="m", count=2, encoding=pb.ENCODING_RAW_UINT16)
    again = _gen(srv.stub, model="m", seeds=[i.seed for i in drawn], encoding=pb.ENCODING_RAW_UINT16)
    assert [i.data for i in again] == [i.data for i in drawn]  # server-drawn seeds are reported and reusable
    (top,) = _gen(srv.stub, model="m", seeds=[2**32 - 1])
    assert top.seed == 2**32 - 1


def test_truncation(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",))
    full = _gen(srv.stub, model="m", seeds=[5], encoding=pb.ENCODING_RAW_UINT16)[0]
    one = _gen(srv.stub, model="m", seeds=[5], truncation_psi=1.0, encoding=pb.ENCODING_RAW_UINT16)[0]
    half = _gen(srv.stub, model="m", seeds=[5], truncation_psi=0.5, encoding=pb.ENCODING_RAW_UINT16)[0]
    mean_a = _gen(srv.stub, model="m", seeds=[5], truncation_psi=0.0, encoding=pb.ENCODING_RAW_UINT16)[0]
    mean_b = _gen(srv.stub, model="m", seeds=[6], truncation_psi=0.0, encoding=pb.ENCODING_RAW_UINT16)[0]
    assert full.data == one.data and half.data != full.data and half.truncation_psi == 0.5
    assert mean_a.data == mean_b.data  # psi 0: every seed gives the one mean image


def test_bad_requests(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",), **{"inference.max_count": 5})
    invalid = [
        dict(model="m", count=0),
        dict(model="m", count=6),
        dict(model="m", seeds=list(range(6))),
        dict(model="m", seeds=[1, 2], count=3),
        dict(model="m", seeds=[1], first_seed=1),
        dict(model="m", count=2, first_seed=2**32 - 1),
        dict(model="m", count=1, truncation_psi=-0.1),
        dict(model="m", count=1, truncation_psi=math.nan),
        dict(model="m", count=1, truncation_psi=math.inf),
        dict(model="m", count=1, truncation_psi=2.5),
        dict(model="m", count=1, encoding=99),
        dict(model="", count=1),
        dict(model="m:latest", count=1),
        dict(model="m", count=1, request_id="x" * 200),
    ]
    for kw in invalid:
        code, details = _code(lambda: _gen(srv.stub, **kw))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (kw, code, details)
        assert details
    code, details = _code(lambda: _gen(srv.stub, model="m", count=6))
    assert "limit of 5" in details
    code, details = _code(lambda: _gen(srv.stub, model="m", count=1, truncation_psi=math.nan))
    assert "truncation_psi" in details
    for kw in (dict(model="nope", count=1), dict(model="m:v3", count=1)):
        assert _code(lambda: _gen(srv.stub, **kw))[0] == grpc.StatusCode.NOT_FOUND
    # The server is still fine.
    assert len(_gen(srv.stub, model="m", count=5)) == 5


def test_corrupt_model_is_not_ready_and_the_others_are_served(start_server, export) -> None:
    export("good")
    bad = export("bad")
    weights = bad.path / "generator.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    srv = start_server(**{"inference.preload": ["bad", "good"]})
    info = _wait_state(srv, "bad", pb.MODEL_STATE_FAILED)
    assert str(weights) in info.error
    code, details = _code(lambda: _gen(srv.stub, model="bad", count=1))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and str(weights) in details
    _wait_state(srv, "good", pb.MODEL_STATE_READY)
    assert len(_gen(srv.stub, model="good", count=2)) == 2


def test_a_failing_forward_is_an_internal_error(start_server, export) -> None:
    export("flaky", kind="broken")
    srv = start_server(wait_for=("flaky",))
    code, details = _code(lambda: _gen(srv.stub, model="flaky", count=2, truncation_psi=0.25, request_id="rq-1"))
    assert code == grpc.StatusCode.INTERNAL and "rq-1" in details
    assert len(_gen(srv.stub, model="flaky", count=2)) == 2


def test_same_seed_same_pixels_whichever_batch(start_server, export) -> None:
    """Reference images made one request at a time, then the same seeds requested by concurrent clients
    while the worker is held, so they are merged into shared batches at other sizes and positions."""
    export("m", kind="gated")
    srv = start_server(wait_for=("m",), **{"inference.max_batch": 8, "inference.max_queue_delay_ms": 50})
    seeds = [11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]
    reference = {s: _gen(srv.stub, model="m", seeds=[s], encoding=pb.ENCODING_RAW_UINT16)[0].data for s in seeds}
    single_sizes = dict(srv.server.batcher.stats.sizes)
    assert set(single_sizes) == {1}

    Gate.reset(open_=False)
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def client(i: int, wanted: list[int]) -> None:
        try:
            results[i] = _gen(srv.stub, model="m", seeds=wanted, encoding=pb.ENCODING_RAW_UINT16)
        except BaseException as exc:  # reported below
            errors.append(exc)

    blocker = threading.Thread(target=client, args=(0, [seeds[0]]))
    blocker.start()
    assert Gate.entered.wait(30)
    asks = {1: seeds[1:4], 2: seeds[4:5], 3: seeds[5:9][::-1], 4: seeds[9:], 5: [seeds[3], seeds[0]]}
    threads = [threading.Thread(target=client, args=(i, wanted)) for i, wanted in asks.items()]
    for t in threads:
        t.start()
    expected_waiting = sum(len(w) for w in asks.values())
    deadline = time.monotonic() + 30
    while srv.server.batcher.waiting() < expected_waiting and time.monotonic() < deadline:
        time.sleep(0.01)
    assert srv.server.batcher.waiting() == expected_waiting
    Gate.opened.set()
    for t in [blocker, *threads]:
        t.join(60)
    assert not errors, errors
    for i, wanted in {0: [seeds[0]], **asks}.items():
        assert [img.seed for img in results[i]] == wanted
        for img in results[i]:
            assert img.data == reference[img.seed], f"seed {img.seed} changed when batched (client {i})"
    merged = {size for size in srv.server.batcher.stats.sizes if size > 1}
    assert merged, f"no batch merged several requests: {srv.server.batcher.stats.sizes}"


def _wait_state(srv, ref: str, state: int, timeout: float = 60) -> pb.ModelInfo:
    deadline = time.monotonic() + timeout
    while True:
        info = srv.stub.GetModel(pb.GetModelRequest(model=ref))
        if info.state == state or time.monotonic() > deadline:
            assert info.state == state, f"{ref} is {pb.ModelState.Name(info.state)}: {info.error}"
            return info
        time.sleep(0.05)
