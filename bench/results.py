"""Writing a benchmark's numbers into its own section of bench/RESULTS.md, with the machine they came from."""

from __future__ import annotations

import os
import platform
import re
import time
from pathlib import Path

from models.hardware import cpu_name

RESULTS = Path(__file__).parent / "RESULTS.md"
HEADER = "# Benchmark results\n\nWritten by `make bench` (`python -m bench`); each section by its own benchmark module.\n"


def machine() -> str:
    """One line describing this machine: CPU model, cores, memory, OS, Python, torch, GPU."""
    cpu = cpu_name()
    mem = ""
    try:
        kb = int(next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    parts = [f"{cpu}, {os.cpu_count()} cores{mem}", f"{platform.system()} {platform.release()}", f"Python {platform.python_version()}"]
    try:
        import torch

        parts.append(f"torch {torch.__version__}")
        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
        else:
            parts.append("no GPU")
    except ImportError:
        pass
    return "; ".join(parts)


def write_section(name: str, markdown: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md with ``markdown``, stamped with date and machine."""
    body = (
        f"<!-- BEGIN {name} -->\n{markdown.rstrip()}\n\n"
        f"_Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on: {machine()}._\n<!-- END {name} -->"
    )
    text = path.read_text() if path.exists() else HEADER
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _m: body, text) if pattern.search(text) else text.rstrip() + "\n\n" + body + "\n"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)
