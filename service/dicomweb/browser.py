"""Headless Chromium driven over the Chrome DevTools Protocol on a pipe, for the viewer check and demo.

``--remote-debugging-pipe`` makes Chromium read protocol commands from file descriptor 3 and write
answers and events to descriptor 4, each message JSON ended by a NUL byte: no debugging port is opened
and no websocket library is needed. Only a few commands are used (Target.attachToTarget,
Page.navigate, Runtime.evaluate, Page.captureScreenshot, Emulation.setDeviceMetricsOverride).

Chromium may open connections of its own (updates, safe browsing, fonts); callers run it inside a
network namespace that has only loopback (``unshare -n``, see :mod:`service.viewer_demo`), and
the switches below turn off what can be turned off. ``--no-sandbox`` because the check runs as root in
containers, where Chromium's own sandbox cannot start; the page it opens is this server's viewer only.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

SWITCHES = (
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--no-default-browser-check",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
    "--disable-default-apps", "--metrics-recording-only", "--mute-audio", "--hide-scrollbars",
    "--disable-features=Translate,MediaRouter,OptimizationHints", "--remote-debugging-pipe",
)


class BrowserError(RuntimeError):
    pass


def find_chromium() -> str | None:
    """The Chromium executable (Debian's package installs /usr/bin/chromium), or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless Chromium with one page; ``evaluate`` runs JavaScript in it, ``screenshot`` saves a PNG."""

    def __init__(self, executable: str, width: int = 1400, height: int = 900, timeout: float = 30):
        self.timeout = timeout
        self.width, self.height = width, height
        self._profile = tempfile.mkdtemp(prefix="synthpacs-chromium-")
        cmd_r, cmd_w = os.pipe()  # we write commands, Chromium reads them on fd 3
        out_r, out_w = os.pipe()  # Chromium writes on fd 4, we read
        # bash (dash takes no descriptor above 9) puts the pipe ends on descriptors 3 and 4 for Chromium, then becomes it.
        script = f'exec "$0" "$@" 3<&{cmd_r} 4>&{out_w} {cmd_r}<&- {out_w}>&-'
        self.log_path = Path(self._profile) / "chromium.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            ["bash", "-c", script, executable, *SWITCHES, f"--user-data-dir={self._profile}",
             f"--window-size={width},{height}", "about:blank"],
            pass_fds=(cmd_r, out_w), stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
        )
        os.close(cmd_r)
        os.close(out_w)
        self._writer = os.fdopen(cmd_w, "wb", buffering=0)
        self._reader = os.fdopen(out_r, "rb", buffering=0)
        self._next_id = 0
        self._answers: dict[int, dict] = {}
        self._cond = threading.Condition()
        self._closed = False
        self.console: list[str] = []
        threading.Thread(target=self._read, name="cdp-reader", daemon=True).start()
        self.session = self._attach()

    # -- the protocol ----------------------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = self._reader.read(1 << 16)
            if not chunk:
                break
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                with self._cond:
                    if "id" in message:
                        self._answers[message["id"]] = message
                    elif message.get("method") == "Runtime.consoleAPICalled":
                        args = message["params"].get("args", [])
                        self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in args)[:300])
                    elif message.get("method") == "Runtime.exceptionThrown":
                        details = message["params"]["exceptionDetails"]
                        self.console.append("exception: " + str(details.get("exception", {}).get("description", details.get("text")))[:300])
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float | None = None) -> dict:
        with self._cond:
            self._next_id += 1
            ident = self._next_id
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._writer.write(json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + (timeout or self.timeout)
        with self._cond:
            while ident not in self._answers:
                if self._closed:
                    raise BrowserError(f"Chromium exited while answering {method} (log: {self.log_path})")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise BrowserError(f"Chromium did not answer {method} within {timeout or self.timeout} s")
                self._cond.wait(left)
            answer = self._answers.pop(ident)
        if "error" in answer:
            raise BrowserError(f"{method}: {answer['error'].get('message')}")
        return answer.get("result", {})

    def _attach(self) -> str:
        deadline = time.monotonic() + self.timeout
        while True:
            pages = [t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page"]
            if pages:
                break
            if time.monotonic() > deadline:
                raise BrowserError("Chromium opened no page")
            time.sleep(0.1)
        session = self.send("Target.attachToTarget", {"targetId": pages[0]["targetId"], "flatten": True})["sessionId"]
        for method in ("Page.enable", "Runtime.enable"):
            self.send(method, session=session)
        self.send("Emulation.setDeviceMetricsOverride",
                  {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        return session

    # -- what a test or demo does ------------------------------------------------------------------------------

    def navigate(self, url: str) -> None:
        answer = self.send("Page.navigate", {"url": url}, session=self.session)
        if answer.get("errorText"):
            raise BrowserError(f"navigation failed: {answer['errorText']}")

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (JSON-serialisable values; promises awaited)."""
        answer = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True},
                           session=self.session)
        if "exceptionDetails" in answer:
            raise BrowserError(f"page script failed: {answer['exceptionDetails'].get('text')}")
        return answer["result"].get("value")

    def wait_for(self, expression: str, timeout: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy (at most ``timeout`` s); its value."""
        deadline = time.monotonic() + timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                tail = "; ".join(self.console[-5:])
                raise BrowserError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" (console: {tail})" if tail else ""))
            time.sleep(0.25)

    def screenshot(self, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=self.session)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for stream in (self._writer, self._reader, self._log):
            try:
                stream.close()
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self) -> "Chromium":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
