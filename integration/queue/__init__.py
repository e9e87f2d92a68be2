"""The durable queue: every accepted message is stored before anyone is told so.

Item life cycle::

    received ──score──► scored ──downstream AA──► sent
        │  ▲               │  ▲
        └──┘ retry         └──┘ retry (attempts, next_attempt_at with backoff)
        ├──► scored with outcome 'not_scored' (the ECG can never be scored: a "not scored"
        │    result is stored and delivered like any result)
        └──► failed (not even an error result can be built; kept for review, re-queueable)

The idempotency key is (sending application, sending facility, control id): a message
re-sent with the same key is not stored again and gets the ACK stored the first time; a
key re-used for a message with another digest is a conflict. The result message is
stored (state ``scored``) *before* it is sent, so a retry after a crash re-sends
byte-identical content with the same result MSH-10; downstream systems drop the duplicate
by MSH-10. Workers :meth:`~Queue.lease` items, so several nodes share one queue without
working on the same item; a dead node's leases expire and another node takes over.

Two backends implement :class:`Queue`: :class:`DurableQueue` (alias :class:`SQLiteQueue`,
one listener, a local file; the default) and :class:`PostgresQueue` (several listeners on
one PostgreSQL database). :func:`open_queue` picks one from ``storage``; ``docs/queue.md``
lists the schema, its versions, the patient data stored and each backend's guarantees.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lasan.integration.queue.base import (
    STATES,
    Delivery,
    EnqueueOutcome,
    IdempotencyKey,
    Queue,
    QueueItem,
)
from lasan.integration.queue.sqlite import DurableQueue, SQLiteQueue

if TYPE_CHECKING:
    from lasan.integration.config import StorageConfig
    from lasan.integration.queue.postgres import PostgresQueue

__all__ = [
    "STATES",
    "IdempotencyKey",
    "QueueItem",
    "EnqueueOutcome",
    "Delivery",
    "Queue",
    "DurableQueue",
    "SQLiteQueue",
    "PostgresQueue",
    "open_queue",
]


def open_queue(storage: StorageConfig) -> Queue:
    """The queue ``storage`` names: PostgreSQL when ``storage.queue_url`` is set, else the SQLite file.

    The schema is created or migrated before this returns.

    Raises:
        QueueStorageError: the database cannot be opened, reached or migrated.
    """
    url = getattr(storage, "queue_url", None)
    if url:
        from lasan.integration.queue.postgres import PostgresQueue

        return PostgresQueue(url)
    return DurableQueue(storage.queue_db)


def __getattr__(name: str) -> Any:
    # PostgresQueue imports psycopg: only when asked for, so SQLite-only installs never need it.
    if name == "PostgresQueue":
        from lasan.integration.queue.postgres import PostgresQueue

        return PostgresQueue
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
