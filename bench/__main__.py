"""``python -m bench [NAME ...]``: run every ``bench_*.py`` module's ``main()`` (or only the named ones).

Each writes its own section of bench/RESULTS.md. ``python -m bench gpu [OPTIONS]`` is the prepared GPU
run (``bench/bench_gpu.py``, ``--help`` for its options); it is not part of the plain ``python -m bench``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


# Run only when asked by name, with its own options: ``python -m bench gpu [--images DIR] [--out DIR]``.
ON_REQUEST = {"bench_gpu"}


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    if argv and argv[0] in ("gpu", "bench_gpu"):
        from bench import bench_gpu

        return bench_gpu.main(argv[1:])
    names = sorted(m.name for m in pkgutil.iter_modules([str(here)]) if m.name.startswith("bench_") and m.name not in ON_REQUEST)
    wanted = [a if a.startswith("bench_") else f"bench_{a}" for a in argv]
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; available: {', '.join(n[6:] for n in names)}", file=sys.stderr)
        return 2
    failed = []
    for name in wanted or names:
        print(f"== {name} ==", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception as exc:  # one broken benchmark must not hide the others' numbers
            failed.append(name)
            print(f"{name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        print(f"== {name}: {time.perf_counter() - started:.0f} s ==", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
