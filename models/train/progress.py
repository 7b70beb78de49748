"""Progress of a training run on a terminal or in a log: done/total, images/s and ETA.

On a terminal one line is redrawn in place; otherwise (nohup, a pod's log) a full line is printed at
most every ``interval`` seconds, so logs stay readable over a run of days.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Mapping

from models.progress import is_terminal, write_line


def format_duration(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):
        return "?"
    seconds = int(round(seconds))
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d{h:02d}:{m:02d}:{s:02d}" if d else f"{h}:{m:02d}:{s:02d}"


class Progress:
    """Reports ``done`` of ``total`` ``unit`` with the image rate and the time left."""

    def __init__(self, total: float, unit: str, stream: IO[str] | None = None, interval: float = 30.0, enabled: bool = True):
        self.total = float(total)
        self.unit = unit
        self.stream = stream if stream is not None else sys.stderr
        self.tty = is_terminal(self.stream)
        self.interval = 0.5 if self.tty else float(interval)
        self.enabled = enabled
        self._last = float("-inf")

    def update(self, done: float, images_per_s: float, eta_s: float, stats: Mapping[str, float] | None = None, force: bool = False) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        pct = 100.0 * done / self.total if self.total else 100.0
        parts = [
            f"[{pct:5.1f}%] {self.unit} {round(done, 1):g}/{self.total:g}",
            f"{images_per_s:.1f} img/s",
            f"ETA {format_duration(eta_s)}",
        ]
        if stats:
            parts.append(" ".join(f"{k} {v:.3g}" for k, v in stats.items()))
        write_line(self.stream, " | ".join(parts), tty=self.tty)

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()
