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
