"""The PostgreSQL queue schema and its versions, created or migrated when a listener opens the queue.

Each entry of ``_MIGRATIONS`` takes the schema from version i to i + 1; the version is the
one row of ``schema_version``. Listeners starting together serialize on an advisory lock
held for the migrating transaction, so exactly one creates the tables and the others find
them. ``docs/queue.md`` describes every column and which hold patient data.
"""

from __future__ import annotations

from typing import Any

import psycopg

from lasan.errors import QueueStorageError

__all__ = ["SCHEMA_VERSION", "migrate"]

# Any fixed 64-bit number: the key of the advisory lock that serializes schema changes.
_LOCK_KEY = 0x1A5A_0001

_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """CREATE TABLE items (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            sender_app TEXT NOT NULL,
            sender_facility TEXT NOT NULL,
            control_id TEXT NOT NULL,
            source TEXT NOT NULL,
            kind TEXT NOT NULL,
            raw BYTEA NOT NULL,
            ack TEXT,
            digest TEXT,
            state TEXT NOT NULL DEFAULT 'received' CHECK (state IN ('received', 'scored', 'sent', 'failed')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT,
            result TEXT,
            result_control_id TEXT,
            outcome TEXT CHECK (outcome IN ('scored', 'not_scored')),
            reason TEXT,
            leased_by TEXT,
            leased_at DOUBLE PRECISION,
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
            received_at DOUBLE PRECISION NOT NULL,
            scored_at DOUBLE PRECISION,
            sent_at DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            UNIQUE (sender_app, sender_facility, control_id)
        )""",
        "CREATE INDEX items_due ON items (next_attempt_at, id) WHERE state IN ('received', 'scored')",
        "CREATE INDEX items_state ON items (state, id)",
        """CREATE TABLE deliveries (
            item_id BIGINT NOT NULL REFERENCES items (id) ON DELETE CASCADE,
            target TEXT NOT NULL,
            payload BYTEA NOT NULL,
            state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent')),
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            last_error TEXT,
            leased_by TEXT,
            leased_at DOUBLE PRECISION,
            lease_until DOUBLE PRECISION NOT NULL DEFAULT 0,
            created_at DOUBLE PRECISION NOT NULL,
            sent_at DOUBLE PRECISION,
            PRIMARY KEY (item_id, target)
        )""",
        "CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE state = 'pending'",
    ),
)
SCHEMA_VERSION = len(_MIGRATIONS)


def migrate(cur: psycopg.Cursor[Any], where: str) -> int:
    """Create or upgrade the schema in the caller's transaction; returns the version found before.

    Raises:
        QueueStorageError: the database holds a newer schema than this LASAN understands.
    """
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_KEY,))
    cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
    row = cur.execute("SELECT version FROM schema_version").fetchone()
    if row is None:
        cur.execute("INSERT INTO schema_version (version) VALUES (0)")
    version = 0 if row is None else int(row[0])
    if version > SCHEMA_VERSION:
        raise QueueStorageError(
            f"the queue database {where} has schema version {version}, newer than this LASAN understands "
            f"({SCHEMA_VERSION}); upgrade this listener to the version the other listeners run"
        )
    for step in _MIGRATIONS[version:]:
        for statement in step:
            cur.execute(statement)
    cur.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION,))
    return version
