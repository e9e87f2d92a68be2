"""The SQLite backend: one listener, one file, every accepted message on disk before the ACK.

SQLite in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is
fsynced, so an ACK sent after :meth:`DurableQueue.enqueue` returns survives a crash or
a power cut (Mirth's "store before acknowledge"; MONAI Informatics Gateway is the
counter-example that acknowledges first and loses in-flight messages).

The file belongs to one listener process: leases left by a process that died are void
when the file is opened again, so a restarted listener resumes at once. Several
listeners on one queue need the PostgreSQL backend (:mod:`.postgres`).

One connection, guarded by a lock, is shared by the asyncio loop, the worker thread and
the DICOM receiver's threads; each call is one short ``BEGIN IMMEDIATE`` transaction.
The schema is versioned with ``PRAGMA user_version`` and older files are migrated in
place when opened (see ``docs/queue.md``).
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from lasan.errors import QueueStorageError
from lasan.integration.private import FILE_MODE, private_dir, private_file
from lasan.integration.queue.base import (
    DELIVERY_COLUMNS,
    ERROR_CHARS,
    ITEM_COLUMNS,
    PURGEABLE_SQL,
    REQUEUE_SQL,
    STATES,
    Delivery,
    EnqueueOutcome,
    IdempotencyKey,
    QueueItem,
    check_requeue,
    check_state,
    delivery_from_row,
    item_from_row,
    stored_outcome,
)

__all__ = ["DurableQueue", "SQLiteQueue", "SCHEMA_VERSION"]

T = TypeVar("T")

# Each entry upgrades the schema from version i to i + 1 (``PRAGMA user_version``).
# Version 1 is the table every queue file written before versioning holds (user_version 0).
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE IF NOT EXISTS items (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            sender_app TEXT NOT NULL,
            sender_facility TEXT NOT NULL,
            control_id TEXT NOT NULL,
            source TEXT NOT NULL,            -- hl7 | dicom | watch
            kind TEXT NOT NULL,              -- how to read raw: hl7 | dicom | ...
            raw BLOB NOT NULL,               -- the message as received: patient data
            ack TEXT,                        -- the ACK returned to the sender (HL7)
            state TEXT NOT NULL DEFAULT 'received',
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            result TEXT,                     -- the result ORU^R01, stored before it is sent: patient data
            result_control_id TEXT,
            received_at REAL NOT NULL,
            scored_at REAL,
            sent_at REAL,
            UNIQUE (sender_app, sender_facility, control_id)
        )""",
        "CREATE INDEX IF NOT EXISTS items_due ON items (state, next_attempt_at)",
    ),
    (
        "ALTER TABLE items ADD COLUMN digest TEXT",  # sha256 of the message content: a re-used key is a conflict
        "ALTER TABLE items ADD COLUMN outcome TEXT",  # scored | not_scored, once a result is stored
        "ALTER TABLE items ADD COLUMN reason TEXT",  # why an item was not scored, kept once its result is sent
        "ALTER TABLE items ADD COLUMN leased_by TEXT",
        "ALTER TABLE items ADD COLUMN leased_at REAL",
        "ALTER TABLE items ADD COLUMN lease_until REAL NOT NULL DEFAULT 0",
        "ALTER TABLE items ADD COLUMN finished_at REAL",  # sent or failed: the retention clock starts
        "UPDATE items SET outcome='scored' WHERE result IS NOT NULL",
        "UPDATE items SET finished_at=COALESCE(sent_at, scored_at, received_at) WHERE state IN ('sent', 'failed')",
        """CREATE TABLE IF NOT EXISTS deliveries (
            item_id INTEGER NOT NULL REFERENCES items (id),
            target TEXT NOT NULL,            -- pacs | fhir | ...
            payload BLOB NOT NULL,           -- what is sent there: patient data
            state TEXT NOT NULL DEFAULT 'pending',  -- pending | sent
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL DEFAULT 0,
            last_error TEXT,
            leased_by TEXT,
            leased_at REAL,
            lease_until REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            sent_at REAL,
            PRIMARY KEY (item_id, target)
        )""",
        "CREATE INDEX IF NOT EXISTS deliveries_due ON deliveries (state, next_attempt_at)",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)

_RELEASE = "leased_by=NULL, leased_at=NULL, lease_until=0"
_KEY_WHERE = "sender_app=? AND sender_facility=? AND control_id=?"


class DurableQueue:
    """SQLite-backed :class:`~lasan.integration.queue.Queue` (see the module docstring).

    Raises:
        QueueStorageError: from every method when SQLite cannot read or write (disk full,
            file locked, corrupt database, a file written by a newer LASAN). Callers must
            then not ACK ``AA``.
    """

    def __init__(self, path: str | Path, *, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        try:
            # 0600 before SQLite opens it: SQLite gives the -wal and -shm files the database's mode.
            private_file(private_dir(self.path.parent) / self.path.name)
            self._db = sqlite3.connect(
                str(self.path), timeout=busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            # Purged rows are overwritten with zeros, not left readable in free pages (patient data).
            self._db.execute("PRAGMA secure_delete=ON")
            for side in ("-wal", "-shm"):
                if (extra := self.path.with_name(self.path.name + side)).exists():
                    os.chmod(extra, FILE_MODE)
        except (sqlite3.Error, OSError) as exc:
            raise QueueStorageError(
                f"cannot open the queue database {self.path}: {exc}; check the path in storage.queue_db, "
                "its permissions and free disk space"
            ) from exc
        self._lock = threading.Lock()
        self._run("migrate the queue schema", self._migrate)

    def _migrate(self, db: sqlite3.Connection) -> None:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise QueueStorageError(
                f"the queue database {self.path} has schema version {version}, newer than this LASAN "
                f"understands ({SCHEMA_VERSION}); run the LASAN version that wrote it, or point storage.queue_db "
                "at another file"
            )
        for step in _MIGRATIONS[version:]:
            for statement in step:
                db.execute(statement)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        # One process owns the file: leases of a process that died with them are void now.
        db.execute(f"UPDATE items SET {_RELEASE} WHERE leased_by IS NOT NULL")
        db.execute(f"UPDATE deliveries SET {_RELEASE} WHERE leased_by IS NOT NULL")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DurableQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    out = fn(self._db)
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
                return out
            except sqlite3.Error as exc:
                raise QueueStorageError(f"the durable queue could not {what}: {exc}") from exc

    # -- intake -----------------------------------------------------------------------------

    def lookup(self, key: IdempotencyKey, digest: str | None = None) -> EnqueueOutcome | None:
        """The stored outcome for ``key`` if that message was already accepted (``conflict`` when its digest differs)."""

        def fn(db: sqlite3.Connection) -> EnqueueOutcome | None:
            row = db.execute(f"SELECT id, ack, digest FROM items WHERE {_KEY_WHERE}",
                             (key.sender_app, key.sender_facility, key.control_id)).fetchone()
            return stored_outcome(row[0], row[1], row[2], digest) if row else None

        return self._run("look up a message", fn)

    def enqueue(self, key: IdempotencyKey, raw: bytes, *, source: str, kind: str, ack: str | None = None,
                digest: str | None = None) -> EnqueueOutcome:
        """Store a message durably (fsynced on return), or return the earlier outcome for a stored key."""

        def fn(db: sqlite3.Connection) -> EnqueueOutcome:
            row = db.execute(f"SELECT id, ack, digest FROM items WHERE {_KEY_WHERE}",
                             (key.sender_app, key.sender_facility, key.control_id)).fetchone()
            if row:
                return stored_outcome(row[0], row[1], row[2], digest)
            cur = db.execute(
                "INSERT INTO items (sender_app, sender_facility, control_id, source, kind, raw, ack, digest, "
                "received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (key.sender_app, key.sender_facility, key.control_id, source, kind, raw, ack, digest, time.time()),
            )
            return EnqueueOutcome(int(cur.lastrowid or 0), ack, False)

        return self._run("store a message", fn)

    # -- work -------------------------------------------------------------------------------

    def lease(self, worker: str, *, limit: int, lease_s: float, now: float | None = None) -> list[QueueItem]:
        """Claim up to ``limit`` due items (received/scored, lease free or expired) for ``worker``, oldest first."""
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> list[QueueItem]:
            ids = [r[0] for r in db.execute(
                "SELECT id FROM items WHERE state IN ('received', 'scored') AND next_attempt_at <= ? "
                "AND (leased_by IS NULL OR lease_until <= ?) ORDER BY next_attempt_at, id LIMIT ?",
                (now, now, limit))]
            if not ids:
                return []
            marks = ",".join("?" for _ in ids)
            db.execute(f"UPDATE items SET leased_by=?, leased_at=?, lease_until=? WHERE id IN ({marks})",
                       (worker, now, now + lease_s, *ids))
            rows = db.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id IN ({marks}) "
                              "ORDER BY next_attempt_at, id", ids).fetchall()
            return [item_from_row(r) for r in rows]

        return self._run("lease items", fn)

    def release_leases(self, worker: str) -> int:
        """Give back every item ``worker`` still holds; returns how many.

        Deliveries are not touched: they are sent by a task of their own that may hold some
        right now; theirs end with :meth:`mark_delivered` / :meth:`schedule_delivery_retry`.
        """

        def fn(db: sqlite3.Connection) -> int:
            return db.execute(f"UPDATE items SET {_RELEASE} WHERE leased_by=?", (worker,)).rowcount

        return self._run("release leases", fn)

    def due(self, now: float | None = None, limit: int = 32, *, after_id: int = 0) -> list[QueueItem]:
        """Items waiting for work (received or scored) whose next attempt time has come, oldest first.

        Observation only (leases are ignored; workers use :meth:`lease`). ``after_id`` keeps
        only items stored after that one (IDs only grow): what arrived since.
        """
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> list[QueueItem]:
            rows = db.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE state IN ('received', 'scored') AND next_attempt_at <= ? "
                "AND id > ? ORDER BY next_attempt_at, id LIMIT ?",
                (now, after_id, limit),
            ).fetchall()
            return [item_from_row(r) for r in rows]

        return self._run("list due items", fn)

    def get(self, item_id: int) -> QueueItem:
        def fn(db: sqlite3.Connection) -> QueueItem:
            row = db.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None:
                raise QueueStorageError(f"queue item {item_id} does not exist")
            return item_from_row(row)

        return self._run("read an item", fn)

    def mark_scored(self, item_id: int, result: str, result_control_id: str,
                    deliveries: Mapping[str, bytes] | None = None) -> None:
        """Store the result message (and one pending delivery per extra target) in one transaction.

        From now on retries send exactly this text. The lease is kept: its holder delivers next.
        """
        now = time.time()

        def fn(db: sqlite3.Connection) -> None:
            _update(db, item_id, "store a result", "state='scored', outcome='scored', result=?, result_control_id=?, "
                    "scored_at=?, last_error=NULL, next_attempt_at=0", (result, result_control_id, now), ("received",))
            for target, payload in (deliveries or {}).items():
                db.execute("INSERT OR REPLACE INTO deliveries (item_id, target, payload, created_at) VALUES (?, ?, ?, ?)",
                           (item_id, target, payload, now))

        self._run("store a result", fn)

    def mark_unscorable(self, item_id: int, error: str, result: str, result_control_id: str) -> None:
        """Store a "not scored" result for an ECG that can never be scored; it is delivered like any result."""
        error = error[:ERROR_CHARS]
        self._run("store a not-scored result", lambda db: _update(
            db, item_id, "store a not-scored result",
            "state='scored', outcome='not_scored', reason=?, last_error=?, result=?, result_control_id=?, "
            "scored_at=?, next_attempt_at=0", (error, error, result, result_control_id, time.time()), ("received",)))

    def mark_sent(self, item_id: int) -> None:
        now = time.time()
        self._run("mark an item sent", lambda db: _update(
            db, item_id, "mark an item sent",
            f"state='sent', sent_at=?, finished_at=?, last_error=reason, {_RELEASE}", (now, now), ("scored",)))

    def schedule_retry(self, item_id: int, error: str, delay_s: float) -> int:
        """Count a failed attempt and schedule the next (the lease is released); returns the attempt count."""

        def fn(db: sqlite3.Connection) -> int:
            db.execute(f"UPDATE items SET attempts=attempts+1, last_error=?, next_attempt_at=?, {_RELEASE} WHERE id=?",
                       (error[:ERROR_CHARS], time.time() + delay_s, item_id))
            row = db.execute("SELECT attempts FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None:
                raise QueueStorageError(f"queue item {item_id} does not exist; cannot schedule a retry")
            return int(row[0])

        return self._run("schedule a retry", fn)

    def mark_failed(self, item_id: int, error: str) -> None:
        """A failure that cannot even produce a result. The item stays in the DB for review."""
        self._run("mark an item failed", lambda db: _update(
            db, item_id, "mark an item failed", f"state='failed', last_error=?, attempts=attempts+1, finished_at=?, "
            f"{_RELEASE}", (error[:ERROR_CHARS], time.time()), ("received", "scored")))

    # -- extra delivery targets (PACS, FHIR) ------------------------------------------------

    def lease_deliveries(self, worker: str, *, limit: int, lease_s: float,
                         now: float | None = None) -> list[Delivery]:
        """Claim up to ``limit`` pending deliveries whose next attempt time has come, oldest first."""
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> list[Delivery]:
            keys = db.execute(
                "SELECT item_id, target FROM deliveries WHERE state='pending' AND next_attempt_at <= ? "
                "AND (leased_by IS NULL OR lease_until <= ?) ORDER BY next_attempt_at, item_id, target LIMIT ?",
                (now, now, limit)).fetchall()
            for item_id, target in keys:
                db.execute("UPDATE deliveries SET leased_by=?, leased_at=?, lease_until=? WHERE item_id=? AND target=?",
                           (worker, now, now + lease_s, item_id, target))
            out = []
            for item_id, target in keys:
                row = db.execute(f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN items i ON i.id = d.item_id "
                                 "WHERE d.item_id=? AND d.target=?", (item_id, target)).fetchone()
                out.append(delivery_from_row(row))
            return out

        return self._run("lease deliveries", fn)

    def mark_delivered(self, item_id: int, target: str) -> None:
        def fn(db: sqlite3.Connection) -> None:
            cur = db.execute(f"UPDATE deliveries SET state='sent', sent_at=?, last_error=NULL, {_RELEASE} "
                             "WHERE item_id=? AND target=? AND state='pending'", (time.time(), item_id, target))
            if cur.rowcount != 1:
                raise QueueStorageError(f"queue item {item_id} has no pending {target!r} delivery; "
                                        "refusing to mark it delivered")

        self._run("mark a delivery sent", fn)

    def schedule_delivery_retry(self, item_id: int, target: str, error: str, delay_s: float) -> int:
        def fn(db: sqlite3.Connection) -> int:
            db.execute(f"UPDATE deliveries SET attempts=attempts+1, last_error=?, next_attempt_at=?, {_RELEASE} "
                       "WHERE item_id=? AND target=?", (error[:ERROR_CHARS], time.time() + delay_s, item_id, target))
            row = db.execute("SELECT attempts FROM deliveries WHERE item_id=? AND target=?", (item_id, target)).fetchone()
            if row is None:
                raise QueueStorageError(f"queue item {item_id} has no {target!r} delivery; cannot schedule a retry")
            return int(row[0])

        return self._run("schedule a delivery retry", fn)

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """Per target, deliveries pending and sent."""

        def fn(db: sqlite3.Connection) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for target, state, n in db.execute("SELECT target, state, COUNT(*) FROM deliveries GROUP BY target, state"):
                out.setdefault(target, {"pending": 0, "sent": 0})[state] = int(n)
            return out

        return self._run("count deliveries", fn)

    # -- operations --------------------------------------------------------------------------

    def items(self, state: str | None = None, *, limit: int = 100) -> list[QueueItem]:
        """Items, newest first, optionally only those in ``state``."""
        check_state(state)

        def fn(db: sqlite3.Connection) -> list[QueueItem]:
            where, params = ("WHERE state=?", (state,)) if state else ("", ())
            rows = db.execute(f"SELECT {ITEM_COLUMNS} FROM items {where} ORDER BY id DESC LIMIT ?",
                              (*params, limit)).fetchall()
            return [item_from_row(r) for r in rows]

        return self._run("list items", fn)

    def requeue(self, item_id: int) -> None:
        """Send a failed or not-scored item back to ``received`` (attempts 0) to be scored again."""

        def fn(db: sqlite3.Connection) -> None:
            row = db.execute("SELECT state, outcome FROM items WHERE id=?", (item_id,)).fetchone()
            check_requeue(item_id, row)
            db.execute("DELETE FROM deliveries WHERE item_id=?", (item_id,))
            db.execute(f"UPDATE items SET {REQUEUE_SQL}, {_RELEASE} WHERE id=?", (item_id,))

        self._run("re-queue an item", fn)

    def purge(self, older_than_s: float, *, now: float | None = None) -> int:
        """Delete items sent or failed more than ``older_than_s`` ago whose deliveries are all sent; returns how many."""
        cutoff = (time.time() if now is None else now) - older_than_s

        def fn(db: sqlite3.Connection) -> int:
            ids = [r[0] for r in db.execute(PURGEABLE_SQL.replace("%s", "?"), (cutoff,))]
            for item_id in ids:
                db.execute("DELETE FROM deliveries WHERE item_id=?", (item_id,))
                db.execute("DELETE FROM items WHERE id=?", (item_id,))
            return len(ids)

        n = self._run("purge items", fn)
        if n:
            # The old pages (zeroed by secure_delete) also leave the WAL file.
            with self._lock:
                try:
                    self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                except sqlite3.Error as exc:
                    raise QueueStorageError(f"the durable queue could not checkpoint after a purge: {exc}") from exc
        return n

    def oldest_lease_age_s(self, now: float | None = None) -> float | None:
        """Seconds the oldest lease still held (item or delivery) has been held; None when none is."""
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> float | None:
            row = db.execute("SELECT MIN(t) FROM (SELECT MIN(leased_at) AS t FROM items WHERE leased_by IS NOT NULL "
                             "UNION ALL SELECT MIN(leased_at) FROM deliveries WHERE leased_by IS NOT NULL)").fetchone()
            return None if row[0] is None else max(0.0, now - float(row[0]))

        return self._run("read lease ages", fn)

    def counts(self) -> dict[str, int]:
        """Number of items per state (every state present, zero when empty)."""

        def fn(db: sqlite3.Connection) -> dict[str, int]:
            out = dict.fromkeys(STATES, 0)
            for state, n in db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"):
                out[state] = int(n)
            return out

        return self._run("count items", fn)

    def depth(self) -> int:
        """Items not yet finished (received + scored)."""
        c = self.counts()
        return c["received"] + c["scored"]


SQLiteQueue = DurableQueue

def _update(db: sqlite3.Connection, item_id: int, what: str, assignments: str, params: tuple,
            expect_states: tuple[str, ...]) -> None:
    marks = ",".join("?" for _ in expect_states)
    cur = db.execute(f"UPDATE items SET {assignments} WHERE id=? AND state IN ({marks})",
                     (*params, item_id, *expect_states))
    if cur.rowcount != 1:
        raise QueueStorageError(f"queue item {item_id} is not in state {'/'.join(expect_states)}; refusing to {what}")

