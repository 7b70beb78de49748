"""The progress line itself, the one writer under every progress display of synthpacs (training runs,
dataset builds, imports, generation, the store's commands): on a terminal the line is redrawn in place,
in a log (nohup, a pod, CI) each update is a line of its own, so a long job leaves a readable trail."""

from __future__ import annotations

from typing import IO


def is_terminal(stream: IO[str]) -> bool:
    return bool(getattr(stream, "isatty", lambda: False)())


def write_line(stream: IO[str], text: str, final: bool = False, tty: bool | None = None) -> None:
    """Write one progress line to ``stream``; ``final`` ends a redrawn line. ``tty``: whether ``stream``
    is a terminal, when the caller decided it once (default: ask the stream)."""
    if is_terminal(stream) if tty is None else tty:
        stream.write("\r\x1b[2K" + text + ("\n" if final else ""))
    else:
        stream.write(text + "\n")
    stream.flush()
