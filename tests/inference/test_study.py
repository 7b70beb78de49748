"""GenerateStudy arguments over a real channel, its wiring to the synthetic-study writer and the store,
and the DICOM Secondary Capture encoding of Generate."""

from __future__ import annotations

import io
import math
from pathlib import Path

import grpc
import numpy as np
import pydicom
import pytest

from models.registry import Registry
from service.archive.store import Store
from service.home import Home
from service.inference.encode import decode_raw
from service.inference.server import InferenceServer, default_study_writer
from synthpacs.v1 import synthesizer_pb2 as pb
from synthpacs.v1 import synthesizer_pb2_grpc as pb_grpc
from tests.helpers import make_config

pytestmark = pytest.mark.integration


def _code(fn) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as info:
        fn()
    return info.value.code(), info.value.details()


def test_generate_study_bad_arguments(start_server, export) -> None:
    export("m")
    export("rgb", channels=3)
    srv = start_server(wait_for=("m",), **{"inference.max_count": 4, "dicom.peers": [{"ae_title": "PACS", "host": "127.0.0.1", "port": 4242}]})
    study = srv.stub.GenerateStudy
    invalid = [
        dict(model="m", count=0),
        dict(model="m", count=5),
        dict(model="m", seeds=[1, 2, 3, 4, 5]),
        dict(model="m", count=1, truncation_psi=-1.0),
        dict(model="m", count=1, truncation_psi=math.nan),
        dict(model="m", count=1, bit_depth=12),
        dict(model="m", count=1, destination_ae_title="NOWHERE"),
        dict(model="m", count=1, series_description="S" * 65),
        dict(model="", count=1),
    ]
    for kw in invalid:
        code, details = _code(lambda: study(pb.GenerateStudyRequest(**kw), timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (kw, code, details)
    assert "PACS" in _code(lambda: study(pb.GenerateStudyRequest(model="m", count=1, destination_ae_title="NOWHERE")))[1]
    assert _code(lambda: study(pb.GenerateStudyRequest(model="nope", count=1)))[0] == grpc.StatusCode.NOT_FOUND
    assert _code(lambda: study(pb.GenerateStudyRequest(model="rgb", count=1)))[0] == grpc.StatusCode.FAILED_PRECONDITION
    # This server was started without an archive: a valid request says so.
    code, details = _code(lambda: study(pb.GenerateStudyRequest(model="m", count=1)))
    assert code == grpc.StatusCode.UNIMPLEMENTED and "archive" in details


def test_generate_study_writes_the_study_into_the_store(home: Path, models_root: Path, export) -> None:
    export("m")
    cfg = make_config(home, **{"inference.preload": ["m"], "inference.reload_interval_s": 0})
    store = Store(cfg, Home.at(cfg.home_path))
    server = InferenceServer(cfg, registry=Registry([models_root]), study_writer=default_study_writer(cfg, lambda: store))
    server.start()
    channel = grpc.insecure_channel(server.address)
    try:
        stub = pb_grpc.SynthesizerStub(channel)
        resp = stub.GenerateStudy(pb.GenerateStudyRequest(model="m", seeds=[3, 4], bit_depth=16, truncation_psi=0.75,
                                                          series_description="hand AP", request_id="study-1"), timeout=60)
        assert resp.model == "m:v1" and resp.truncation_psi == 0.75 and resp.request_id == "study-1" and resp.destination == ""
        assert resp.study_instance_uid and resp.series_instance_uid
        assert [(i.seed, i.state) for i in resp.instances] == [(3, pb.InstanceStatus.STATE_STORED), (4, pb.InstanceStatus.STATE_STORED)]
        records = {r.sop_instance_uid: r for r in store.index.instances()}
        assert set(records) == {i.sop_instance_uid for i in resp.instances}
        # The stored pixels are the ones Generate gives for the same seeds.
        raw = {img.seed: img.data for img in stub.Generate(pb.GenerateRequest(model="m", seeds=[3, 4], truncation_psi=0.75, encoding=pb.ENCODING_RAW_UINT16))}
        for inst in resp.instances:
            ds = pydicom.dcmread(store.path_of(records[inst.sop_instance_uid]))
            assert ds.SeriesDescription.startswith("SYNTHETIC") and ds.SyntheticData == "YES"
            assert np.array_equal(ds.pixel_array, decode_raw(raw[inst.seed], 16, 16, 1, 16))
    finally:
        channel.close()
        server.stop(grace=0.5)
        store.index.close()


def test_generate_as_dicom_secondary_capture(start_server, export) -> None:
    export("m")
    srv = start_server(wait_for=("m",))
    raw = list(srv.stub.Generate(pb.GenerateRequest(model="m", seeds=[8, 9], encoding=pb.ENCODING_RAW_UINT16)))
    dicom = list(srv.stub.Generate(pb.GenerateRequest(model="m", seeds=[8, 9], encoding=pb.ENCODING_DICOM_SC_16)))
    series = set()
    for r, d in zip(raw, dicom):
        ds = pydicom.dcmread(io.BytesIO(d.data))
        assert d.sop_instance_uid == ds.SOPInstanceUID and d.encoding == pb.ENCODING_DICOM_SC_16
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
        assert ds.SyntheticData == "YES" and ds.ConversionType == "SYN" and ds.BitsAllocated == 16
        assert f"seed={r.seed}" in ds.ImageComments and "model=m" in ds.ImageComments
        assert np.array_equal(ds.pixel_array, decode_raw(r.data, 16, 16, 1, 16))
        series.add(ds.SeriesInstanceUID)
    assert len(series) == 1  # one request, one series
    (eight,) = srv.stub.Generate(pb.GenerateRequest(model="m", seeds=[8], encoding=pb.ENCODING_DICOM_SC_8))
    assert pydicom.dcmread(io.BytesIO(eight.data)).BitsAllocated == 8
