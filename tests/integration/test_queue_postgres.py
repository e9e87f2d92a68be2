"""What only the PostgreSQL queue must show: several nodes on one database, a server that goes away.

Every test runs against a real PostgreSQL server (tests/postgres_server.py), skipped with the
reason only where PostgreSQL is not installed. Two ``PostgresQueue`` objects are two nodes:
separate connection pools, as two listener processes have.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
from postgres_server import PostgresServer

from lasan.errors import QueueStorageError
from lasan.integration.queue import IdempotencyKey

psycopg = pytest.importorskip("psycopg", reason="psycopg is in the integration extra: pip install -e '.[integration]'")

from lasan.integration.queue.postgres import PostgresQueue  # noqa: E402 - needs psycopg
from lasan.integration.queue.postgres_schema import SCHEMA_VERSION  # noqa: E402


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with PostgresServer() as server:
        yield server


@pytest.fixture
def url(pg: PostgresServer) -> str:
    if not pg.running:  # a test that stopped the server and failed before starting it again
        pg.start()
    return pg.create_database()


@pytest.fixture
def nodes(url: str) -> Iterator[list[PostgresQueue]]:
    queues = [PostgresQueue(url, connect_timeout_s=2), PostgresQueue(url, connect_timeout_s=2)]
    yield queues
    for q in queues:
        q.close()


def _key(n: int) -> IdempotencyKey:
    return IdempotencyKey("CART", "WARD", f"K{n}")


def _many(threads: list[threading.Thread]) -> None:
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)


def test_two_nodes_leasing_concurrently_never_get_the_same_item(nodes):
    total = 200
    for n in range(total):
        nodes[n % 2].enqueue(_key(n), b"x", source="hl7", kind="hl7")
    taken: dict[str, list[int]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def work(node: PostgresQueue, worker: str) -> None:
        mine = taken.setdefault(worker, [])
        try:
            start.wait()
            while batch := node.lease(worker, limit=3, lease_s=300):
                for item in batch:
                    mine.append(item.id)
                    node.mark_scored(item.id, "RESULT", f"L{item.id}")  # refuses a second scoring
                    node.mark_sent(item.id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    _many([threading.Thread(target=work, args=(nodes[i % 2], f"node{i % 2}:{i}")) for i in range(6)])
    assert errors == []
    every = [i for ids in taken.values() for i in ids]
    assert len(every) == len(set(every)) == total
    assert sum(1 for ids in taken.values() if ids) >= 2  # the work was really shared
    assert nodes[0].counts()["sent"] == total


def test_a_concurrent_resend_to_two_nodes_stores_one_row_and_gets_one_ack(nodes):
    def send(node: PostgresQueue, ack: str, key: IdempotencyKey, start: threading.Barrier, out: list) -> None:
        start.wait()
        out.append(node.enqueue(key, b"same ECG", source="hl7", kind="hl7", ack=ack, digest="d"))

    for n in range(30):
        start, outcomes = threading.Barrier(2), []
        _many([threading.Thread(target=send, args=(nodes[i], f"ACK-node{i}", _key(n), start, outcomes))
               for i in (0, 1)])
        assert sorted(o.duplicate for o in outcomes) == [False, True]
        assert outcomes[0].item_id == outcomes[1].item_id and outcomes[0].ack == outcomes[1].ack
        assert not any(o.conflict for o in outcomes)
    assert nodes[0].counts()["received"] == 30


def test_a_dead_nodes_lease_is_taken_over_after_lease_s(url):
    dead, live = PostgresQueue(url), PostgresQueue(url)
    try:
        item = dead.enqueue(_key(1), b"x", source="hl7", kind="hl7").item_id
        assert [i.id for i in dead.lease("node-a:1", limit=5, lease_s=1.0)] == [item]
        dead.close()  # the node dies holding the lease
        assert live.lease("node-b:2", limit=5, lease_s=30) == []
        deadline = time.monotonic() + 10
        taken = []
        while not taken and time.monotonic() < deadline:
            time.sleep(0.1)
            taken = live.lease("node-b:2", limit=5, lease_s=30)
        assert [(i.id, i.leased_by) for i in taken] == [(item, "node-b:2")]
    finally:
        live.close()


def test_listeners_starting_together_create_the_schema_once(url):
    opened: list[PostgresQueue] = []
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def open_() -> None:
        start.wait()
        try:
            opened.append(PostgresQueue(url))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    _many([threading.Thread(target=open_) for _ in range(4)])
    try:
        assert errors == [] and len(opened) == 4
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
    finally:
        for q in opened:
            q.close()


def test_a_newer_schema_is_refused_with_advice(url):
    PostgresQueue(url).close()
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE schema_version SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(QueueStorageError, match="newer than this LASAN"):
        PostgresQueue(url)


def test_every_session_commits_synchronously_whatever_the_database_default(url, pg):
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {url.rsplit('/', 1)[1]} SET synchronous_commit = off")
    with PostgresQueue(url) as q, q._pool.connection() as conn:
        assert conn.execute("SHOW synchronous_commit").fetchone() == ("on",)


def test_an_unreachable_server_is_a_queue_storage_error_without_the_password(pg):
    with pytest.raises(QueueStorageError, match="storage.queue_url") as err:
        PostgresQueue(f"postgresql://lasan:s3cret@127.0.0.1:{pg.port + 1}/nowhere", connect_timeout_s=1)
    assert "s3cret" not in str(err.value)


def test_server_down_means_no_store_and_back_up_means_nothing_lost(pg, url):
    q = PostgresQueue(url, connect_timeout_s=2)
    try:
        stored = [q.enqueue(_key(n), b"x", source="hl7", kind="hl7", ack=f"A{n}").item_id for n in range(5)]
        pg.stop(mode="immediate")  # a crash: only what was committed survives
        started = time.monotonic()
        with pytest.raises(QueueStorageError):
            q.enqueue(_key(99), b"x", source="hl7", kind="hl7", ack="A99")
        assert time.monotonic() - started < 10  # the sender hears "not stored" in time
        with pytest.raises(QueueStorageError):
            q.counts()
        pg.start()
        # The next call after the server is back works: a fresh connection, no lost item.
        assert q.enqueue(_key(5), b"x", source="hl7", kind="hl7", ack="A5").duplicate is False
        assert [i.id for i in q.items()][1:] == stored[::-1]
        assert q.lookup(_key(0)).ack == "A0"
        assert q.lookup(_key(99)) is None
    finally:
        if not pg.running:
            pg.start()
        q.close()
