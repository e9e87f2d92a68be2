"""The PostgreSQL backend: several listeners (nodes) share one queue.

The same guarantees as the SQLite backend, now across nodes (Mirth Connect clusters the
same way: N nodes on one database, the message committed before the ACK):

* ``synchronous_commit=on`` for every session: :meth:`PostgresQueue.enqueue` returns only
  after the server flushed the commit to its WAL, so an ``AA`` sent after it survives a
  crash of the server (with the server's ``fsync=on``) or of the node.
* The key (sender application, facility, control id) is UNIQUE in the one table, so a
  re-send to another node finds the first node's row and its ACK. Two nodes storing the
  same key at once: ``INSERT ... ON CONFLICT DO NOTHING`` lets one insert, the other waits
  for that commit and re-reads it: one row, one ACK.
* Workers :meth:`~PostgresQueue.lease` with ``FOR UPDATE SKIP LOCKED``: two nodes never
  claim the same item, and a lease whose node died expires after ``lease_s``, when any
  node may claim it. Times are the database server's clock, so nodes' clocks need not agree.
* The schema is created or migrated at open inside one transaction holding an advisory
  lock, so listeners starting together do not race; its version is in ``schema_version``.
* A lost connection is :class:`~lasan.errors.QueueStorageError` (no ``AA``); the pool
  checks a connection before each use and opens new ones, so the first call after the
  server is back works again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg
import psycopg_pool

from lasan.errors import QueueStorageError
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
from lasan.integration.queue.postgres_schema import migrate

__all__ = ["PostgresQueue"]

T = TypeVar("T")
Cursor = psycopg.Cursor[Any]

# The transaction's start time on the server, in epoch seconds: one clock for every node.
_NOW = "extract(epoch from now())"
_RELEASE = "leased_by=NULL, leased_at=NULL, lease_until=0"
_KEY_WHERE = "sender_app=%s AND sender_facility=%s AND control_id=%s"
_I_COLUMNS = ", ".join(f"i.{c}" for c in ITEM_COLUMNS.split(", "))


def _now(now: float | None) -> str:
    """SQL for "now": the caller's value (tests), else the server's clock."""
    return _NOW if now is None else repr(float(now))


class PostgresQueue:
    """PostgreSQL-backed :class:`~lasan.integration.queue.Queue` (see the module docstring).

    Args:
        url: ``postgresql://user[:password]@host[:port]/database`` (libpq parameters such as
            ``sslmode`` may follow ``?``).
        connect_timeout_s: how long a call waits for a connection before it fails with
            :class:`QueueStorageError` (the sender then gets no ``AA`` and re-sends).
        max_connections: the most connections this node opens.

    Raises:
        QueueStorageError: from every method when the server cannot be reached, read or
            written; from the constructor also when the schema cannot be created or is
            newer than this LASAN understands.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0, max_connections: int = 8) -> None:
        self.where = _safe(url)  # for messages and logs: never the password
        self._timeout = connect_timeout_s
        self._pool = psycopg_pool.ConnectionPool(
            url,
            min_size=1,
            max_size=max(1, max_connections),
            open=False,
            timeout=connect_timeout_s,
            # A connection the server dropped (restart, failover) is found before it is used.
            check=psycopg_pool.ConnectionPool.check_connection,
            # Give up on a background reconnect soon: the next call then tries afresh at once
            # instead of waiting out an exponential backoff after the server is back.
            reconnect_timeout=max(1.0, connect_timeout_s),
            kwargs={
                "autocommit": False,
                "connect_timeout": max(2, int(connect_timeout_s)),
                # Per session, whatever the server's default: a commit is on disk before AA.
                "options": "-c synchronous_commit=on",
                "application_name": "lasan-queue",
            },
            name="lasan-queue",
        )
        try:
            self._pool.open(wait=True, timeout=connect_timeout_s)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            self._pool.close()
            raise QueueStorageError(
                f"cannot connect to the queue database {self.where}: {exc}; check storage.queue_url, that the "
                "server is running and that this host may connect"
            ) from exc
        try:
            self._run("create or migrate the queue schema", lambda cur: migrate(cur, self.where))
        except QueueStorageError:
            self._pool.close()
            raise

    def close(self) -> None:
        self._pool.close()

    def __enter__(self) -> PostgresQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, what: str, fn: Callable[[Cursor], T]) -> T:
        """Run ``fn`` in one transaction, committed on return (rolled back on any error)."""
        try:
            with self._pool.connection(timeout=self._timeout) as conn:
                with conn.cursor() as cur:
                    return fn(cur)
        except (psycopg.Error, psycopg_pool.PoolTimeout, psycopg_pool.PoolClosed) as exc:
            raise QueueStorageError(f"the durable queue ({self.where}) could not {what}: "
                                    f"{type(exc).__name__}: {exc}") from exc

    # -- intake -----------------------------------------------------------------------------

    def lookup(self, key: IdempotencyKey, digest: str | None = None) -> EnqueueOutcome | None:
        """The stored outcome for ``key`` if that message was already accepted (``conflict`` when its digest differs)."""

        def fn(cur: Cursor) -> EnqueueOutcome | None:
            row = cur.execute(f"SELECT id, ack, digest FROM items WHERE {_KEY_WHERE}", _key(key)).fetchone()
            return stored_outcome(row[0], row[1], row[2], digest) if row else None

        return self._run("look up a message", fn)

    def enqueue(self, key: IdempotencyKey, raw: bytes, *, source: str, kind: str, ack: str | None = None,
                digest: str | None = None) -> EnqueueOutcome:
        """Store a message durably (committed with synchronous commit on return), or return the earlier outcome."""

        def fn(cur: Cursor) -> EnqueueOutcome:
            for _ in range(3):  # the conflicting row may be purged between the two statements
                row = cur.execute(
                    "INSERT INTO items (sender_app, sender_facility, control_id, source, kind, raw, ack, digest, "
                    f"received_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, {_NOW}) "
                    "ON CONFLICT (sender_app, sender_facility, control_id) DO NOTHING RETURNING id",
                    (*_key(key), source, kind, raw, ack, digest),
                ).fetchone()
                if row is not None:
                    return EnqueueOutcome(int(row[0]), ack, False)
                # Stored already, perhaps by another node a moment ago (its commit was awaited).
                row = cur.execute(f"SELECT id, ack, digest FROM items WHERE {_KEY_WHERE}", _key(key)).fetchone()
                if row is not None:
                    return stored_outcome(int(row[0]), row[1], row[2], digest)
            raise QueueStorageError(f"message {key} could neither be stored nor found; send it again")

        return self._run("store a message", fn)

    # -- work -------------------------------------------------------------------------------

    def lease(self, worker: str, *, limit: int, lease_s: float, now: float | None = None) -> list[QueueItem]:
        """Claim up to ``limit`` due items (received/scored, lease free or expired) for ``worker``, oldest first."""
        t = _now(now)

        def fn(cur: Cursor) -> list[QueueItem]:
            rows = cur.execute(
                f"WITH c AS (SELECT id FROM items WHERE state IN ('received', 'scored') AND next_attempt_at <= {t} "
                f"AND (leased_by IS NULL OR lease_until <= {t}) ORDER BY next_attempt_at, id LIMIT %s "
                "FOR UPDATE SKIP LOCKED) "
                f"UPDATE items i SET leased_by=%s, leased_at={t}, lease_until={t} + %s FROM c WHERE i.id = c.id "
                f"RETURNING {_I_COLUMNS}",
                (limit, worker, float(lease_s)),
            ).fetchall()
            return sorted((item_from_row(r) for r in rows), key=lambda i: (i.next_attempt_at, i.id))

        return self._run("lease items", fn)

    def release_leases(self, worker: str) -> int:
        """Give back every item ``worker`` still holds (not its deliveries: see the SQLite backend); returns how many."""

        def fn(cur: Cursor) -> int:
            return cur.execute(f"UPDATE items SET {_RELEASE} WHERE leased_by=%s", (worker,)).rowcount

        return self._run("release leases", fn)

    def due(self, now: float | None = None, limit: int = 32, *, after_id: int = 0) -> list[QueueItem]:
        """Items waiting for work whose next attempt time has come, oldest first (observation: leases ignored)."""
        t = _now(now)

        def fn(cur: Cursor) -> list[QueueItem]:
            rows = cur.execute(
                f"SELECT {ITEM_COLUMNS} FROM items WHERE state IN ('received', 'scored') AND next_attempt_at <= {t} "
                "AND id > %s ORDER BY next_attempt_at, id LIMIT %s", (after_id, limit)).fetchall()
            return [item_from_row(r) for r in rows]

        return self._run("list due items", fn)

    def get(self, item_id: int) -> QueueItem:
        def fn(cur: Cursor) -> QueueItem:
            row = cur.execute(f"SELECT {ITEM_COLUMNS} FROM items WHERE id=%s", (item_id,)).fetchone()
            if row is None:
                raise QueueStorageError(f"queue item {item_id} does not exist")
            return item_from_row(row)

        return self._run("read an item", fn)

    def mark_scored(self, item_id: int, result: str, result_control_id: str,
                    deliveries: Mapping[str, bytes] | None = None) -> None:
        """Store the result (and one pending delivery per extra target) in one transaction; the lease is kept."""

        def fn(cur: Cursor) -> None:
            _update(cur, item_id, "store a result", "state='scored', outcome='scored', result=%s, "
                    f"result_control_id=%s, scored_at={_NOW}, last_error=NULL, next_attempt_at=0",
                    (result, result_control_id), ("received",))
            for target, payload in (deliveries or {}).items():
                cur.execute(
                    f"INSERT INTO deliveries (item_id, target, payload, created_at) VALUES (%s, %s, %s, {_NOW}) "
                    "ON CONFLICT (item_id, target) DO UPDATE SET payload=EXCLUDED.payload, state='pending', "
                    f"attempts=0, next_attempt_at=0, last_error=NULL, sent_at=NULL, {_RELEASE}",
                    (item_id, target, payload))

        self._run("store a result", fn)

    def mark_unscorable(self, item_id: int, error: str, result: str, result_control_id: str) -> None:
        """Store a "not scored" result for an ECG that can never be scored; it is delivered like any result."""
        error = error[:ERROR_CHARS]
        self._run("store a not-scored result", lambda cur: _update(
            cur, item_id, "store a not-scored result",
            "state='scored', outcome='not_scored', reason=%s, last_error=%s, result=%s, result_control_id=%s, "
            f"scored_at={_NOW}, next_attempt_at=0", (error, error, result, result_control_id), ("received",)))

    def mark_sent(self, item_id: int) -> None:
        self._run("mark an item sent", lambda cur: _update(
            cur, item_id, "mark an item sent",
            f"state='sent', sent_at={_NOW}, finished_at={_NOW}, last_error=reason, {_RELEASE}", (), ("scored",)))

    def schedule_retry(self, item_id: int, error: str, delay_s: float) -> int:
        """Count a failed attempt and schedule the next (the lease is released); returns the attempt count."""

        def fn(cur: Cursor) -> int:
            row = cur.execute(
                f"UPDATE items SET attempts=attempts+1, last_error=%s, next_attempt_at={_NOW} + %s, {_RELEASE} "
                "WHERE id=%s RETURNING attempts", (error[:ERROR_CHARS], float(delay_s), item_id)).fetchone()
            if row is None:
                raise QueueStorageError(f"queue item {item_id} does not exist; cannot schedule a retry")
            return int(row[0])

        return self._run("schedule a retry", fn)

    def mark_failed(self, item_id: int, error: str) -> None:
        """A failure that cannot even produce a result. The item stays in the database for review."""
        self._run("mark an item failed", lambda cur: _update(
            cur, item_id, "mark an item failed",
            f"state='failed', last_error=%s, attempts=attempts+1, finished_at={_NOW}, {_RELEASE}",
            (error[:ERROR_CHARS],), ("received", "scored")))

    # -- extra delivery targets (PACS, FHIR) ------------------------------------------------

    def lease_deliveries(self, worker: str, *, limit: int, lease_s: float,
                         now: float | None = None) -> list[Delivery]:
        """Claim up to ``limit`` pending deliveries whose next attempt time has come, oldest first."""
        t = _now(now)

        def fn(cur: Cursor) -> list[Delivery]:
            keys = cur.execute(
                f"WITH c AS (SELECT item_id, target FROM deliveries WHERE state='pending' AND next_attempt_at <= {t} "
                f"AND (leased_by IS NULL OR lease_until <= {t}) ORDER BY next_attempt_at, item_id, target LIMIT %s "
                "FOR UPDATE SKIP LOCKED) "
                f"UPDATE deliveries d SET leased_by=%s, leased_at={t}, lease_until={t} + %s FROM c "
                "WHERE d.item_id = c.item_id AND d.target = c.target RETURNING d.item_id, d.target",
                (limit, worker, float(lease_s))).fetchall()
            if not keys:
                return []
            rows = cur.execute(
                f"SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN items i ON i.id = d.item_id "
                "WHERE (d.item_id, d.target) IN (SELECT * FROM unnest(%s::bigint[], %s::text[])) "
                "ORDER BY d.next_attempt_at, d.item_id, d.target",
                ([k[0] for k in keys], [k[1] for k in keys])).fetchall()
            return [delivery_from_row(r) for r in rows]

        return self._run("lease deliveries", fn)

    def mark_delivered(self, item_id: int, target: str) -> None:
        def fn(cur: Cursor) -> None:
            n = cur.execute(f"UPDATE deliveries SET state='sent', sent_at={_NOW}, last_error=NULL, {_RELEASE} "
                            "WHERE item_id=%s AND target=%s AND state='pending'", (item_id, target)).rowcount
            if n != 1:
                raise QueueStorageError(f"queue item {item_id} has no pending {target!r} delivery; "
                                        "refusing to mark it delivered")

        self._run("mark a delivery sent", fn)

    def schedule_delivery_retry(self, item_id: int, target: str, error: str, delay_s: float) -> int:
        def fn(cur: Cursor) -> int:
            row = cur.execute(
                f"UPDATE deliveries SET attempts=attempts+1, last_error=%s, next_attempt_at={_NOW} + %s, {_RELEASE} "
                "WHERE item_id=%s AND target=%s RETURNING attempts",
                (error[:ERROR_CHARS], float(delay_s), item_id, target)).fetchone()
            if row is None:
                raise QueueStorageError(f"queue item {item_id} has no {target!r} delivery; cannot schedule a retry")
            return int(row[0])

        return self._run("schedule a delivery retry", fn)

    def delivery_counts(self) -> dict[str, dict[str, int]]:
        """Per target, deliveries pending and sent."""

        def fn(cur: Cursor) -> dict[str, dict[str, int]]:
            out: dict[str, dict[str, int]] = {}
            for target, state, n in cur.execute("SELECT target, state, COUNT(*) FROM deliveries GROUP BY target, state"):
                out.setdefault(target, {"pending": 0, "sent": 0})[state] = int(n)
            return out

        return self._run("count deliveries", fn)

    # -- operations --------------------------------------------------------------------------

    def items(self, state: str | None = None, *, limit: int = 100) -> list[QueueItem]:
        """Items, newest first, optionally only those in ``state``."""
        check_state(state)

        def fn(cur: Cursor) -> list[QueueItem]:
            where, params = ("WHERE state=%s", (state,)) if state else ("", ())
            rows = cur.execute(f"SELECT {ITEM_COLUMNS} FROM items {where} ORDER BY id DESC LIMIT %s",
                               (*params, limit)).fetchall()
            return [item_from_row(r) for r in rows]

        return self._run("list items", fn)

    def requeue(self, item_id: int) -> None:
        """Send a failed or not-scored item back to ``received`` (attempts 0) to be scored again."""

        def fn(cur: Cursor) -> None:
            row = cur.execute("SELECT state, outcome FROM items WHERE id=%s FOR UPDATE", (item_id,)).fetchone()
            check_requeue(item_id, row)
            cur.execute("DELETE FROM deliveries WHERE item_id=%s", (item_id,))
            cur.execute(f"UPDATE items SET {REQUEUE_SQL}, {_RELEASE} WHERE id=%s", (item_id,))

        self._run("re-queue an item", fn)

    def purge(self, older_than_s: float, *, now: float | None = None) -> int:
        """Delete items sent or failed more than ``older_than_s`` ago whose deliveries are all sent; returns how many.

        Their deliveries go with them (``ON DELETE CASCADE``). PostgreSQL frees the space
        (and overwrites the rows) when autovacuum runs.
        """
        t = _now(now)

        def fn(cur: Cursor) -> int:
            cutoff = f"({t} - %s)"
            return cur.execute(f"DELETE FROM items WHERE id IN ({PURGEABLE_SQL.replace('%s', cutoff)})",
                               (float(older_than_s),)).rowcount

        return self._run("purge items", fn)

    def oldest_lease_age_s(self, now: float | None = None) -> float | None:
        """Seconds the oldest lease still held (item or delivery) has been held; None when none is."""
        t = _now(now)

        def fn(cur: Cursor) -> float | None:
            row = cur.execute(
                f"SELECT {t} - MIN(x) FROM (SELECT MIN(leased_at) AS x FROM items WHERE leased_by IS NOT NULL "
                "UNION ALL SELECT MIN(leased_at) FROM deliveries WHERE leased_by IS NOT NULL) AS held").fetchone()
            return None if row is None or row[0] is None else max(0.0, float(row[0]))

        return self._run("read lease ages", fn)

    def counts(self) -> dict[str, int]:
        """Number of items per state (every state present, zero when empty)."""

        def fn(cur: Cursor) -> dict[str, int]:
            out = dict.fromkeys(STATES, 0)
            for state, n in cur.execute("SELECT state, COUNT(*) FROM items GROUP BY state"):
                out[state] = int(n)
            return out

        return self._run("count items", fn)

    def depth(self) -> int:
        """Items not yet finished (received + scored)."""
        c = self.counts()
        return c["received"] + c["scored"]


def _key(key: IdempotencyKey) -> tuple[str, str, str]:
    return key.sender_app, key.sender_facility, key.control_id


def _update(cur: Cursor, item_id: int, what: str, assignments: str, params: tuple,
            expect_states: tuple[str, ...]) -> None:
    n = cur.execute(f"UPDATE items SET {assignments} WHERE id=%s AND state = ANY(%s)",
                    (*params, item_id, list(expect_states))).rowcount
    if n != 1:
        raise QueueStorageError(f"queue item {item_id} is not in state {'/'.join(expect_states)}; refusing to {what}")


def _safe(url: str) -> str:
    """The URL without its password (safe for messages and logs)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "localhost"
        port = f":{parts.port}" if parts.port else ""
        user = f"{parts.username}@" if parts.username else ""
        return f"{parts.scheme}://{user}{host}{port}{parts.path}"
    except ValueError:
        return "postgresql://(unreadable URL)"

