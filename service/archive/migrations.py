"""The index's schema as numbered migrations, the same for SQLite and PostgreSQL.

Every process that opens the index applies the migrations its database lacks, in one transaction that
excludes every other migrating process (SQLite: the write transaction, BEGIN IMMEDIATE; PostgreSQL: a
transaction-level advisory lock), so replicas that start together on an empty PostgreSQL database make
the schema once. ``synthpacs store migrate`` does the same by hand, e.g. before a rolling upgrade.

The version is ``meta.schema_version`` (version 1 databases written before migrations existed have it
too); ``schema_migrations`` records when each step ran. A database newer than this code is refused:
running an older synthpacs on it could misread or damage rows it does not know.

Column types are written as ``{bigint}``, ``{float}`` and ``{serial_pk}`` and filled in by the backend's
dialect (service/archive/backends.py); everything else is the same text on both engines.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable

# Any 64-bit constant; the lock that serializes migrations of one PostgreSQL database ("synthpacs").
_PG_MIGRATION_LOCK = 0x73796E7468706163


class SchemaTooNew(Exception):
    """The index was migrated by a newer synthpacs than this one."""


_V1_CORE = (
    "CREATE TABLE IF NOT EXISTS patients ("
    " patient_id TEXT PRIMARY KEY,"
    " patient_name TEXT, patient_birth_date TEXT, patient_sex TEXT,"
    " synthetic INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS studies ("
    " study_uid TEXT PRIMARY KEY,"
    " patient_id TEXT NOT NULL REFERENCES patients(patient_id),"
    " study_date TEXT, study_time TEXT, study_description TEXT, accession_number TEXT, study_id TEXT,"
    " referring_physician_name TEXT,"
    " synthetic INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS studies_patient ON studies(patient_id)",
    "CREATE INDEX IF NOT EXISTS studies_date ON studies(study_date)",
    "CREATE TABLE IF NOT EXISTS series ("
    " series_uid TEXT PRIMARY KEY,"
    " study_uid TEXT NOT NULL REFERENCES studies(study_uid),"
    " modality TEXT, series_number INTEGER, series_description TEXT, body_part_examined TEXT,"
    " laterality TEXT, series_date TEXT, series_time TEXT,"
    " synthetic INTEGER NOT NULL DEFAULT 0)",
    "CREATE INDEX IF NOT EXISTS series_study ON series(study_uid)",
    "CREATE TABLE IF NOT EXISTS instances ("
    " sop_instance_uid TEXT PRIMARY KEY,"
    " series_uid TEXT NOT NULL REFERENCES series(series_uid),"
    " study_uid TEXT NOT NULL,"
    " sop_class_uid TEXT NOT NULL,"
    " transfer_syntax_uid TEXT NOT NULL,"
    " instance_number INTEGER,"
    " rows INTEGER, columns INTEGER, bits_stored INTEGER, photometric_interpretation TEXT,"
    " number_of_frames INTEGER,"
    " view_position TEXT, image_laterality TEXT, burned_in_annotation TEXT,"
    " path TEXT NOT NULL,"
    " size {bigint} NOT NULL,"
    " sha256 TEXT NOT NULL,"
    " source_ae TEXT,"
    " source TEXT NOT NULL,"
    " received_at TEXT NOT NULL,"
    " synthetic INTEGER NOT NULL DEFAULT 0,"
    " excluded_from_training INTEGER NOT NULL DEFAULT 0,"
    " exclusion_reason TEXT)",
    "CREATE INDEX IF NOT EXISTS instances_series ON instances(series_uid)",
    "CREATE INDEX IF NOT EXISTS instances_study ON instances(study_uid)",
)

# The outbox (service/synthetic/outbox.py). Databases of earlier releases made these tables when the
# outbox first started, at schema version 1, some without lease_owner: IF NOT EXISTS, and the column added.
_V2_OUTBOX = (
    "CREATE TABLE IF NOT EXISTS outbox ("
    " id {serial_pk},"
    " sop_instance_uid TEXT NOT NULL,"
    " destination TEXT NOT NULL,"
    " state TEXT NOT NULL DEFAULT 'pending',"
    " attempts INTEGER NOT NULL DEFAULT 0,"
    " next_attempt_at {float} NOT NULL,"
    " lease_until {float},"
    " created_at TEXT NOT NULL,"
    " updated_at TEXT NOT NULL,"
    " sent_at TEXT,"
    " last_status INTEGER,"
    " last_error TEXT,"
    " lease_owner TEXT,"
    " UNIQUE (sop_instance_uid, destination))",
    "CREATE INDEX IF NOT EXISTS outbox_due ON outbox(state, destination, next_attempt_at)",
    "CREATE TABLE IF NOT EXISTS outbox_destinations ("
    " destination TEXT PRIMARY KEY,"
    " healthy INTEGER NOT NULL,"
    " checked_at TEXT NOT NULL,"
    " consecutive_failures INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT)",
)


def _statements(statements: tuple[str, ...]) -> Callable[[Any, Any], None]:
    def apply(conn: Any, backend: Any) -> None:
        for sql in statements:
            conn.execute(sql.format(**backend.dialect.types))

    return apply


def _outbox(conn: Any, backend: Any) -> None:
    _statements(_V2_OUTBOX)(conn, backend)
    # Who holds a 'sending' row's lease (outbox.process_token()); outbox tables of older releases lack it.
    if "lease_owner" not in backend.column_names(conn, "outbox"):
        conn.execute("ALTER TABLE outbox ADD COLUMN lease_owner TEXT")


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable[[Any, Any], None]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "patients, studies, series and instances", _statements(_V1_CORE)),
    Migration(2, "the outbox and the health of its destinations", _outbox),
)
LATEST = MIGRATIONS[-1].version


@dataclass(frozen=True)
class MigrationReport:
    before: int  # the version found (0: an empty database)
    after: int
    applied: tuple[int, ...]


def current_version(conn: Any) -> int:
    row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row[0]) if row else 0


def migrate(backend: Any) -> MigrationReport:
    """Bring the index to :data:`LATEST`; raises :class:`SchemaTooNew` for a newer database."""
    with backend.write() as conn:
        if backend.dialect.name == "postgresql":
            conn.execute("SELECT pg_advisory_xact_lock(?)", (_PG_MIGRATION_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at TEXT NOT NULL)"
        )
        before = current_version(conn)
        if before > LATEST:
            raise SchemaTooNew(
                f"the index ({backend.describe()}) is at schema version {before}, newer than this synthpacs knows "
                f"({LATEST}): run the synthpacs release that migrated it, or a newer one"
            )
        applied = []
        for step in MIGRATIONS:
            if step.version <= before:
                continue
            step.apply(conn, backend)
            conn.execute(
                "INSERT INTO schema_migrations (version, description, applied_at) VALUES (?, ?, ?) ON CONFLICT (version) DO NOTHING",
                (step.version, step.description, datetime.now(timezone.utc).isoformat(timespec="seconds")),
            )
            applied.append(step.version)
        if applied:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(LATEST),),
            )
    return MigrationReport(before, max(before, LATEST), tuple(applied))
