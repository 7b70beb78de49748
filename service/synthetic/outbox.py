"""The outbox: a durable queue of outgoing C-STOREs in the store's index, and the sender that drains it.

Delivery is at least once (ARCHITECTURE.md "Network contracts"). An instance is queued for a destination in
the same database as the store's index, so a queued send survives a crash or restart exactly like the
instance does. A sender claims rows with a lease that names its process (host, pid and the process's
start time, so a reused pid is not mistaken for it); a row whose sender died becomes claimable again when
its lease ends, or at once when a sender starts on the same host and finds the owning process gone. A
row is marked sent only after the peer answered the C-STORE with success, a warning, or "duplicate"
(PS3.4 B.2.3), so a crash between sending and marking re-sends it, which a PACS treats as a harmless
duplicate of the same SOP Instance UID.

Failed attempts are retried with exponential backoff and jitter (``outbox.backoff_initial_s`` doubling
up to ``outbox.backoff_max_s``); ``outbox.max_attempts`` = 0 retries forever. Each destination gets up
to ``outbox.concurrency_per_destination`` associations at once. A destination that cannot be reached is
marked down and checked with C-ECHO (PS3.4 Annex A) on the same backoff; when it answers again, its
waiting items become due at once instead of each waiting out its own backoff.

With a PostgreSQL index the outbox is a work queue shared by senders on any number of hosts: a claim
selects due rows ``FOR UPDATE SKIP LOCKED`` and leases them in the same transaction, so two senders
never claim one row at once and neither waits for the other. Each sender's lease names, besides its
process, a database session it keeps open for its life; when the process dies the server ends that
session, and every other sender, on any host, makes the dead sender's rows due at once (checked every
``ORPHAN_CHECK_S`` seconds) instead of waiting out the lease.

States: ``pending`` (waiting or due), ``sending`` (claimed by a sender), ``sent``, ``failed`` (gave up
after max_attempts, or the instance is no longer in the store). ``synthpacs outbox retry`` moves failed
and waiting rows back to due.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

from prometheus_client import Counter, Gauge

from service.archive.index import DATABASE_ERRORS, Index
from service.config import Config, ConfigError
from service.logs import get_logger, uid_hash

log = get_logger("outbox")

SENT = Counter("synthpacs_outbox_sent_total", "Instances delivered by the outbox", ["destination"])
ATTEMPT_FAILURES = Counter("synthpacs_outbox_attempt_failures_total", "Failed send attempts, by reason", ["destination", "reason"])
GAVE_UP = Counter("synthpacs_outbox_gave_up_total", "Outbox items that will not be retried", ["destination"])
DESTINATION_UP = Gauge("synthpacs_outbox_destination_up", "1 when the destination answered its last C-ECHO or C-STORE", ["destination"])
QUEUED = Gauge("synthpacs_outbox_queued", "Outbox items not yet delivered", ["destination"])

STATES = ("pending", "sending", "sent", "failed")

# How often a sender on a PostgreSQL index looks for rows leased by senders whose session ended (seconds).
ORPHAN_CHECK_S = 2.0


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _proc_stat(pid: int) -> list[str]:
    """Fields 3 and on of /proc/PID/stat (state first), or [] where there is no such process or no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return stat.rsplit(")", 1)[1].split()


def _process_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (/proc/PID/stat field 22), or "" if unknown."""
    fields = _proc_stat(pid)
    return fields[19] if len(fields) > 19 else ""


def process_token(pid: int | None = None) -> str:
    """This process (or ``pid``) as a lease owner: host, pid and start time."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()} {pid} {_process_start(pid) or '?'}"


def owner_gone(token: str) -> bool:
    """True only when ``token`` names a process on this host that no longer runs (or whose pid was reused)."""
    parts = token.split(" ")[:3]  # a PostgreSQL session may follow (Outbox.owner)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False  # another host, or not ours to judge: its lease runs out by itself
    pid, started = int(parts[1]), parts[2]
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass
    fields = _proc_stat(pid)
    if fields and fields[0] in ("Z", "X"):  # killed, not yet reaped by its parent
        return True
    current = fields[19] if len(fields) > 19 else ""
    return bool(current) and started != "?" and current != started


def backoff_delay(attempts: int, initial: float, maximum: float, rng: random.Random | None = None) -> float:
    """Seconds to wait after ``attempts`` failures: initial * 2**(attempts-1), capped, with equal jitter.

    Equal jitter (half fixed, half random) keeps the growth while spreading retries from many items,
    so a PACS that comes back is not hit by every item in the same second.
    """
    if attempts < 1:
        return 0.0
    base = min(maximum, initial * (2 ** min(attempts - 1, 32)))
    r = (rng or random).random()
    return base / 2 + base / 2 * r


@dataclass(frozen=True)
class OutboxItem:
    id: int
    sop_instance_uid: str
    destination: str
    state: str
    attempts: int
    next_attempt_at: float
    created_at: str
    updated_at: str
    sent_at: str
    last_status: int | None
    last_error: str
    study_uid: str = ""


@dataclass(frozen=True)
class Claimed:
    """A claimed item with what sending it needs from the index (empty path: no longer stored)."""

    id: int
    sop_instance_uid: str
    destination: str
    attempts: int
    path: str
    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class DestinationHealth:
    destination: str
    healthy: bool
    checked_at: str
    consecutive_failures: int
    last_error: str


class Outbox:
    """The queue itself. Thread-safe; several processes may share it through the index file."""

    def __init__(self, cfg: Config, index: Index, lease_s: float | None = None):
        self.cfg = cfg
        self.index = index
        # Long enough for a whole batch on a slow link; a crashed sender's items return after it.
        self.lease_s = lease_s if lease_s is not None else max(120.0, 4 * cfg.dicom.dimse_timeout)
        self.changed = threading.Event()
        _check_config(cfg)
        self._process = process_token()
        # The tables are the index's schema (service/archive/migrations.py, version 2), made when it opened.

    @property
    def owner(self) -> str:
        """Who holds a 'sending' row's lease: "host pid start-time" (process_token()), and with PostgreSQL
        the session this process keeps open ("pg:pid:start"), which ends when the process dies, on any host.
        Asked at each claim: after a server restart the process leases under its new session, not under
        the ended one that every other sender would take its rows from."""
        session = self.index.backend.session_token()
        return f"{self._process} {session}" if session else self._process

    # -- queueing ------------------------------------------------------------------------------------

    def enqueue(self, sop_instance_uids: Iterable[str], destination: str) -> list[int]:
        """Queue instances for ``destination``; returns their outbox ids.

        Idempotent: an instance already waiting or being sent to that destination keeps its row; one
        already sent is queued again (an explicit re-send). The destination must be a configured peer
        with a port.
        """
        self.check_destination(destination)
        now, stamp = time.time(), _now_iso()
        ids = []
        with self.index.write() as conn:
            for sop in sop_instance_uids:
                # Insert first: a sender of another process queueing the same instance at the same moment
                # (PostgreSQL) makes this a no-op instead of a failed transaction.
                inserted = conn.execute(
                    "INSERT INTO outbox (sop_instance_uid, destination, state, attempts, next_attempt_at, created_at, updated_at) "
                    "VALUES (?, ?, 'pending', 0, ?, ?, ?) ON CONFLICT (sop_instance_uid, destination) DO NOTHING RETURNING id",
                    (sop, destination, now, stamp, stamp),
                ).fetchone()
                if inserted is not None:
                    ids.append(int(inserted[0]))
                    continue
                row = conn.execute(
                    "SELECT id, state FROM outbox WHERE sop_instance_uid = ? AND destination = ?", (sop, destination)
                ).fetchone()
                if row["state"] in ("sent", "failed"):
                    conn.execute(
                        "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_at = ?, lease_until = NULL, "
                        "updated_at = ?, last_error = NULL, last_status = NULL WHERE id = ?",
                        (now, stamp, row["id"]),
                    )
                ids.append(int(row["id"]))
        # The index commits without an fsync (synchronous=NORMAL); a queued send must survive a power
        # loss like the instance it points to, so the WAL is synced now (sent marks need not be: losing
        # one re-sends a duplicate, which is harmless).
        checkpoint = getattr(self.index, "checkpoint", None)
        if checkpoint is not None:
            checkpoint()
        log.info("queued", destination=destination, count=len(ids))
        self.changed.set()
        return ids

    def check_destination(self, destination: str) -> None:
        peer = self.cfg.peer(destination)
        if peer is None or peer.port is None:
            known = ", ".join(p.ae_title for p in self.cfg.dicom.peers if p.port is not None) or "none"
            raise ValueError(f"destination {destination!r} is not a dicom.peers entry with a port (configured destinations: {known})")

    # -- the sender's side ---------------------------------------------------------------------------

    def due_destinations(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        rows = self.index.reader.execute(
            "SELECT DISTINCT destination FROM outbox WHERE (state = 'pending' AND next_attempt_at <= ?) "
            "OR (state = 'sending' AND lease_until < ?)",
            (now, now),
        ).fetchall()
        return sorted(r[0] for r in rows)

    def next_due_in(self, now: float | None = None) -> float | None:
        """Seconds until the earliest waiting item is due (0 if one is due), None when nothing waits."""
        now = time.time() if now is None else now
        row = self.index.reader.execute(
            "SELECT MIN(CASE WHEN state = 'pending' THEN next_attempt_at ELSE lease_until END) FROM outbox "
            "WHERE state IN ('pending', 'sending')"
        ).fetchone()
        if row is None or row[0] is None:
            return None
        return max(0.0, float(row[0]) - now)

    def claim(self, destination: str, limit: int) -> list[Claimed]:
        """Atomically take up to ``limit`` due items for ``destination`` (oldest first) under a lease.

        SQLite: the write transaction excludes every other writer. PostgreSQL: the rows are locked as they
        are selected, skipping those another sender's claim holds, and leased in the same transaction.
        """
        now = time.time()
        with self.index.write() as conn:
            rows = conn.execute(
                "SELECT o.id, o.sop_instance_uid, o.destination, o.attempts, i.path, i.sop_class_uid, i.transfer_syntax_uid "
                "FROM outbox o LEFT JOIN instances i ON i.sop_instance_uid = o.sop_instance_uid "
                "WHERE o.destination = ? AND ((o.state = 'pending' AND o.next_attempt_at <= ?) "
                "OR (o.state = 'sending' AND o.lease_until < ?)) ORDER BY o.id LIMIT ?" + self.index.dialect.lock_rows("o"),
                (destination, now, now, limit),
            ).fetchall()
            if rows:
                owner = self.owner
                conn.executemany(
                    "UPDATE outbox SET state = 'sending', lease_until = ?, lease_owner = ?, updated_at = ? WHERE id = ?",
                    [(now + self.lease_s, owner, _now_iso(), r["id"]) for r in rows],
                )
        return [
            Claimed(r["id"], r["sop_instance_uid"], r["destination"], r["attempts"], r["path"] or "", r["sop_class_uid"] or "", r["transfer_syntax_uid"] or "")
            for r in rows
        ]

    def mark_sent(self, item: Claimed, status: int, detail: str = "") -> None:
        stamp = _now_iso()
        with self.index.write() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'sent', attempts = attempts + 1, lease_until = NULL, sent_at = ?, updated_at = ?, "
                "last_status = ?, last_error = ? WHERE id = ?",
                (stamp, stamp, status, detail or None, item.id),
            )
        SENT.labels(destination=item.destination).inc()
        self.changed.set()

    def mark_retry(self, item: Claimed, error: str, status: int | None = None, reason: str = "error") -> str:
        """Record a failed attempt; returns the new state (``pending``, or ``failed`` past max_attempts)."""
        attempts = item.attempts + 1
        cfg = self.cfg.outbox
        gave_up = cfg.max_attempts > 0 and attempts >= cfg.max_attempts
        delay = backoff_delay(attempts, cfg.backoff_initial_s, cfg.backoff_max_s)
        state = "failed" if gave_up else "pending"
        with self.index.write() as conn:
            conn.execute(
                "UPDATE outbox SET state = ?, attempts = ?, next_attempt_at = ?, lease_until = NULL, updated_at = ?, "
                "last_status = ?, last_error = ? WHERE id = ?",
                (state, attempts, time.time() + delay, _now_iso(), status, error[:500], item.id),
            )
        ATTEMPT_FAILURES.labels(destination=item.destination, reason=reason).inc()
        if gave_up:
            GAVE_UP.labels(destination=item.destination).inc()
        log.warning(
            "send_failed", destination=item.destination, sop=uid_hash(item.sop_instance_uid), attempts=attempts,
            state=state, retry_in_s=None if gave_up else round(delay, 1), error=error, reason=reason,
        )
        self.changed.set()
        return state

    def mark_failed(self, item: Claimed, error: str) -> None:
        """Give up on an item that no retry can help (its instance is gone from the store)."""
        with self.index.write() as conn:
            conn.execute(
                "UPDATE outbox SET state = 'failed', attempts = attempts + 1, lease_until = NULL, updated_at = ?, last_error = ? WHERE id = ?",
                (_now_iso(), error[:500], item.id),
            )
        GAVE_UP.labels(destination=item.destination).inc()
        log.warning("send_abandoned", destination=item.destination, sop=uid_hash(item.sop_instance_uid), error=error)
        self.changed.set()

    def release(self, items: Iterable[Claimed]) -> None:
        """Hand claimed items back unsent, without counting an attempt (the sender is stopping)."""
        ids = [(time.time(), _now_iso(), it.id) for it in items]
        if not ids:
            return
        with self.index.write() as conn:
            conn.executemany(
                "UPDATE outbox SET state = 'pending', lease_until = NULL, next_attempt_at = ?, updated_at = ? "
                "WHERE id = ? AND state = 'sending'",
                ids,
            )
        self.changed.set()

    def release_orphans(self) -> int:
        """Make items due now whose lease belongs to a process that is gone (killed mid-send); returns how
        many. SQLite: processes of this host; leases of other hosts, or of live processes, run their course.
        PostgreSQL: also any process, on any host, whose database session has ended."""
        owners = [r[0] for r in self.index.reader.execute(
            "SELECT DISTINCT lease_owner FROM outbox WHERE state = 'sending' AND lease_owner IS NOT NULL").fetchall()]
        sessions = {o: o.split(" ")[3] for o in owners if len(o.split(" ")) == 4}
        ended = self.index.backend.sessions_gone(list(sessions.values())) if sessions else set()
        gone = [o for o in owners if owner_gone(o) or sessions.get(o) in ended]
        if not gone:
            return 0
        with self.index.write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET state = 'pending', lease_until = NULL, lease_owner = NULL, next_attempt_at = ?, updated_at = ? "
                f"WHERE state = 'sending' AND lease_owner IN ({', '.join('?' for _ in gone)})",
                [time.time(), _now_iso(), *gone],
            )
            count = cur.rowcount
        log.warning("orphaned_sends_released", count=count, owners=len(gone))
        self.changed.set()
        return count

    def make_due(self, destination: str | None = None, ids: Iterable[int] | None = None, include_failed: bool = True) -> int:
        """Make waiting (and, by default, failed) items due now; returns how many. ``synthpacs outbox retry``."""
        states = ("pending", "failed") if include_failed else ("pending",)
        where = [f"state IN ({', '.join('?' for _ in states)})"]
        params: list = list(states)
        if destination:
            where.append("destination = ?")
            params.append(destination)
        id_list = list(ids) if ids is not None else None
        if id_list is not None:
            if not id_list:
                return 0
            where.append(f"id IN ({', '.join('?' for _ in id_list)})")
            params += id_list
        with self.index.write() as conn:
            cur = conn.execute(
                "UPDATE outbox SET state = 'pending', next_attempt_at = ?, updated_at = ?, "
                "attempts = CASE WHEN state = 'failed' THEN 0 ELSE attempts END "
                f"WHERE {' AND '.join(where)}",
                [time.time(), _now_iso(), *params],
            )
            count = cur.rowcount
        self.changed.set()
        return count

    # -- destination health --------------------------------------------------------------------------

    def record_health(self, destination: str, healthy: bool, error: str = "") -> DestinationHealth:
        stamp = _now_iso()
        with self.index.write() as conn:
            row = conn.execute("SELECT consecutive_failures FROM outbox_destinations WHERE destination = ?", (destination,)).fetchone()
            failures = 0 if healthy else (row[0] if row else 0) + 1
            conn.execute(
                "INSERT INTO outbox_destinations (destination, healthy, checked_at, consecutive_failures, last_error) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT(destination) DO UPDATE SET healthy = excluded.healthy, "
                "checked_at = excluded.checked_at, consecutive_failures = excluded.consecutive_failures, last_error = excluded.last_error",
                (destination, int(healthy), stamp, failures, error[:500] or None),
            )
        DESTINATION_UP.labels(destination=destination).set(1 if healthy else 0)
        return DestinationHealth(destination, healthy, stamp, failures, error)

    def health(self) -> dict[str, DestinationHealth]:
        rows = self.index.reader.execute("SELECT * FROM outbox_destinations ORDER BY destination").fetchall()
        return {
            r["destination"]: DestinationHealth(r["destination"], bool(r["healthy"]), r["checked_at"], r["consecutive_failures"], r["last_error"] or "")
            for r in rows
        }

    # -- reading -------------------------------------------------------------------------------------

    def items(self, state: str | None = None, destination: str | None = None, study_uid: str | None = None, limit: int | None = None,
              sop_instance_uids: Iterable[str] | None = None) -> list[OutboxItem]:
        where, params = [], []
        if state:
            if state not in STATES:
                raise ValueError(f"state {state!r} is not one of {', '.join(STATES)}")
            where.append("o.state = ?")
            params.append(state)
        if destination:
            where.append("o.destination = ?")
            params.append(destination)
        if study_uid:
            where.append("i.study_uid = ?")
            params.append(study_uid)
        if sop_instance_uids is not None:
            uids = list(sop_instance_uids)
            if not uids:
                return []
            where.append(f"o.sop_instance_uid IN ({', '.join('?' for _ in uids)})")
            params += uids
        sql = (
            "SELECT o.*, COALESCE(i.study_uid, '') AS study_uid FROM outbox o "
            "LEFT JOIN instances i ON i.sop_instance_uid = o.sop_instance_uid"
            + (f" WHERE {' AND '.join(where)}" if where else "")
            + " ORDER BY o.id" + (f" LIMIT {int(limit)}" if limit else "")
        )
        return [_item(r) for r in self.index.reader.execute(sql, params).fetchall()]

    def counts(self) -> dict[str, dict[str, int]]:
        """destination -> state -> count."""
        out: dict[str, dict[str, int]] = {}
        for dest, state, n in self.index.reader.execute("SELECT destination, state, COUNT(*) FROM outbox GROUP BY destination, state"):
            out.setdefault(dest, {})[state] = n
        for dest, states in out.items():
            QUEUED.labels(destination=dest).set(states.get("pending", 0) + states.get("sending", 0))
        return out


def _check_config(cfg: Config) -> None:
    o = cfg.outbox
    if o.backoff_initial_s <= 0 or o.backoff_max_s < o.backoff_initial_s:
        raise ConfigError("outbox.backoff_initial_s must be > 0 and outbox.backoff_max_s at least as large")
    if o.max_attempts < 0:
        raise ConfigError("outbox.max_attempts must be 0 (retry forever) or a positive number")
    if o.concurrency_per_destination < 1 or o.batch_size < 1:
        raise ConfigError("outbox.concurrency_per_destination and outbox.batch_size must be at least 1")
    if o.health_interval_s < 0:
        raise ConfigError("outbox.health_interval_s must be 0 (off) or a number of seconds")


def _item(r: Any) -> OutboxItem:
    return OutboxItem(
        id=r["id"], sop_instance_uid=r["sop_instance_uid"], destination=r["destination"], state=r["state"],
        attempts=r["attempts"], next_attempt_at=r["next_attempt_at"], created_at=r["created_at"], updated_at=r["updated_at"],
        sent_at=r["sent_at"] or "", last_status=r["last_status"], last_error=r["last_error"] or "", study_uid=r["study_uid"],
    )


class OutboxSender:
    """The runtime component that drains the outbox: ``start()``/``stop()``, plus :meth:`drain` for callers
    that want their items delivered before they return (``synthpacs synthesize``, tests, the demo)."""

    def __init__(self, cfg: Config, store: Any, outbox: Outbox | None = None, poll_interval_s: float = 1.0):
        self.cfg = cfg
        self.root = Path(store.root)
        self.outbox = outbox if outbox is not None else Outbox(cfg, store.index)
        self.batch_size = cfg.outbox.batch_size
        self.poll_interval_s = poll_interval_s
        self.health_interval_s = cfg.outbox.health_interval_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._active: dict[str, int] = {}
        self._threads: list[threading.Thread] = []
        self._down_until: dict[str, float] = {}
        self._last_health = -math.inf
        self._last_orphan_check = time.monotonic()
        # On a shared (PostgreSQL) queue other hosts' senders may die at any time, not only before our start.
        self._shared_queue = self.outbox.index.dialect.name == "postgresql"
        self._dispatcher: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._stop.clear()
        # Hand-offs of a sender killed mid-send are due now, not when their lease runs out.
        self.outbox.release_orphans()
        self._dispatcher = threading.Thread(target=self._run, name="outbox-dispatcher", daemon=True)
        self._dispatcher.start()
        log.info("outbox_started", concurrency=self.cfg.outbox.concurrency_per_destination,
                 destinations=[p.ae_title for p in self.cfg.dicom.peers if p.port is not None])

    def stop(self) -> None:
        self._stop.set()
        self.outbox.changed.set()
        if self._dispatcher is not None:
            self._dispatcher.join(timeout=30)
        for t in list(self._threads):
            t.join(timeout=max(30.0, self.cfg.dicom.dimse_timeout))
        log.info("outbox_stopped")

    def drain(self, timeout: float, sop_instance_uids: Iterable[str] | None = None, destination: str | None = None,
              progress=None) -> list[OutboxItem]:
        """Wait until the given items (all items when None) are sent or failed, or ``timeout`` passes.

        Returns their rows as they stand at the end. ``progress(done, total)`` is called as they go.
        """
        uids = list(sop_instance_uids) if sop_instance_uids is not None else None
        deadline = time.monotonic() + timeout
        while True:
            rows = self.outbox.items(destination=destination, sop_instance_uids=uids)
            done = sum(1 for r in rows if r.state in ("sent", "failed"))
            if progress is not None:
                progress(done, len(rows))
            if done == len(rows) or time.monotonic() >= deadline or self._stop.is_set():
                return rows
            self.outbox.changed.set()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    # -- dispatching ---------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._dispatch_once()
            except DATABASE_ERRORS as exc:  # a busy, damaged or unreachable database must not end the sender for good
                log.error("outbox_dispatch_failed", error=f"{type(exc).__name__}: {exc}")
            except Exception:
                log.exception("outbox_dispatch_crashed")
            wait = self.outbox.next_due_in()
            wait = self.poll_interval_s if wait is None else min(self.poll_interval_s, max(wait, 0.01))
            self.outbox.changed.wait(wait)
            self.outbox.changed.clear()
        self._threads = [t for t in self._threads if t.is_alive()]

    def _dispatch_once(self) -> None:
        now = time.monotonic()
        if self._shared_queue and now - self._last_orphan_check >= ORPHAN_CHECK_S:
            self._last_orphan_check = now
            self.outbox.release_orphans()
        if self.health_interval_s > 0 and now - self._last_health >= self.health_interval_s:
            self._last_health = now
            self._check_all_health()
        for destination in self.outbox.due_destinations():
            if self._stop.is_set():
                return
            peer = self.cfg.peer(destination)
            if peer is None or peer.port is None:
                self._defer_unconfigured(destination)
                continue
            if not self._destination_ready(destination):
                continue
            with self._lock:
                active = self._active.get(destination, 0)
                wanted = self.cfg.outbox.concurrency_per_destination - active
                for _ in range(max(0, wanted)):
                    self._active[destination] = self._active.get(destination, 0) + 1
                    t = threading.Thread(target=self._sender, args=(destination,), name=f"outbox-{destination}", daemon=True)
                    self._threads.append(t)
                    t.start()
        self._threads = [t for t in self._threads if t.is_alive()]

    def _destination_ready(self, destination: str) -> bool:
        """True when sends may go; a destination marked down gets a C-ECHO once its backoff has passed."""
        until = self._down_until.get(destination)
        if until is None:
            return True
        if time.monotonic() < until:
            return False
        result = self._echo(destination)
        if result:
            self._down_until.pop(destination, None)
            # Everything that waited for this destination is due now, not after its own backoff.
            self.outbox.make_due(destination=destination, include_failed=False)
            log.info("destination_back", destination=destination)
            return True
        return False

    def _echo(self, destination: str) -> bool:
        from service.dicom.scu import echo

        peer = self.cfg.peer(destination)
        assert peer is not None
        result = echo(self.cfg, peer, timeout=min(10.0, self.cfg.dicom.acse_timeout))
        health = self.outbox.record_health(destination, result.ok, result.detail)
        if not result.ok:
            self._mark_down(destination, health.consecutive_failures, result.detail)
        return result.ok

    def _mark_down(self, destination: str, failures: int, error: str) -> None:
        delay = backoff_delay(max(1, failures), self.cfg.outbox.backoff_initial_s, self.cfg.outbox.backoff_max_s)
        self._down_until[destination] = time.monotonic() + delay
        log.warning("destination_down", destination=destination, retry_in_s=round(delay, 1), error=error)

    def _check_all_health(self) -> None:
        for peer in self.cfg.dicom.peers:
            if peer.port is None or self._stop.is_set():
                continue
            if peer.ae_title in self._down_until:
                continue  # already being probed on its backoff
            self._echo(peer.ae_title)

    def _defer_unconfigured(self, destination: str) -> None:
        for item in self.outbox.claim(destination, 1000):
            self.outbox.mark_retry(item, f"destination {destination!r} is no longer a dicom.peers entry with a port", reason="not_configured")

    # -- sending -------------------------------------------------------------------------------------

    def _sender(self, destination: str) -> None:
        from service.dicom.scu import CannotSend, DestinationUnavailable, StoreAssociation, contexts_needed

        peer = self.cfg.peer(destination)
        assoc: StoreAssociation | None = None
        try:
            while not self._stop.is_set() and peer is not None:
                batch = self.outbox.claim(destination, self.batch_size)
                if not batch:
                    return
                missing = [it for it in batch if not it.path]
                for it in missing:
                    self.outbox.mark_failed(it, "the instance is no longer in the store")
                batch = [it for it in batch if it.path]
                pairs = {(it.sop_class_uid, it.transfer_syntax_uid) for it in batch}
                if assoc is None or not assoc.is_open or not assoc.covers(pairs):
                    if assoc is not None:
                        assoc.close()
                    assoc = None
                    if contexts_needed(pairs) > 120:
                        # Pathological mix of SOP classes: send this batch one item per association.
                        self.outbox.release(batch[1:])
                        batch = batch[:1]
                        pairs = {(batch[0].sop_class_uid, batch[0].transfer_syntax_uid)}
                    candidate = StoreAssociation(self.cfg, peer, pairs)
                    try:
                        candidate.open()
                    except DestinationUnavailable as exc:
                        for it in batch:
                            self.outbox.mark_retry(it, str(exc), reason="unreachable")
                        health = self.outbox.record_health(destination, False, str(exc))
                        self._mark_down(destination, health.consecutive_failures, str(exc))
                        candidate.close()
                        return
                    assoc = candidate
                    self.outbox.record_health(destination, True)
                for n, item in enumerate(batch):
                    if self._stop.is_set():
                        self.outbox.release(batch[n:])
                        return
                    try:
                        result = assoc.send(self.root / item.path, item.sop_class_uid, item.transfer_syntax_uid)
                    except CannotSend as exc:
                        self.outbox.mark_retry(item, str(exc), reason="cannot_send")
                        continue
                    except DestinationUnavailable as exc:
                        self.outbox.mark_retry(item, str(exc), reason="association_lost")
                        self.outbox.release(batch[n + 1:])
                        health = self.outbox.record_health(destination, False, str(exc))
                        self._mark_down(destination, health.consecutive_failures, str(exc))
                        return
                    if result.delivered:
                        self.outbox.mark_sent(item, result.status, result.detail)
                        log.info("sent", destination=destination, sop=uid_hash(item.sop_instance_uid), status=f"0x{result.status:04X}",
                                 transfer_syntax=result.transfer_syntax)
                    else:
                        self.outbox.mark_retry(item, result.detail, status=result.status, reason="refused")
        except Exception:
            log.exception("outbox_sender_crashed", destination=destination)
        finally:
            if assoc is not None:
                assoc.close()
            with self._lock:
                self._active[destination] = self._active.get(destination, 1) - 1
            self.outbox.changed.set()
