"""Starting and stopping the long-running components in one process.

``synthpacs serve`` runs everything (DICOM SCP, gRPC inference, outbox sender, /metrics);
``synthpacs scp`` and ``synthpacs inference`` run one part. Each component is an object with
``start()`` and ``stop()``; they stop in the reverse order they started.
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Protocol

from service import metrics
from service.archive.writer_lock import WriterLock
from service.config import Config
from service.home import Home
from service.logs import get_logger

log = get_logger("runtime")


class Component(Protocol):
    def start(self) -> Any: ...

    def stop(self) -> None: ...


class Runtime:
    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.home = Home.at(cfg.home_path)
        self._host_lock: WriterLock | None = None
        self.components: list[tuple[str, Component]] = []
        self._stopped = threading.Event()
        self._store = None
        self.outbox = None

    @property
    def store(self):
        """The process's one Store (and index), made on first use."""
        if self._store is None:
            from service.archive.store import Store

            self._store = Store(self.cfg, self.home)
        return self._store

    def add(self, name: str, component: Component) -> Component:
        self.components.append((name, component))
        return component

    def add_scp(self) -> Component:
        """Verification, Storage and Query/Retrieve (C-FIND/C-GET/C-MOVE) on the one AE."""
        from service.dicom.qr import QueryRetrieveSCP
        from service.dicom.scp import StorageSCP

        qr = QueryRetrieveSCP(self.cfg, self.store)
        scp = StorageSCP(self.cfg, self.store, extra_handlers=qr.handlers(), extra_contexts=qr.contexts())
        qr.accept_get_roles(scp.contexts)
        return self.add("dicom", scp)

    def add_outbox(self) -> Component:
        """The outbox sender (service/synthetic/outbox.py); its queue is ``self.outbox`` for GenerateStudy."""
        from service.synthetic.outbox import OutboxSender

        sender = OutboxSender(self.cfg, self.store)
        self.outbox = sender.outbox
        return self.add("outbox", sender)

    def add_grpc(self) -> Component:
        """The gRPC inference server; GenerateStudy writes into this process's store (and outbox, when
        one is attached as ``self.outbox``)."""
        from service.inference.server import InferenceServer, default_study_writer

        outbox = lambda: getattr(self, "outbox", None)  # noqa: E731
        return self.add("grpc", InferenceServer(self.cfg, study_writer=default_study_writer(self.cfg, lambda: self.store, outbox)))

    def add_dicomweb(self) -> Component:
        """The DICOMweb service (QIDO-RS, WADO-RS, STOW-RS) over this process's store."""
        from service.dicomweb.server import DicomwebServer

        return self.add("dicomweb", DicomwebServer(self.cfg, self.store))

    def start(self) -> None:
        if self.components and not self.cfg.store.index_url.strip():
            # Every component may write the index (C-STORE, STOW-RS, outbox rows, GenerateStudy, which opens
            # the store only at its first call): a second host is refused now, before anything listens.
            # A PostgreSQL index (store.index_url) is meant for several hosts: no lock.
            self._host_lock = WriterLock.acquire(self.home.store_dir)
        if self.cfg.metrics.enabled:
            bind, port = metrics.serve_metrics(self.cfg.metrics.bind, self.cfg.metrics.port)
            log.info("metrics_listening", bind=bind, port=port, path="/metrics")
        started: list[tuple[str, Component]] = []
        try:
            for name, component in self.components:
                component.start()
                started.append((name, component))
        except BaseException:
            for _name, component in reversed(started):
                component.stop()
            if self._host_lock is not None:
                self._host_lock.release()
            raise
        names = [n for n, _ in self.components] + (["metrics"] if self.cfg.metrics.enabled else [])
        log.info("started", home=str(self.home.root), components=names)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        for name, component in reversed(self.components):
            try:
                component.stop()
            except Exception:
                log.exception("stop_failed", part=name)
        if self._store is not None:
            self._store.close()  # checkpoints the index first (store.py: the durable mark)
        if self._host_lock is not None:
            self._host_lock.release()
        log.info("stopped")

    def run_until_signalled(self) -> None:
        """Block until SIGINT or SIGTERM, then stop everything."""
        done = threading.Event()

        def _handler(signum: int, _frame: Any) -> None:
            log.info("signal_received", signal=signal.Signals(signum).name)
            done.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, _handler)
        self.start()
        try:
            while not done.wait(0.5):
                pass
        finally:
            self.stop()
