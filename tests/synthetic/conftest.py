"""Fixtures for the synthetic-study tests: a tiny real DCGAN in a registry, a store, a writer."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.archive.store import Store
from service.config import Config
from service.home import Home
from service.logs import configure
from tests.helpers import make_config


class _Stdout:
    """Whatever sys.stdout is when a line is written (pytest swaps it per test)."""

    def write(self, text: str) -> int:
        import sys

        return sys.stdout.write(text)

    def flush(self) -> None:
        import sys

        sys.stdout.flush()


@pytest.fixture(autouse=True)
def _live_log_stream():
    """A command run in-process (``service.cli.main``) points structlog at that test's captured stdout,
    closed once the test ends; before and after every test here, logs follow the live stdout again."""
    configure("info", "json", stream=_Stdout())
    yield
    configure("info", "json", stream=_Stdout())


def export_tiny_dcgan(models_dir: Path, name: str = "tiny-dcgan", dataset: dict | None = None, seed: int = 0):
    """A 64 px DCGAN with a few thousand weights, randomised so its images vary, exported to the registry."""
    import torch

    from models.dcgan import Generator
    from models.registry import Registry

    torch.manual_seed(seed)
    net = Generator(z_dim=16, resolution=64, channels=1, base_channels=8, max_channels=32)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    card = {"architecture": "dcgan", "dataset": dataset or {"name": "tiny-train", "version": 1}}
    return Registry.with_bundled(models_dir).export(net.eval(), card, name)


@pytest.fixture
def registry(config: Config):
    from models.registry import Registry

    return Registry.with_bundled(Home.at(config.home_path).models_dir)


@pytest.fixture
def tiny_model(config: Config):
    return export_tiny_dcgan(Home.at(config.home_path).models_dir)


@pytest.fixture
def store(config: Config):
    s = Store(config)
    yield s
    s.index.close()


def config_with_peers(home: Path, peers: list[tuple[str, str, int]], **overrides) -> Config:
    """A test configuration whose dicom.peers are (AE title, host, port) triples."""
    listed = [{"ae_title": ae, "host": host, "port": port} for ae, host, port in peers]
    return make_config(home, **{"dicom.peers": listed, **overrides})


class StoreSCP:
    """dcmtk storescp on a loopback port, writing what it receives into ``folder``."""

    def __init__(self, folder: Path, ae_title: str = "STORESCP", extra: tuple[str, ...] = (), port: int | None = None):
        import socket
        import subprocess
        import time

        from tests.helpers import free_port, require_tool

        self.folder, self.ae_title = folder, ae_title
        folder.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.log = open(folder.parent / f"storescp-{self.port}.log", "wb")
        self.process = subprocess.Popen(
            [require_tool("storescp", "dcmtk"), "-aet", ae_title, "-od", str(folder), *extra, str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"storescp exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("storescp did not listen within 15 s")

    def files(self) -> list[Path]:
        return sorted(p for p in self.folder.iterdir() if p.is_file())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except Exception:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


def wait_for(predicate, timeout: float, interval: float = 0.1):
    """Poll ``predicate`` until it returns something truthy or ``timeout`` passes; returns its last value."""
    import time

    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    return value


def write_synthetic_study(cfg: Config, store: Store, count: int = 3, bits: int = 8, size: int = 32, destination: str | None = None):
    """A synthetic study of ``count`` small images (random pixels, fake provenance) through the real writer."""
    import numpy as np

    from models.registry import ModelVersion
    from service.synthetic.studies import SyntheticStudyWriter

    rng = np.random.default_rng(count)
    images = rng.integers(0, 256, size=(count, size, size)).astype(np.uint8 if bits == 8 else np.uint16)
    model = ModelVersion("fixture-model", 1, Path("."), {"architecture": "dcgan"})
    return SyntheticStudyWriter(cfg, store).write_study(images, list(range(count)), 1.0, model, destination=destination)


class RunningService:
    """synthpacs as `synthpacs scp` runs it (SCP with Query/Retrieve, outbox sender), in this process."""

    def __init__(self, cfg: Config, outbox: bool = True):
        from service.runtime import Runtime

        self.cfg = cfg
        self.runtime = Runtime(cfg)
        self.scp = self.runtime.add_scp()
        self.sender = self.runtime.add_outbox() if outbox else None
        self.runtime.start()
        self.host, self.port = self.scp.address

    @property
    def store(self) -> Store:
        return self.runtime.store

    @property
    def ae_title(self) -> str:
        return self.cfg.dicom.ae_title

    def stop(self) -> None:
        self.runtime.stop()


CONDITIONS = {"body_part": ["HAND", "LEG"], "view": ["AP", "LATERAL"]}


def export_tiny_conditional_dcgan(home: Path, name: str = "tiny-cdcgan"):
    """A conditional DCGAN (body part and view) trained for two minibatches on labelled phantoms with the
    real runner, exported with its card (conditions and image counts) into the home's registry."""
    import numpy as np

    from models.datasets import write_dataset
    from models.registry import Registry
    from models.train.export import export_run
    from models.train.runner import TrainOptions, train
    from service.data.phantom import phantom_image

    h = Home.at(home)
    images = np.stack([phantom_image(64, 64, bits_stored=8, seed=i)[0] for i in range(16)])
    rows = [{"body_part": CONDITIONS["body_part"][i % 2], "view": CONDITIONS["view"][(i // 2) % 2]} for i in range(16)]
    write_dataset(h.datasets_dir, "phantoms-labelled", images, rows)
    opts = TrainOptions(arch="dcgan", dataset="phantoms-labelled", batch=8, epochs=1, grid_size=2, seed=3, run_id=f"{name}-run",
                        conditions=["body_part", "view"], hparams={"g_channels": 8, "d_channels": 4, "embed_dim": 4, "z_dim": 16})
    result = train(opts, h.datasets_dir, h.runs_dir)
    return export_run(result.run_dir, Registry.with_bundled(h.models_dir), name)
