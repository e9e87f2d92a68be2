"""What a queue is, whatever stores it: the records it hands out and the :class:`Queue` protocol.

Both backends (:mod:`.sqlite`, :mod:`.postgres`) implement :class:`Queue` and pass one
conformance test module (``tests/integration/test_queue_conformance.py``). Their common
rules live here so that they cannot drift apart: the columns an item is read from, how
a stored digest turns a re-sent key into a duplicate or a conflict, and the states.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from lasan.errors import QueueStorageError

__all__ = [
    "STATES",
    "OUTCOMES",
    "IdempotencyKey",
    "QueueItem",
    "EnqueueOutcome",
    "Delivery",
    "Queue",
    "ITEM_COLUMNS",
    "DELIVERY_COLUMNS",
    "item_from_row",
    "delivery_from_row",
    "stored_outcome",
    "check_state",
    "check_requeue",
    "PURGEABLE_SQL",
    "REQUEUE_SQL",
    "ERROR_CHARS",
]

STATES = ("received", "scored", "sent", "failed")
OUTCOMES = ("scored", "not_scored")
# Short enough for a log line, long enough for the reason; stored errors never hold patient data.
ERROR_CHARS = 500


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
    outcome: str | None = None  # 'scored' | 'not_scored' once a result is stored
    leased_by: str | None = None  # the worker holding the item, None when free


@dataclass(frozen=True)
class EnqueueOutcome:
    item_id: int
    ack: str | None
    duplicate: bool  # True: the key was already stored; nothing new was written
    # True: the key was already stored for a message with a DIFFERENT digest (a re-used
    # MSH-10). ``duplicate`` is True as well (nothing was written), so the caller must
    # check ``conflict`` first and refuse the message instead of answering the stored ACK.
    conflict: bool = False


@dataclass(frozen=True)
class Delivery:
    """One extra result target of an item (PACS, FHIR): its payload, retried until delivered."""

    item_id: int
    target: str
    payload: bytes
    attempts: int
    next_attempt_at: float
    last_error: str | None
    key: IdempotencyKey


class Queue(Protocol):
    """The durable queue, whatever stores it.

    Every method raises :class:`lasan.errors.QueueStorageError` when the database cannot be
    reached, read or written (PostgreSQL connection loss included): the caller must then not
    answer ``AA``. ``mark_*`` and ``schedule_retry`` also raise it when the item is not in a
    state that allows the change (a second scoring never overwrites a stored result).
    """

    def close(self) -> None: ...

    def lookup(self, key: IdempotencyKey, digest: str | None = None) -> EnqueueOutcome | None: ...

    def enqueue(self, key: IdempotencyKey, raw: bytes, *, source: str, kind: str, ack: str | None = None,
                digest: str | None = None) -> EnqueueOutcome: ...

    def lease(self, worker: str, *, limit: int, lease_s: float, now: float | None = None) -> list[QueueItem]: ...

    def release_leases(self, worker: str) -> int: ...

    def due(self, now: float | None = None, limit: int = 32, *, after_id: int = 0) -> list[QueueItem]: ...

    def get(self, item_id: int) -> QueueItem: ...

    def mark_scored(self, item_id: int, result: str, result_control_id: str,
                    deliveries: Mapping[str, bytes] | None = None) -> None: ...

    def mark_unscorable(self, item_id: int, error: str, result: str, result_control_id: str) -> None: ...

    def mark_sent(self, item_id: int) -> None: ...

    def schedule_retry(self, item_id: int, error: str, delay_s: float) -> int: ...

    def mark_failed(self, item_id: int, error: str) -> None: ...

    def lease_deliveries(self, worker: str, *, limit: int, lease_s: float,
                         now: float | None = None) -> list[Delivery]: ...

    def mark_delivered(self, item_id: int, target: str) -> None: ...

    def schedule_delivery_retry(self, item_id: int, target: str, error: str, delay_s: float) -> int: ...

    def delivery_counts(self) -> dict[str, dict[str, int]]: ...

    def items(self, state: str | None = None, *, limit: int = 100) -> list[QueueItem]: ...

    def requeue(self, item_id: int) -> None: ...

    def purge(self, older_than_s: float, *, now: float | None = None) -> int: ...

    def oldest_lease_age_s(self, now: float | None = None) -> float | None: ...

    def counts(self) -> dict[str, int]: ...

    def depth(self) -> int: ...


ITEM_COLUMNS = (
    "id, sender_app, sender_facility, control_id, source, kind, raw, ack, state, attempts, "
    "next_attempt_at, last_error, result, result_control_id, received_at, outcome, leased_by"
)
DELIVERY_COLUMNS = (
    "d.item_id, d.target, d.payload, d.attempts, d.next_attempt_at, d.last_error, "
    "i.sender_app, i.sender_facility, i.control_id"
)


def item_from_row(row: tuple) -> QueueItem:
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
        outcome=row[15],
        leased_by=row[16],
    )


def delivery_from_row(row: tuple) -> Delivery:
    return Delivery(
        item_id=int(row[0]),
        target=row[1],
        payload=bytes(row[2]),
        attempts=int(row[3]),
        next_attempt_at=float(row[4]),
        last_error=row[5],
        key=IdempotencyKey(row[6], row[7], row[8]),
    )


def stored_outcome(item_id: int, ack: str | None, stored_digest: str | None, digest: str | None) -> EnqueueOutcome:
    """The answer for a key that is already stored: a duplicate, or a conflict when the digests differ.

    Either digest unknown (an item stored before digests existed, or a caller that gives
    none) counts as the same message, as before digests: the original ACK.
    """
    conflict = stored_digest is not None and digest is not None and stored_digest != digest
    return EnqueueOutcome(item_id, ack, True, conflict)


# Shared SQL (``%s`` placeholders; the SQLite backend swaps in ``?``).
PURGEABLE_SQL = (
    "SELECT id FROM items WHERE state IN ('sent', 'failed') AND finished_at IS NOT NULL AND finished_at <= %s "
    "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.item_id = items.id AND d.state <> 'sent')"
)
REQUEUE_SQL = (
    "state='received', attempts=0, next_attempt_at=0, result=NULL, result_control_id=NULL, outcome=NULL, "
    "reason=NULL, scored_at=NULL, sent_at=NULL, finished_at=NULL"
)


def check_state(state: str | None) -> None:
    if state is not None and state not in STATES:
        raise QueueStorageError(f"unknown queue state {state!r}; use one of {', '.join(STATES)}")


def check_requeue(item_id: int, row: tuple | None) -> None:
    """Only a failed or not-scored item goes back to ``received``."""
    if row is None:
        raise QueueStorageError(f"queue item {item_id} does not exist")
    if row[0] != "failed" and row[1] != "not_scored":
        raise QueueStorageError(f"queue item {item_id} is {row[0]}; only failed or not-scored items can be re-queued")
