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


@pytest.mark.skipif(not (BUNDLED_ROOT / "demo-cdcgan" / "v2").is_dir(), reason="the bundled conditional model models/bundled/demo-cdcgan/v2 is not committed")
def test_the_bundled_conditional_model_is_served_on_demand_per_body_part_view_and_finding(home: Path) -> None:
    """Not preloaded: the first request loads it. v2 takes body part, view and finding (left out: NONE), each
    condition gives its own image for the same seed, an unknown body part or a missing view is
    INVALID_ARGUMENT naming what it knows; v1 (body part only) still answers, for studies made from it."""
    import grpc

    cfg = make_config(home, **{"inference.reload_interval_s": 0, "inference.preload": ()})
    server = InferenceServer(cfg, registry=Registry.with_bundled(home / "models"))
    server.start()
    try:
        with SynthesizerClient(server.address, timeout=120) as client:
            conditions = [("HAND", "PA"), ("HAND", "LATERAL"), ("HIP", "AP"), ("LEG", "AP"), ("LEG", "LATERAL"), ("SHOULDER", "AP")]
            made = {c: list(client.generate("demo-cdcgan", seeds=[7], body_part=c[0], view=c[1]))[0] for c in conditions}
            none = list(client.generate("demo-cdcgan", seeds=[7], body_part="hand", view="pa", finding="none"))[0]
            fracture = list(client.generate("demo-cdcgan", seeds=[7], body_part="HAND", view="PA", finding="FRACTURE"))[0]
            v1 = list(client.generate("demo-cdcgan:v1", seeds=[7], body_part="HAND"))[0]
            refused = {}
            for name, kw in {"SKULL": dict(body_part="SKULL", view="AP"), "no view": dict(body_part="HAND")}.items():
                with pytest.raises(grpc.RpcError) as err:
                    list(client.generate("demo-cdcgan", seeds=[7], **kw))
                refused[name] = err.value
        hand = made[("HAND", "PA")]
        assert (hand.model, hand.body_part, hand.view, hand.finding) == ("demo-cdcgan:v2", "HAND", "PA", "NONE")
        assert hand.data == none.data != fracture.data and fracture.finding == "FRACTURE"
        assert len({m.data for m in made.values()}) == len(conditions)
        assert v1.model == "demo-cdcgan:v1" and v1.data not in {m.data for m in made.values()}
        for image in [*made.values(), v1]:
            pixels = np.array(Image.open(io.BytesIO(image.data)))
            assert pixels.shape == (64, 64) and pixels.std() > 0
        assert all(e.code() == grpc.StatusCode.INVALID_ARGUMENT for e in refused.values())
        assert "HAND" in refused["SKULL"].details() and "SHOULDER" in refused["SKULL"].details()
        assert "needs a view" in refused["no view"].details() and "PA" in refused["no view"].details()
    finally:
        server.stop(grace=1.0)
