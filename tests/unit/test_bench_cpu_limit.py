"""bench/cpu_limit.py: the CPU limit the scale-out benchmark gives each SCP process (a pod's limits.cpu)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench.cpu_limit import CpuLimit, why_not_available


def test_a_process_is_held_to_its_quota_and_the_cgroup_goes_with_it():
    reason = why_not_available()
    if reason:
        pytest.skip(f"no CPU limit can be made here: {reason}")
    limit = CpuLimit("test", 0.2)
    child = subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 60\nwhile time.monotonic() < end: pass"])
    try:
        limit.add(child.pid)
        assert limit.path.name in open(f"/proc/{child.pid}/cgroup").read()
        deadline = time.monotonic() + 30
        while limit.throttled_s() == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert limit.throttled_s() > 0  # a busy loop over 0.2 core is held back by the quota
    finally:
        child.kill()
        child.wait()
    limit.remove()
    assert not limit.path.exists()
