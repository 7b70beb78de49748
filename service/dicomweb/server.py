"""The DICOMweb component: uvicorn serving :func:`service.dicomweb.app.create_app` in its own thread.

``start()`` checks the binding rules (:func:`service.dicomweb.security.check_binding`), binds the socket
itself (so a busy port fails at once, with the address, and port 0 picks a free one), and returns once
uvicorn is accepting; ``stop()`` lets requests in flight finish, then closes. TLS comes from
``dicomweb.tls_cert``/``tls_key``. uvicorn's access log is off: request lines carry UIDs.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import uvicorn

from service.config import Config, ConfigError
from service.dicomweb.app import create_app
from service.dicomweb.security import check_binding
from service.logs import get_logger

log = get_logger("dicomweb")


class DicomwebServer:
    def __init__(self, cfg: Config, store: Any):
        self.cfg = cfg
        self.store = store
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.address: tuple[str, int] | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.cfg.dicomweb.tls_cert else "http"

    @property
    def url(self) -> str:
        assert self.address is not None, "not started"
        host, port = self.address
        host = f"[{host}]" if ":" in host else host
        return f"{self.scheme}://{host}:{port}{self.cfg.dicomweb.root.rstrip('/')}"

    def start(self) -> "DicomwebServer":
        web = self.cfg.dicomweb
        check_binding(self.cfg)
        family = socket.AF_INET6 if ":" in web.bind else socket.AF_INET
        # proto IPPROTO_TCP, not 0: asyncio turns Nagle's algorithm off (TCP_NODELAY) only on sockets that say
        # they are TCP, and accepted sockets inherit the listener's proto. With 0, every response after the
        # first on a kept-alive connection waited for the client's delayed ACK (~40 ms: headers and body
        # are two writes).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((web.bind, web.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"dicomweb cannot listen on {web.bind}:{web.port}: {exc.strerror}") from None
        sock.listen(128)
        sock.setblocking(False)
        self._socket = sock
        self.address = sock.getsockname()[:2]
        config = uvicorn.Config(
            create_app(self.cfg, self.store), log_level="warning", access_log=False, lifespan="off",
            ssl_certfile=web.tls_cert or None, ssl_keyfile=web.tls_key or None, server_header=False,
            timeout_keep_alive=30,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._serve, name="dicomweb", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive():
                raise ConfigError("dicomweb did not start (see the log above; a TLS certificate or key that cannot be read?)")
            if time.monotonic() > deadline:
                raise ConfigError("dicomweb did not start within 30 s")
            time.sleep(0.01)
        log.info("dicomweb_listening", bind=self.address[0], port=self.address[1], tls=bool(web.tls_cert), root=web.root)
        return self

    def _serve(self) -> None:
        assert self._server is not None and self._socket is not None
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
        if self._socket is not None:
            self._socket.close()
        self._server = None
        log.info("dicomweb_stopped")
