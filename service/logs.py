"""Structured logs: one JSON object per line, never any patient data.

Lines go to stdout, except for commands whose stdout carries data (every ``--json`` command and the
``store`` commands): their lines go to stderr (:class:`StderrStream`), so the data stays parseable.

Every line carries ``component`` and ``event``; network work adds an association or request id.
Patient names, IDs and birth dates are never logged; UIDs are logged only through :func:`uid_hash`,
and :func:`configure` installs a processor that drops keys that look like patient attributes, so a
careless ``log.info(..., patient_name=...)`` cannot leak.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
import sys
import traceback
from pathlib import Path
from typing import Any

import structlog

# Keys that must never reach a log line, whatever the caller passes.
_PHI_KEYS = frozenset(
    {
        "patient_name", "patientname", "patient_id", "patientid", "patient_birth_date", "patientbirthdate",
        "birth_date", "other_patient_ids", "accession_number", "accessionnumber", "referring_physician",
        "institution_address", "patient_address",
    }
)

_configured = False


def where(exc: BaseException) -> list[str]:
    """Where an exception was raised (file:line function, innermost six), for a log line. Not its
    message: messages of pydicom and sqlite can quote values, and values can be patient data."""
    return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in traceback.extract_tb(exc.__traceback__)[-6:]]


def uid_hash(uid: str | None) -> str | None:
    """A short, stable, one-way token for a UID, so log lines can be correlated without exposing it."""
    if not uid:
        return None
    return hashlib.sha256(str(uid).encode()).hexdigest()[:16]


def _drop_phi(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    for key in list(event_dict):
        if key.lower() in _PHI_KEYS:
            event_dict[key] = "[removed]"
    return event_dict


class StderrStream:
    """Whatever ``sys.stderr`` is when a line is written (not the stream of the moment of configuring),
    so a test's captured stderr or a redirected one receives the lines."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    """Set up structlog (and the stdlib loggers of pynetdicom and grpc) to write to ``stream``."""
    global _configured
    stream = stream or sys.stdout
    lvl = getattr(logging, level.upper())
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _drop_phi,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    # pynetdicom logs whole datasets at DEBUG, and pydicom quotes element values in its warnings (names
    # and IDs included): neither may reach stdout or stderr.
    for noisy in ("pynetdicom", "grpc", "highdicom"):
        logging.getLogger(noisy).setLevel(max(lvl, logging.WARNING))
    pydicom_logger = logging.getLogger("pydicom")
    pydicom_logger.setLevel(logging.CRITICAL)
    pydicom_logger.propagate = False
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    warnings.filterwarnings("ignore", module=r"highdicom(\..*)?")
    _configured = True


def get_logger(component: str) -> Any:
    """A logger bound to a component name (``scp``, ``store``, ``grpc``, ``train``...)."""
    if not _configured:
        configure()
    # A lazy proxy: module-level loggers are made at import, before the CLI configures the level, and a
    # logger bound then would keep the import-time level (log.level and --log-level would be ignored).
    return structlog.get_logger(component=component)
