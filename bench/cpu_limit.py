"""A CPU limit on one process, as a Kubernetes container's ``resources.limits.cpu`` sets one: the CFS quota
of a cgroup of its own (cgroup v1 ``cpu.cfs_quota_us``, or v2 ``cpu.max``).

The scale-out benchmark uses it to give each SCP process the same CPU, so that one process against two
measures what a replica added to a deployment brings (is anything shared, the index or the store,
serialising them?) rather than how many cores the benchmark machine has left over for a second process.

Creating a cgroup needs the right to write under ``/sys/fs/cgroup``; where that is missing,
:func:`why_not_available` says so and the benchmark skips the limited setups, naming the reason.
"""

from __future__ import annotations

import os
from pathlib import Path

PERIOD_US = 100_000  # the kernel's default CFS period, the one Kubernetes uses
V1_ROOT = Path("/sys/fs/cgroup/cpu")
V2_ROOT = Path("/sys/fs/cgroup")


def _root() -> tuple[Path, str] | None:
    if (V1_ROOT / "cpu.cfs_quota_us").exists():
        return V1_ROOT, "v1"
    controllers = V2_ROOT / "cgroup.subtree_control"
    if controllers.exists() and "cpu" in controllers.read_text().split():
        return V2_ROOT, "v2"
    return None


def why_not_available() -> str:
    """Empty when a process can be given a CPU limit here, else why not."""
    found = _root()
    if found is None:
        return "no cgroup CPU controller is mounted for this process (cgroup v1 cpu, or v2 with cpu delegated)"
    root, _ = found
    probe = root / f"synthpacs-bench-probe-{os.getpid()}"
    try:
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        return f"cannot create a cgroup under {root} ({exc.strerror}); run the benchmark as root or with a delegated cgroup"
    return ""


class CpuLimit:
    """A cgroup with a CPU quota of ``cores`` (for example 0.6), holding the processes :meth:`add` is given.

    Remove it with :meth:`remove` once they have ended (a cgroup with live processes cannot be removed).
    """

    def __init__(self, name: str, cores: float):
        found = _root()
        if found is None:
            raise RuntimeError(why_not_available())
        root, self.version = found
        self.path = root / f"synthpacs-bench-{name}-{os.getpid()}"
        self.path.mkdir()
        quota = max(1000, int(cores * PERIOD_US))
        if self.version == "v1":
            (self.path / "cpu.cfs_period_us").write_text(str(PERIOD_US))
            (self.path / "cpu.cfs_quota_us").write_text(str(quota))
        else:
            (self.path / "cpu.max").write_text(f"{quota} {PERIOD_US}")

    def add(self, pid: int) -> None:
        """Move a process (all its threads, and every thread it starts later) into the cgroup."""
        (self.path / "cgroup.procs").write_text(str(pid))

    def throttled_s(self) -> float:
        """Seconds the processes were held back by the quota so far (cpu.stat)."""
        stats = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        if "throttled_time" in stats:  # v1: nanoseconds
            return int(stats["throttled_time"]) / 1e9
        return int(stats.get("throttled_usec", 0)) / 1e6

    def remove(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass  # a process still inside (the benchmark failed): the kernel keeps it until it exits
