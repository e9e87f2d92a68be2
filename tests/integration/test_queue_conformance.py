"""One behaviour for every queue backend: each test runs on SQLite and on a real PostgreSQL server.

The PostgreSQL cases start a throwaway cluster (tests/postgres_server.py) once for this
module and give each test a fresh database; they are skipped, with the reason, only where
PostgreSQL is not installed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from postgres_server import PostgresServer, postgres_bin

from lasan.errors import QueueStorageError
from lasan.integration.config import StorageConfig
from lasan.integration.queue import Delivery, IdempotencyKey, Queue, open_queue

KEY = IdempotencyKey("CART", "WARD", "C1")


def _key(n: int) -> IdempotencyKey:
    return IdempotencyKey("CART", "WARD", f"K{n}")


@pytest.fixture(scope="module")
def pg_server() -> Iterator[PostgresServer | None]:
    if postgres_bin() is None:
        yield None
        return
    pytest.importorskip("psycopg", reason="psycopg is in the integration extra: pip install -e '.[integration]'")
    with PostgresServer() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request, tmp_path: Path, pg_server: PostgresServer | None) -> StorageConfig:
    """A StorageConfig for an empty queue on the backend named by the parameter."""
    if request.param == "sqlite":
        return StorageConfig(queue_db=tmp_path / "q.sqlite")
    if pg_server is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found under /usr/lib/postgresql/*/bin: "
                    "install Debian's postgresql package (make install does, as root)")
    return StorageConfig(queue_db=tmp_path / "unused.sqlite", queue_url=pg_server.create_database())


@pytest.fixture
def opened(storage: StorageConfig) -> Iterator[Callable[[], Queue]]:
    """Opens the queue (as often as a test likes: several nodes or a restart); all closed after."""
    queues: list[Queue] = []

    def open_() -> Queue:
        queues.append(open_queue(storage))
        return queues[-1]

    yield open_
    for q in queues:
        q.close()


@pytest.fixture
def queue(opened: Callable[[], Queue]) -> Queue:
    return opened()


def test_open_queue_picks_the_backend_from_storage(storage, queue):
    expected = "PostgresQueue" if storage.queue_url else "DurableQueue"
    assert type(queue).__name__ == expected
    assert queue.counts() == {"received": 0, "scored": 0, "sent": 0, "failed": 0} and queue.depth() == 0


def test_duplicate_key_returns_the_stored_ack_and_stores_nothing(queue):
    first = queue.enqueue(KEY, b"raw1", source="hl7", kind="hl7", ack="ACK-1", digest="d1")
    again = queue.enqueue(KEY, b"raw1", source="hl7", kind="hl7", ack="ACK-2", digest="d1")
    assert not first.duplicate and not first.conflict
    assert again.duplicate and not again.conflict and again.ack == "ACK-1" and again.item_id == first.item_id
    assert queue.lookup(KEY).ack == "ACK-1" and not queue.lookup(KEY, "d1").conflict
    assert queue.lookup(IdempotencyKey("CART", "OTHER WARD", "C1")) is None  # the key includes the facility
    assert queue.counts()["received"] == 1 and queue.get(first.item_id).raw == b"raw1"


def test_a_reused_key_with_another_digest_is_a_conflict_and_writes_nothing(queue):
    first = queue.enqueue(KEY, b"patient A", source="hl7", kind="hl7", ack="ACK-A", digest="aaa")
    other = queue.enqueue(KEY, b"patient B", source="hl7", kind="hl7", ack="ACK-B", digest="bbb")
    assert other.conflict and other.duplicate and other.item_id == first.item_id
    assert queue.lookup(KEY, "bbb").conflict and not queue.lookup(KEY, "aaa").conflict
    # Without a digest on either side it is the same message, as before digests existed.
    assert not queue.enqueue(KEY, b"?", source="hl7", kind="hl7").conflict
    assert queue.get(first.item_id).raw == b"patient A" and queue.counts()["received"] == 1


def test_state_machine_and_retry(queue):
    item = queue.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    assert [i.id for i in queue.due()] == [item]
    assert queue.schedule_retry(item, "triton down", delay_s=3600) == 1
    assert queue.due() == []  # not due for an hour
    assert [i.id for i in queue.due(now=queue.get(item).next_attempt_at + 1)] == [item]
    queue.mark_scored(item, "RESULT", "LSN1")
    with pytest.raises(QueueStorageError, match="state received"):
        queue.mark_scored(item, "OTHER", "LSN2")  # a second scoring never overwrites the stored result
    got = queue.get(item)
    assert (got.state, got.result, got.result_control_id, got.attempts, got.outcome) == (
        "scored", "RESULT", "LSN1", 1, "scored")
    queue.mark_sent(item)
    assert queue.due() == [] and queue.counts() == {"received": 0, "scored": 0, "sent": 1, "failed": 0}
    with pytest.raises(QueueStorageError):
        queue.mark_sent(item)
    with pytest.raises(QueueStorageError, match="does not exist"):
        queue.get(item + 1000)


def test_failed_items_are_kept(queue):
    item = queue.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    queue.mark_failed(item, "cannot build even an error result")
    got = queue.get(item)
    assert (got.state, got.last_error, got.outcome) == ("failed", "cannot build even an error result", None)
    assert queue.due() == [] and queue.lease("w", limit=10, lease_s=60) == []


def test_two_workers_never_lease_the_same_item(opened):
    node_a, node_b = opened(), opened()  # two connections / two listeners on one queue
    ids = [node_a.enqueue(_key(n), b"x", source="hl7", kind="hl7").item_id for n in range(5)]
    got_a = node_a.lease("node-a:1", limit=3, lease_s=60)
    got_b = node_b.lease("node-b:1", limit=10, lease_s=60)
    assert [i.id for i in got_a] == ids[:3] and [i.id for i in got_b] == ids[3:]  # oldest first
    assert {i.leased_by for i in got_a} == {"node-a:1"} and {i.leased_by for i in got_b} == {"node-b:1"}
    assert node_a.lease("node-a:1", limit=10, lease_s=60) == []  # everything is held
    assert [i.id for i in node_a.due()] == ids  # due() only observes


def test_an_expired_lease_is_taken_by_another_worker(queue):
    item = queue.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    t0 = time.time()
    assert [i.id for i in queue.lease("dead-node:7", limit=5, lease_s=30, now=t0)] == [item]
    assert queue.lease("live-node:8", limit=5, lease_s=30, now=t0 + 29) == []
    taken = queue.lease("live-node:8", limit=5, lease_s=30, now=t0 + 31)
    assert [(i.id, i.leased_by) for i in taken] == [(item, "live-node:8")]


def test_leases_are_released_by_retry_and_sent_and_kept_by_scoring(queue):
    a = queue.enqueue(_key(1), b"a", source="hl7", kind="hl7").item_id
    b = queue.enqueue(_key(2), b"b", source="hl7", kind="hl7").item_id
    assert len(queue.lease("w1", limit=5, lease_s=600)) == 2
    queue.schedule_retry(a, "triton down", delay_s=0)
    queue.mark_scored(b, "RESULT", "LSNB")  # the node that scored it delivers it: still held
    assert queue.get(a).leased_by is None and queue.get(b).leased_by == "w1"
    assert [i.id for i in queue.lease("w2", limit=5, lease_s=600)] == [a]
    queue.mark_sent(b)
    assert queue.get(b).leased_by is None
    assert queue.release_leases("w2") == 1 and queue.get(a).leased_by is None
    assert queue.release_leases("w2") == 0


def test_an_unscorable_item_gets_a_not_scored_result_delivered_like_any_other(queue):
    item = queue.enqueue(KEY, b"raw", source="hl7", kind="hl7", ack="A").item_id
    queue.mark_unscorable(item, "the model refused this ECG: rate out of range", "NOT-SCORED ORU", "LSN1")
    got = queue.get(item)
    assert (got.state, got.outcome, got.result, got.last_error) == (
        "scored", "not_scored", "NOT-SCORED ORU", "the model refused this ECG: rate out of range")
    assert [i.id for i in queue.lease("w", limit=5, lease_s=60)] == [item]  # the delivery path takes it
    queue.schedule_retry(item, "downstream down", delay_s=0)
    queue.mark_sent(item)
    got = queue.get(item)
    assert (got.state, got.outcome, got.last_error) == ("sent", "not_scored", "the model refused this ECG: rate out of range")
    with pytest.raises(QueueStorageError):
        queue.mark_unscorable(item, "again", "X", "LSN1")  # only from received


def test_deliveries_are_stored_with_the_result_and_retried_until_sent(queue):
    item = queue.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    queue.mark_scored(item, "RESULT", "LSN1", deliveries={"pacs": b"SR+PDF", "fhir": b'{"resourceType": "Bundle"}'})
    assert queue.delivery_counts() == {"pacs": {"pending": 1, "sent": 0}, "fhir": {"pending": 1, "sent": 0}}
    leased = queue.lease_deliveries("w1", limit=10, lease_s=60)
    assert sorted(d.target for d in leased) == ["fhir", "pacs"]
    pacs = next(d for d in leased if d.target == "pacs")
    assert pacs == Delivery(item, "pacs", b"SR+PDF", 0, 0.0, None, KEY)
    assert queue.lease_deliveries("w2", limit=10, lease_s=60) == []  # held by w1
    assert queue.schedule_delivery_retry(item, "pacs", "PACS refused the association", delay_s=3600) == 1
    queue.mark_delivered(item, "fhir")
    with pytest.raises(QueueStorageError):
        queue.mark_delivered(item, "fhir")
    assert queue.delivery_counts() == {"pacs": {"pending": 1, "sent": 0}, "fhir": {"pending": 0, "sent": 1}}
    assert queue.lease_deliveries("w2", limit=10, lease_s=60) == []  # pacs waits an hour
    later = queue.lease_deliveries("w2", limit=10, lease_s=60, now=time.time() + 3601)
    assert [(d.target, d.attempts, d.last_error) for d in later] == [("pacs", 1, "PACS refused the association")]
    # The HL7 result's state is tracked apart: item sent, PACS still pending.
    queue.mark_sent(item)
    assert queue.get(item).state == "sent" and queue.delivery_counts()["pacs"]["pending"] == 1
    with pytest.raises(QueueStorageError):
        queue.schedule_delivery_retry(item, "nowhere", "x", 1)


def test_items_lists_newest_first_and_by_state(queue):
    ids = [queue.enqueue(_key(n), b"x", source="hl7", kind="hl7").item_id for n in range(4)]
    queue.mark_failed(ids[1], "broken")
    assert [i.id for i in queue.items()] == ids[::-1]
    assert [i.id for i in queue.items("failed")] == [ids[1]]
    assert [i.id for i in queue.items(limit=2)] == ids[:1:-1]
    with pytest.raises(QueueStorageError, match="unknown queue state"):
        queue.items("lost")


def test_requeue_sends_failed_and_not_scored_items_back(queue):
    failed = queue.enqueue(_key(1), b"a", source="hl7", kind="hl7").item_id
    unscorable = queue.enqueue(_key(2), b"b", source="hl7", kind="hl7").item_id
    fine = queue.enqueue(_key(3), b"c", source="hl7", kind="hl7").item_id
    queue.schedule_retry(failed, "x", 0)
    queue.mark_failed(failed, "gave up")
    queue.mark_unscorable(unscorable, "refused", "NOT SCORED", "LSN2")
    queue.mark_sent(unscorable)
    queue.mark_scored(fine, "RESULT", "LSN3")
    for item in (failed, unscorable):
        queue.requeue(item)
        got = queue.get(item)
        assert (got.state, got.attempts, got.result, got.outcome, got.leased_by) == ("received", 0, None, None, None)
    with pytest.raises(QueueStorageError, match="only failed or not-scored"):
        queue.requeue(fine)
    with pytest.raises(QueueStorageError, match="does not exist"):
        queue.requeue(fine + 1000)
    assert queue.counts() == {"received": 2, "scored": 1, "sent": 0, "failed": 0}


def test_purge_deletes_only_finished_items_whose_deliveries_are_all_sent(queue):
    sent = queue.enqueue(_key(1), b"a", source="hl7", kind="hl7").item_id
    pending_pacs = queue.enqueue(_key(2), b"b", source="hl7", kind="hl7").item_id
    failed = queue.enqueue(_key(3), b"c", source="hl7", kind="hl7").item_id
    waiting = queue.enqueue(_key(4), b"d", source="hl7", kind="hl7").item_id
    queue.mark_scored(sent, "R1", "L1", deliveries={"pacs": b"p"})
    queue.mark_sent(sent)
    queue.mark_delivered(sent, "pacs")
    queue.mark_scored(pending_pacs, "R2", "L2", deliveries={"pacs": b"p"})
    queue.mark_sent(pending_pacs)
    queue.mark_failed(failed, "x")
    assert queue.purge(3600) == 0  # all finished just now
    assert queue.purge(60, now=time.time() + 120) == 2
    assert {i.id for i in queue.items()} == {pending_pacs, waiting}
    assert queue.delivery_counts() == {"pacs": {"pending": 1, "sent": 0}}
    with pytest.raises(QueueStorageError):
        queue.get(sent)
    assert queue.enqueue(_key(1), b"a", source="hl7", kind="hl7").duplicate is False  # the key is gone too


def test_oldest_lease_age(queue):
    assert queue.oldest_lease_age_s() is None
    queue.enqueue(_key(1), b"a", source="hl7", kind="hl7")
    queue.enqueue(_key(2), b"b", source="hl7", kind="hl7")
    t0 = time.time()
    queue.lease("w1", limit=1, lease_s=30, now=t0 - 20)
    queue.lease("w2", limit=1, lease_s=30, now=t0 - 5)
    assert queue.oldest_lease_age_s(now=t0) == pytest.approx(20, abs=1e-3)
    queue.release_leases("w1")
    assert queue.oldest_lease_age_s(now=t0) == pytest.approx(5, abs=1e-3)


def test_reopen_resumes(opened):
    q = opened()
    a = q.enqueue(KEY, b"a", source="hl7", kind="hl7", ack="A").item_id
    b = q.enqueue(IdempotencyKey("CART", "WARD", "C2"), b"b", source="hl7", kind="hl7").item_id
    q.mark_scored(b, "RESULT-B", "LSNB")
    q.close()
    q2 = opened()
    due = {i.id: i for i in q2.due()}
    assert set(due) == {a, b}
    assert due[b].state == "scored" and due[b].result == "RESULT-B"  # a resend uses the stored text
    assert q2.enqueue(KEY, b"again", source="hl7", kind="hl7").ack == "A"


def test_storage_queue_url_is_read_from_the_yaml_and_checked(tmp_path):
    from lasan.errors import ConfigError
    from lasan.integration.config import config_from_dict

    cfg = config_from_dict({"storage": {"queue_url": "postgresql://lasan@db.example.org/lasan", "lease_s": 5}}, tmp_path)
    assert (cfg.storage.queue_url, cfg.storage.lease_s) == ("postgresql://lasan@db.example.org/lasan", 5.0)
    assert config_from_dict({}, tmp_path).storage.queue_url is None  # default: the SQLite file
    with pytest.raises(ConfigError, match="storage.queue_url") as err:
        config_from_dict({"storage": {"queue_url": "mysql://lasan:s3cret@db/lasan"}}, tmp_path)
    assert "s3cret" not in str(err.value)
    with pytest.raises(ConfigError, match="storage.lease_s"):
        config_from_dict({"storage": {"lease_s": 0}}, tmp_path)


def test_releasing_a_workers_items_leaves_its_deliveries_leased(queue):
    item = queue.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    queue.lease("node:1", limit=5, lease_s=600)
    queue.mark_scored(item, "RESULT", "LSN1", deliveries={"pacs": b"p"})
    assert len(queue.lease_deliveries("node:1", limit=5, lease_s=600)) == 1
    assert queue.release_leases("node:1") == 1  # the item; the delivery task still sends its PACS object
    assert queue.lease_deliveries("node:2", limit=5, lease_s=600) == []
    queue.schedule_delivery_retry(item, "pacs", "PACS down", delay_s=0)
    assert [d.target for d in queue.lease_deliveries("node:2", limit=5, lease_s=600)] == ["pacs"]


def test_due_after_id_lists_only_what_arrived_since(queue):
    first = queue.enqueue(_key(1), b"a", source="hl7", kind="hl7").item_id
    second = queue.enqueue(_key(2), b"b", source="hl7", kind="hl7").item_id
    assert [i.id for i in queue.due()] == [first, second]
    assert [i.id for i in queue.due(after_id=first)] == [second]
    assert queue.due(after_id=second) == []
