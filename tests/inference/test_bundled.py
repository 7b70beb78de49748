"""The bundled demo generator (models/bundled/demo-dcgan), served with the default configuration."""

from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from models.registry import BUNDLED_ROOT, Registry
from service.inference.client import SynthesizerClient
from service.inference.server import InferenceServer
from tests.helpers import make_config

pytestmark = pytest.mark.integration


@pytest.mark.skipif(not (BUNDLED_ROOT / "demo-dcgan").is_dir(), reason="the bundled demo model models/bundled/demo-dcgan is not committed yet")
def test_default_preload_serves_the_bundled_demo_model(home: Path) -> None:
    cfg = make_config(home, **{"inference.reload_interval_s": 0})
    assert cfg.inference.preload == ("demo-dcgan",)
    server = InferenceServer(cfg, registry=Registry.with_bundled(home / "models"))
    server.start()
    try:
        with SynthesizerClient(server.address, timeout=60) as client:
            deadline = time.monotonic() + 120
            while client.health("synthpacs.v1.Synthesizer/demo-dcgan") != "SERVING":
                assert time.monotonic() < deadline, client.get_model("demo-dcgan").error
                time.sleep(0.2)
            info = client.get_model("demo-dcgan")
            images = list(client.generate("demo-dcgan", count=2, first_seed=0))
            again = list(client.generate("demo-dcgan", seeds=[1]))
        assert [i.seed for i in images] == [0, 1] and images[1].data == again[0].data
        pixels = np.array(Image.open(io.BytesIO(images[0].data)))
        assert pixels.shape == (info.resolution, info.resolution) and pixels.dtype == np.uint8
        assert pixels.std() > 0  # a trained generator makes an image, not a flat field
    finally:
        server.stop(grace=1.0)


@pytest.mark.skipif(not (BUNDLED_ROOT / "demo-cdcgan").is_dir(), reason="the bundled conditional model models/bundled/demo-cdcgan is not committed")
def test_the_bundled_conditional_model_is_served_on_demand_per_body_part(home: Path) -> None:
    """Not preloaded: the first request loads it. Each body part gives its own image for the same seed, and a
    body part it was not trained on is INVALID_ARGUMENT naming the ones it knows."""
    import grpc

    cfg = make_config(home, **{"inference.reload_interval_s": 0, "inference.preload": ()})
    server = InferenceServer(cfg, registry=Registry.with_bundled(home / "models"))
    server.start()
    try:
        with SynthesizerClient(server.address, timeout=120) as client:
            by_part = {part: list(client.generate("demo-cdcgan", seeds=[7], body_part=part))[0].data
                       for part in ("HAND", "HIP", "LEG", "SHOULDER")}
            with pytest.raises(grpc.RpcError) as refused:
                list(client.generate("demo-cdcgan", seeds=[7], body_part="SKULL"))
        assert len(set(by_part.values())) == 4
        for data in by_part.values():
            pixels = np.array(Image.open(io.BytesIO(data)))
            assert pixels.shape == (64, 64) and pixels.std() > 0
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "HAND" in refused.value.details() and "SHOULDER" in refused.value.details()
    finally:
        server.stop(grace=1.0)
