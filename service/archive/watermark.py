"""The store's free-space watermark: refuse new instances before the disk fills, recover when space returns.

A full disk turns every write into an error halfway through a file and can leave the index unable to
checkpoint; refusing early is cleaner. Below the watermark a C-STORE is answered 0xA700 "Refused: Out of
Resources" (PS3.4 Annex B.2.3), which a sending PACS retries later, and nothing is written. The
threshold is the larger of ``store.min_free_bytes`` and ``store.min_free_percent`` of the file system.

Free space is read with one ``statvfs`` at most every :data:`SAMPLE_INTERVAL_S`, however many instances
arrive, so a busy association costs no extra system calls per fragment.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from service.config import Config
from service.logs import get_logger
from service.metrics import BELOW_WATERMARK, FREE_BYTES, WATERMARK_BYTES

log = get_logger("store")

SAMPLE_INTERVAL_S = 0.5


@dataclass(frozen=True)
class FreeSpace:
    free_bytes: int
    total_bytes: int
    threshold_bytes: int

    @property
    def below(self) -> bool:
        return self.free_bytes < self.threshold_bytes

    @property
    def free_percent(self) -> float:
        return 100.0 * self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def free_space(path: Path, min_free_bytes: int, min_free_percent: float) -> FreeSpace:
    """One statvfs of the file system holding ``path``, with the watermark it implies."""
    st = os.statvfs(path)
    total = st.f_blocks * st.f_frsize
    free = st.f_bavail * st.f_frsize
    return FreeSpace(free, total, max(int(min_free_bytes), int(total * min_free_percent / 100.0)))


class Watermark:
    """Answers "may another instance be written?" from a cached free-space sample."""

    def __init__(self, path: Path, min_free_bytes: int, min_free_percent: float, interval_s: float = SAMPLE_INTERVAL_S):
        self.path = path
        self.min_free_bytes, self.min_free_percent = min_free_bytes, min_free_percent
        self.interval_s = interval_s
        self._lock = threading.Lock()
        self._sampled_at = -float("inf")
        self._last: FreeSpace | None = None
        self._below = False

    @classmethod
    def from_config(cls, cfg: Config, path: Path) -> "Watermark":
        return cls(path, cfg.store.min_free_bytes, cfg.store.min_free_percent)

    def sample(self) -> FreeSpace:
        """The free space now, read at most once per interval (whichever thread asks)."""
        with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._sampled_at >= self.interval_s:
                try:
                    self._last = free_space(self.path, self.min_free_bytes, self.min_free_percent)
                except OSError as exc:  # the file system is gone: every write would fail anyway
                    log.error("store_free_space_unknown", error=exc.strerror or type(exc).__name__)
                    self._last = FreeSpace(0, 0, 1)
                self._sampled_at = now
                self._record(self._last)
            return self._last

    def room(self) -> FreeSpace | None:
        """None when there is room; otherwise the sample that says why not."""
        space = self.sample()
        return space if space.below else None

    def _record(self, space: FreeSpace) -> None:
        FREE_BYTES.set(space.free_bytes)
        WATERMARK_BYTES.set(space.threshold_bytes)
        BELOW_WATERMARK.set(1 if space.below else 0)
        if space.below and not self._below:
            log.warning("store_low_disk", free_bytes=space.free_bytes, min_free_bytes=space.threshold_bytes, path=str(self.path),
                        action="new instances are refused (0xA700) until space is freed")
        elif self._below and not space.below:
            log.info("store_disk_recovered", free_bytes=space.free_bytes, min_free_bytes=space.threshold_bytes)
        self._below = space.below
