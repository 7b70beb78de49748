"""Progress of long work on stderr: count, percentage, rate and ETA.

On a terminal the line is rewritten in place; otherwise (a log file, CI) one line is written every
``interval`` seconds, so a 100k-image build leaves a readable trail rather than a megabyte of updates.
Structured log lines go to stdout as usual; this is the human-facing view.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from models.progress import is_terminal, write_line


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:d}:{s:02d}"


class Progress:
    def __init__(self, total: int, label: str, unit: str = "img", stream: TextIO | None = None, interval: float | None = None, enabled: bool = True):
        self.total = max(0, int(total))
        self.label = label
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream)
        self.interval = interval if interval is not None else (0.2 if self.tty else 5.0)
        self.enabled = enabled
        self.done = 0
        self.started = time.monotonic()
        self._last = 0.0
        self.extra = ""

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        elapsed = self.elapsed
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        rate = self.rate
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        eta = _duration((self.total - self.done) / rate) if rate > 0 and self.total else "?"
        extra = f", {self.extra}" if self.extra else ""
        return f"{self.label}: {self.done}/{self.total}{pct}, {rate:.1f} {self.unit}/s, ETA {eta}{extra}"

    def update(self, n: int = 1, extra: str | None = None) -> None:
        self.done += n
        if extra is not None:
            self.extra = extra
        now = time.monotonic()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._write(self.line())

    def close(self) -> str:
        """Write the final line (always) and return it."""
        rate = self.rate
        extra = f", {self.extra}" if self.extra else ""
        final = f"{self.label}: {self.done}/{self.total} in {_duration(self.elapsed)}, {rate:.1f} {self.unit}/s{extra}"
        if self.enabled:
            self._write(final, end=True)
        return final

    def _write(self, text: str, end: bool = False) -> None:
        write_line(self.stream, text, end, self.tty)
