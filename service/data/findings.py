"""Findings of stored images (e.g. a fracture), kept beside the store and joined into dataset manifests.

A finding is a label about what an image shows, the kind a report or a curated data set (FracAtlas'
fractured / non-fractured folders) gives. DICOM images carry no standard header attribute for it, and
the free-text attributes that could hold one (Image Comments, descriptions) are removed by
de-identification (PS3.15 Table E.1-1). So ``dataset import-images`` records each imported image's
finding here, keyed by the SOP Instance UID the store gave it (after de-identification), and
``dataset build`` adds it to the manifest row as ``finding`` (:mod:`service.data.build`), where
conditional training reads it.

The file is ``<store>/findings.jsonl``: one ``{"sop_instance_uid": ..., "finding": ...}`` per line,
appended; a later line for the same instance replaces an earlier one. It holds UIDs and label words
only, no patient data.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

from models.fileio import fsync_path

FINDINGS_FILE = "findings.jsonl"
# FracAtlas' "fractured" column (yes/no) to the finding words used as condition values.
FRACTURE_VALUES = {"yes": "FRACTURE", "no": "NONE", "1": "FRACTURE", "0": "NONE", "true": "FRACTURE", "false": "NONE"}


def findings_path(store_dir: Path) -> Path:
    return Path(store_dir) / FINDINGS_FILE


def read_findings(store_dir: Path) -> dict[str, str]:
    """SOP Instance UID -> finding; empty when nothing was recorded. Unreadable lines are skipped."""
    path = findings_path(store_dir)
    out: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash mid-append
                if isinstance(row, dict) and isinstance(row.get("sop_instance_uid"), str) and isinstance(row.get("finding"), str):
                    out[row["sop_instance_uid"]] = row["finding"]
    except FileNotFoundError:
        pass
    return out


def record_findings(store_dir: Path, findings: Mapping[str, str]) -> int:
    """Append ``findings`` (SOP Instance UID -> finding) durably; returns how many lines were written."""
    current = read_findings(store_dir)
    new = {uid: f for uid, f in findings.items() if f and current.get(uid) != f}
    if not new:
        return 0
    path = findings_path(store_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        for uid, finding in new.items():
            f.write(json.dumps({"sop_instance_uid": uid, "finding": finding}, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
    fsync_path(path.parent)
    return len(new)


def finding_word(value: str) -> str:
    """A label file's fracture column (yes/no) or a finding word, as the finding recorded ("" if none)."""
    text = (value or "").strip()
    if not text:
        return ""
    return FRACTURE_VALUES.get(text.lower(), text.upper())
