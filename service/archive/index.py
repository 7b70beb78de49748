"""The store's index: patient / study / series / instance in SQLite (WAL).

It holds what C-FIND needs at every Query/Retrieve level (PS3.4 Annex C.6) and what dataset builds
filter on, plus where each instance lives, its size and sha256, who sent it and when, and whether it
is synthetic or excluded from training. The files are the record; the index can be rebuilt from them
(:meth:`Store.recover`, ``synthpacs store verify --repair``).

One writer connection guarded by a lock serves every thread of a process; readers get a connection of
their own per thread, which WAL lets run beside the writer and beside other processes (the CLI) of the
same host; a process on another host is refused before it opens the file (writer_lock.py).

Commits use ``synchronous=NORMAL`` in WAL mode: a commit is safe from a crash of the process (the WAL
is in the operating system's cache) but not from a power loss until the next :meth:`Index.checkpoint`,
which syncs the WAL and the database. The store's files are fsynced before any success is answered,
and the store indexes again whatever a power loss took from the index (store.py explains the mark).
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from service.archive.writer_lock import WriterLock

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS patients (
    patient_id TEXT PRIMARY KEY,
    patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT,
    synthetic INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    patient_id TEXT NOT NULL REFERENCES patients(patient_id),
    study_date TEXT, study_time TEXT, study_description TEXT, accession_number TEXT, study_id TEXT,
    referring_physician_name TEXT,
    synthetic INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id);
CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date);
CREATE TABLE IF NOT EXISTS series (
    series_uid TEXT PRIMARY KEY,
    study_uid TEXT NOT NULL REFERENCES studies(study_uid),
    modality TEXT, series_number INTEGER, series_description TEXT, body_part_examined TEXT,
    laterality TEXT, series_date TEXT, series_time TEXT,
    synthetic INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS series_study ON series(study_uid);
CREATE TABLE IF NOT EXISTS instances (
    sop_instance_uid TEXT PRIMARY KEY,
    series_uid TEXT NOT NULL REFERENCES series(series_uid),
    study_uid TEXT NOT NULL,
    sop_class_uid TEXT NOT NULL,
    transfer_syntax_uid TEXT NOT NULL,
    instance_number INTEGER,
    rows INTEGER, columns INTEGER, bits_stored INTEGER, photometric_interpretation TEXT,
    number_of_frames INTEGER,
    view_position TEXT, image_laterality TEXT, burned_in_annotation TEXT,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    source_ae TEXT,
    source TEXT NOT NULL,
    received_at TEXT NOT NULL,
    synthetic INTEGER NOT NULL DEFAULT 0,
    excluded_from_training INTEGER NOT NULL DEFAULT 0,
    exclusion_reason TEXT
);
CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid);
CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid);
"""


@dataclass
class InstanceRecord:
    """One stored instance with the attributes of its patient, study and series (as stored)."""

    sop_instance_uid: str
    series_uid: str
    study_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str  # relative to the store folder
    size: int
    sha256: str
    source: str  # "cstore", "import", "synthetic"
    received_at: str  # ISO 8601 UTC
    patient_id: str = ""
    patient_name: str = ""
    patient_birth_date: str = ""
    patient_sex: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    accession_number: str = ""
    study_id: str = ""
    referring_physician_name: str = ""
    modality: str = ""
    series_number: int | None = None
    series_description: str = ""
    body_part_examined: str = ""
    laterality: str = ""
    series_date: str = ""
    series_time: str = ""
    instance_number: int | None = None
    rows: int | None = None
    columns: int | None = None
    bits_stored: int | None = None
    photometric_interpretation: str = ""
    number_of_frames: int | None = None
    view_position: str = ""
    image_laterality: str = ""
    burned_in_annotation: str = ""
    source_ae: str = ""
    synthetic: bool = False
    excluded_from_training: bool = False
    exclusion_reason: str = ""


_PATIENT_COLS = ("patient_id", "patient_name", "patient_birth_date", "patient_sex", "synthetic")
_STUDY_COLS = (
    "study_uid", "patient_id", "study_date", "study_time", "study_description", "accession_number",
    "study_id", "referring_physician_name", "synthetic",
)
_SERIES_COLS = (
    "series_uid", "study_uid", "modality", "series_number", "series_description", "body_part_examined",
    "laterality", "series_date", "series_time", "synthetic",
)
_INSTANCE_COLS = (
    "sop_instance_uid", "series_uid", "study_uid", "sop_class_uid", "transfer_syntax_uid", "instance_number",
    "rows", "columns", "bits_stored", "photometric_interpretation", "number_of_frames", "view_position",
    "image_laterality", "burned_in_annotation", "path", "size", "sha256", "source_ae", "source", "received_at",
    "synthetic", "excluded_from_training", "exclusion_reason",
)
_RECORD_FIELDS = {f.name for f in fields(InstanceRecord)}

# The joined view that reads every instance with its parents' attributes.
INSTANCE_VIEW = """
SELECT i.*, p.patient_id, p.patient_name, p.patient_birth_date, p.patient_sex,
       st.study_date, st.study_time, st.study_description, st.accession_number, st.study_id,
       st.referring_physician_name,
       se.modality, se.series_number, se.series_description, se.body_part_examined, se.laterality,
       se.series_date, se.series_time
FROM instances i
JOIN series se ON se.series_uid = i.series_uid
JOIN studies st ON st.study_uid = i.study_uid
JOIN patients p ON p.patient_id = st.patient_id
"""


class Index:
    """SQLite index of the store. Safe to share between threads; other processes may open it too."""

    def __init__(self, path: str | Path, host: str | None = None):
        """Open (or make) the index at ``path``; WriterLockError where another host uses it (writer_lock.py).

        ``host``: the name this process counts as (default: the host name).
        """
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Before SQLite touches the file: a second host must not even open it (WAL over a network filesystem).
        self._host_lock = WriterLock.acquire(self.path.parent, host)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        try:
            self._writer = self._connect()
            with self._write_lock:
                self._writer.executescript(_SCHEMA)
                self._writer.execute(
                    "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                )
                self._writer.commit()
        except BaseException:
            self._host_lock.release()
            raise

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        # NORMAL: no fsync per commit (~1-3 ms each on this disk); durability comes from the files and
        # checkpoint() (see the module docstring).
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA busy_timeout=30000")
        return conn

    @property
    def reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT), serialized across threads."""
        with self._write_lock:
            self._writer.execute("BEGIN IMMEDIATE")
            try:
                yield self._writer
            except BaseException:
                self._writer.execute("ROLLBACK")
                raise
            self._writer.execute("COMMIT")

    def checkpoint(self) -> bool:
        """Sync the WAL and copy it into the database; True when every committed frame was copied.

        PASSIVE never waits for readers; when a reader still holds old pages the checkpoint is partial
        and False says that not everything is known durable yet.
        """
        with self._write_lock:
            busy, log_frames, done = self._writer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return busy == 0 and (log_frames == -1 or done >= log_frames)

    def paths_in_series(self, series_uid: str) -> set[str]:
        """Store-relative paths of the indexed instances of one series."""
        rows = self.reader.execute("SELECT path FROM instances WHERE series_uid = ?", (series_uid,))
        return {r[0] for r in rows}

    def close(self) -> None:
        with self._write_lock:
            self._writer.close()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        self._host_lock.release()

    # -- instances -------------------------------------------------------------------------------

    def add(self, rec: InstanceRecord, replace: bool = False) -> None:
        """Index one instance and, when new, its patient, study and series (first values win)."""
        row = dict(vars(rec))  # dataclasses.asdict deep-copies every field: ~10x slower here
        row["synthetic"] = int(rec.synthetic)
        row["excluded_from_training"] = int(rec.excluded_from_training)
        with self.write() as conn:
            _insert(conn, "patients", _PATIENT_COLS, row, ignore=True)
            _insert(conn, "studies", _STUDY_COLS, row, ignore=True)
            _insert(conn, "series", _SERIES_COLS, row, ignore=True)
            _insert(conn, "instances", _INSTANCE_COLS, row, ignore=False, replace=replace)

    def get(self, sop_instance_uid: str) -> InstanceRecord | None:
        row = self.reader.execute(INSTANCE_VIEW + " WHERE i.sop_instance_uid = ?", (sop_instance_uid,)).fetchone()
        return record_from_row(row) if row else None

    def delete(self, sop_instance_uid: str) -> None:
        with self.write() as conn:
            conn.execute("DELETE FROM instances WHERE sop_instance_uid = ?", (sop_instance_uid,))

    def instances(self, where: str = "", params: tuple[Any, ...] = (), order: str = "i.received_at, i.sop_instance_uid") -> Iterator[InstanceRecord]:
        """Instances matching an SQL condition over the joined view (aliases i, se, st, p)."""
        sql = INSTANCE_VIEW + (f" WHERE {where}" if where else "") + (f" ORDER BY {order}" if order else "")
        for row in self.reader.execute(sql, params):
            yield record_from_row(row)

    def stats(self) -> dict[str, Any]:
        q = self.reader.execute
        counts = {
            "patients": q("SELECT COUNT(*) FROM patients").fetchone()[0],
            "studies": q("SELECT COUNT(*) FROM studies").fetchone()[0],
            "series": q("SELECT COUNT(*) FROM series").fetchone()[0],
            "instances": q("SELECT COUNT(*) FROM instances").fetchone()[0],
            "bytes": q("SELECT COALESCE(SUM(size), 0) FROM instances").fetchone()[0],
            "synthetic_instances": q("SELECT COUNT(*) FROM instances WHERE synthetic = 1").fetchone()[0],
            "excluded_from_training": q("SELECT COUNT(*) FROM instances WHERE excluded_from_training = 1").fetchone()[0],
        }
        counts["by_modality"] = dict(
            q(
                "SELECT COALESCE(se.modality, ''), COUNT(*) FROM instances i JOIN series se USING (series_uid) "
                "GROUP BY se.modality ORDER BY COUNT(*) DESC"
            ).fetchall()
        )
        counts["by_body_part"] = dict(
            q(
                "SELECT COALESCE(se.body_part_examined, ''), COUNT(*) FROM instances i JOIN series se USING (series_uid) "
                "GROUP BY se.body_part_examined ORDER BY COUNT(*) DESC"
            ).fetchall()
        )
        counts["by_source_ae"] = dict(
            q("SELECT COALESCE(source_ae, ''), COUNT(*) FROM instances GROUP BY source_ae ORDER BY COUNT(*) DESC").fetchall()
        )
        return counts


def record_from_row(row: sqlite3.Row) -> InstanceRecord:
    data = {k: row[k] for k in row.keys() if k in _RECORD_FIELDS}
    for k in ("synthetic", "excluded_from_training"):
        data[k] = bool(data.get(k))
    for k, v in list(data.items()):
        if v is None and k not in ("series_number", "instance_number", "rows", "columns", "bits_stored", "number_of_frames"):
            data[k] = ""
    return InstanceRecord(**data)


def _insert(conn: sqlite3.Connection, table: str, cols: tuple[str, ...], row: dict[str, Any], ignore: bool, replace: bool = False) -> None:
    verb = "INSERT OR REPLACE" if replace else ("INSERT OR IGNORE" if ignore else "INSERT")
    placeholders = ", ".join("?" for _ in cols)
    conn.execute(f"{verb} INTO {table} ({', '.join(cols)}) VALUES ({placeholders})", tuple(row[c] for c in cols))
