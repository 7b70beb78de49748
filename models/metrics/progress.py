"""Progress of long metric work (feature extraction, generation): count, rate and ETA.

A :class:`Progress` is handed a callback that receives one line of text; the CLI prints it to stderr,
library users may pass ``None`` for silence. Lines are emitted at most every ``every_s`` seconds and
once at the end, so a 5000-image evaluation prints a few dozen lines, not thousands.
"""

from __future__ import annotations

import time
from typing import Callable

Reporter = Callable[[str], None]


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Progress:
    def __init__(self, label: str, total: int, report: Reporter | None, every_s: float = 2.0, unit: str = "images"):
        self.label = label
        self.unit = unit
        self.total = int(total)
        self.report = report
        self.every_s = every_s
        self.done = 0
        self.started = time.perf_counter()
        self._last = self.started

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int) -> None:
        self.done += int(n)
        now = time.perf_counter()
        if self.report is None or (now - self._last < self.every_s and self.done < self.total):
            return
        self._last = now
        rate = self.rate
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        tail = f"ETA {_duration(eta)}" if self.done < self.total else f"done in {_duration(now - self.started)}"
        self.report(f"{self.label}: {self.done}/{self.total} ({rate:.1f} {self.unit}/s, {tail})")
