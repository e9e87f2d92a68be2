"""The durable queue: every accepted message is on disk before anyone is told so.

SQLite in WAL mode with ``synchronous=FULL``: a commit returns only after the WAL is
fsynced, so an ACK sent after :meth:`DurableQueue.enqueue` returns survives a crash or
a power cut (Mirth's "store before acknowledge"; MONAI Informatics Gateway is the
counter-example that acknowledges first and loses in-flight messages).

Item life cycle::

    received ──score──► scored ──downstream AA──► sent
        │  ▲               │  ▲
        └──┘ retry         └──┘ retry (attempts, next_attempt_at with backoff)
        └──► failed (permanent: the ECG can never be scored; kept, never deleted)

The idempotency key is (sending application, sending facility, control id): a message
re-sent with the same key is not stored again and gets the ACK stored the first time.
The result message is stored (state ``scored``) *before* it is sent, so a retry after a
crash re-sends byte-identical content with the same result MSH-10; downstream systems
drop the duplicate by MSH-10. Nothing is held in memory: a restart resumes from the DB.

One connection, guarded by a lock, is shared by the asyncio loop and the DICOM
receiver's threads; each call is one short transaction.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lasan.errors import QueueStorageError
from lasan.integration.private import FILE_MODE, private_dir, private_file

__all__ = ["IdempotencyKey", "QueueItem", "EnqueueOutcome", "DurableQueue", "STATES"]

STATES = ("received", "scored", "sent", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    sender_app TEXT NOT NULL,
    sender_facility TEXT NOT NULL,
    control_id TEXT NOT NULL,
    source TEXT NOT NULL,            -- hl7 | dicom | watch
    kind TEXT NOT NULL,              -- hl7 | dicom : how to read raw
    raw BLOB NOT NULL,
    ack TEXT,                        -- the ACK returned to the sender (HL7)
    state TEXT NOT NULL DEFAULT 'received',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    last_error TEXT,
    result TEXT,                     -- the result ORU^R01, stored before it is sent
    result_control_id TEXT,
    received_at REAL NOT NULL,
    scored_at REAL,
    sent_at REAL,
    UNIQUE (sender_app, sender_facility, control_id)
);
CREATE INDEX IF NOT EXISTS items_due ON items (state, next_attempt_at);
"""


@dataclass(frozen=True)
class IdempotencyKey:
    """Who sent the message and its control ID (HL7 MSH-3, MSH-4, MSH-10; DICOM AE title, SOP Instance UID)."""

    sender_app: str
    sender_facility: str
    control_id: str

    def __str__(self) -> str:  # safe to log: no patient data
        return f"{self.sender_app}|{self.sender_facility}|{self.control_id}"


@dataclass(frozen=True)
class QueueItem:
    id: int
    key: IdempotencyKey
    source: str
    kind: str
    raw: bytes
    ack: str | None
    state: str
    attempts: int
    next_attempt_at: float
    last_error: str | None
    result: str | None
    result_control_id: str | None
    received_at: float


@dataclass(frozen=True)
class EnqueueOutcome:
    item_id: int
    ack: str | None
    duplicate: bool  # True: the key was already stored; nothing new was written


class DurableQueue:
    """SQLite-backed queue (see the module docstring for the guarantees).

    Raises:
        QueueStorageError: from every method when SQLite cannot read or write (disk full,
            file locked, corrupt database). Callers must then not ACK ``AA``.
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
            self._db.executescript(_SCHEMA)
            for side in ("-wal", "-shm"):
                if (extra := self.path.with_name(self.path.name + side)).exists():
                    os.chmod(extra, FILE_MODE)
        except (sqlite3.Error, OSError) as exc:
            raise QueueStorageError(
                f"cannot open the queue database {self.path}: {exc}; check the path in storage.queue_db, "
                "its permissions and free disk space"
            ) from exc
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> DurableQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, what: str, fn: Callable[[sqlite3.Connection], object]) -> object:
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

    def lookup(self, key: IdempotencyKey) -> EnqueueOutcome | None:
        """The stored outcome for ``key`` if that message was already accepted."""

        def fn(db: sqlite3.Connection) -> EnqueueOutcome | None:
            row = db.execute(
                "SELECT id, ack FROM items WHERE sender_app=? AND sender_facility=? AND control_id=?",
                (key.sender_app, key.sender_facility, key.control_id),
            ).fetchone()
            return EnqueueOutcome(row[0], row[1], True) if row else None

        return self._run("look up a message", fn)  # type: ignore[return-value]

    def enqueue(self, key: IdempotencyKey, raw: bytes, *, source: str, kind: str, ack: str | None = None) -> EnqueueOutcome:
        """Store a message durably (fsynced on return), or return the earlier outcome for a duplicate key."""

        def fn(db: sqlite3.Connection) -> EnqueueOutcome:
            row = db.execute(
                "SELECT id, ack FROM items WHERE sender_app=? AND sender_facility=? AND control_id=?",
                (key.sender_app, key.sender_facility, key.control_id),
            ).fetchone()
            if row:
                return EnqueueOutcome(row[0], row[1], True)
            cur = db.execute(
                "INSERT INTO items (sender_app, sender_facility, control_id, source, kind, raw, ack, received_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (key.sender_app, key.sender_facility, key.control_id, source, kind, raw, ack, time.time()),
            )
            return EnqueueOutcome(int(cur.lastrowid or 0), ack, False)

        return self._run("store a message", fn)  # type: ignore[return-value]

    # -- work -------------------------------------------------------------------------------

    def due(self, now: float | None = None, limit: int = 32, *, after_id: int = 0) -> list[QueueItem]:
        """Items waiting for work (received or scored) whose next attempt time has come, oldest first.

        ``after_id`` keeps only items stored after that one (IDs only grow): what arrived since.
        """
        now = time.time() if now is None else now

        def fn(db: sqlite3.Connection) -> list[QueueItem]:
            rows = db.execute(
                f"SELECT {_COLUMNS} FROM items WHERE state IN ('received', 'scored') AND next_attempt_at <= ? "
                "AND id > ? ORDER BY next_attempt_at, id LIMIT ?",
                (now, after_id, limit),
            ).fetchall()
            return [_item(r) for r in rows]

        return self._run("list due items", fn)  # type: ignore[return-value]

    def get(self, item_id: int) -> QueueItem:
        def fn(db: sqlite3.Connection) -> QueueItem:
            row = db.execute(f"SELECT {_COLUMNS} FROM items WHERE id=?", (item_id,)).fetchone()
            if row is None:
                raise QueueStorageError(f"queue item {item_id} does not exist")
            return _item(row)

        return self._run("read an item", fn)  # type: ignore[return-value]

    def mark_scored(self, item_id: int, result: str, result_control_id: str) -> None:
        """Store the result message; from now on retries send exactly this text."""
        self._update(
            item_id,
            "store a result",
            "state='scored', result=?, result_control_id=?, scored_at=?, last_error=NULL, next_attempt_at=0",
            (result, result_control_id, time.time()),
            expect_states=("received",),
        )

    def mark_sent(self, item_id: int) -> None:
        self._update(item_id, "mark an item sent", "state='sent', sent_at=?, last_error=NULL", (time.time(),),
                     expect_states=("scored",))

    def schedule_retry(self, item_id: int, error: str, delay_s: float) -> int:
        """Count a failed attempt and schedule the next; returns the attempt count."""

        def fn(db: sqlite3.Connection) -> int:
            db.execute(
                "UPDATE items SET attempts=attempts+1, last_error=?, next_attempt_at=? WHERE id=?",
                (error[:500], time.time() + delay_s, item_id),
            )
            return int(db.execute("SELECT attempts FROM items WHERE id=?", (item_id,)).fetchone()[0])

        return self._run("schedule a retry", fn)  # type: ignore[return-value]

    def mark_failed(self, item_id: int, error: str) -> None:
        """A permanent failure (the ECG can never be scored). The item stays in the DB for review."""
        self._update(item_id, "mark an item failed", "state='failed', last_error=?, attempts=attempts+1",
                     (error[:500],), expect_states=("received", "scored"))

    def _update(self, item_id: int, what: str, assignments: str, params: tuple, expect_states: tuple[str, ...]) -> None:
        def fn(db: sqlite3.Connection) -> None:
            placeholders = ",".join("?" for _ in expect_states)
            cur = db.execute(
                f"UPDATE items SET {assignments} WHERE id=? AND state IN ({placeholders})",
                (*params, item_id, *expect_states),
            )
            if cur.rowcount != 1:
                raise QueueStorageError(
                    f"queue item {item_id} is not in state {'/'.join(expect_states)}; refusing to {what}"
                )

        self._run(what, fn)

    # -- observation -----------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Number of items per state (every state present, zero when empty)."""

        def fn(db: sqlite3.Connection) -> dict[str, int]:
            out = dict.fromkeys(STATES, 0)
            for state, n in db.execute("SELECT state, COUNT(*) FROM items GROUP BY state"):
                out[state] = int(n)
            return out

        return self._run("count items", fn)  # type: ignore[return-value]

    def depth(self) -> int:
        """Items not yet finished (received + scored)."""
        c = self.counts()
        return c["received"] + c["scored"]


_COLUMNS = (
    "id, sender_app, sender_facility, control_id, source, kind, raw, ack, state, attempts, "
    "next_attempt_at, last_error, result, result_control_id, received_at"
)


def _item(row: tuple) -> QueueItem:
    return QueueItem(
        id=int(row[0]),
        key=IdempotencyKey(row[1], row[2], row[3]),
        source=row[4],
        kind=row[5],
        raw=bytes(row[6]),
        ack=row[7],
        state=row[8],
        attempts=int(row[9]),
        next_attempt_at=float(row[10]),
        last_error=row[11],
        result=row[12],
        result_control_id=row[13],
        received_at=float(row[14]),
    )
