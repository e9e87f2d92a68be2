"""The durable queue: idempotency, state machine, survival across reopen and a killed writer."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest

from lasan.errors import QueueStorageError
from lasan.integration.queue import DurableQueue, IdempotencyKey

KEY = IdempotencyKey("CART", "WARD", "C1")


def test_wal_and_full_sync(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    assert q._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert q._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_duplicate_key_returns_the_stored_ack_and_stores_nothing(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    first = q.enqueue(KEY, b"raw1", source="hl7", kind="hl7", ack="ACK-1")
    again = q.enqueue(KEY, b"raw2", source="hl7", kind="hl7", ack="ACK-2")
    assert not first.duplicate and again.duplicate
    assert again.ack == "ACK-1" and again.item_id == first.item_id
    assert q.lookup(KEY).ack == "ACK-1"
    assert q.lookup(IdempotencyKey("CART", "OTHER WARD", "C1")) is None  # key includes the facility
    assert q.counts()["received"] == 1 and q.get(first.item_id).raw == b"raw1"


def test_state_machine_and_retry(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    item = q.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    assert [i.id for i in q.due()] == [item]
    assert q.schedule_retry(item, "triton down", delay_s=3600) == 1
    assert q.due() == []  # not due for an hour
    assert [i.id for i in q.due(now=q.get(item).next_attempt_at + 1)] == [item]
    q.mark_scored(item, "RESULT", "LSN1")
    with pytest.raises(QueueStorageError, match="state received"):
        q.mark_scored(item, "OTHER", "LSN2")  # a second scoring can never overwrite the stored result
    got = q.get(item)
    assert (got.state, got.result, got.attempts) == ("scored", "RESULT", 1)
    q.mark_sent(item)
    assert q.due() == [] and q.counts() == {"received": 0, "scored": 0, "sent": 1, "failed": 0}
    with pytest.raises(QueueStorageError):
        q.mark_sent(item)


def test_failed_items_are_kept(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    item = q.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    q.mark_failed(item, "model refused")
    assert q.get(item).state == "failed" and q.get(item).last_error == "model refused"
    assert q.due() == []


def test_reopen_resumes(tmp_path):
    path = tmp_path / "q.sqlite"
    q = DurableQueue(path)
    a = q.enqueue(KEY, b"a", source="hl7", kind="hl7", ack="A").item_id
    b = q.enqueue(IdempotencyKey("CART", "WARD", "C2"), b"b", source="hl7", kind="hl7").item_id
    q.mark_scored(b, "RESULT-B", "LSNB")
    q.close()
    q2 = DurableQueue(path)
    due = {i.id: i for i in q2.due()}
    assert set(due) == {a, b}
    assert due[b].state == "scored" and due[b].result == "RESULT-B"  # a resend uses the stored text
    assert q2.enqueue(KEY, b"again", source="hl7", kind="hl7").ack == "A"


def test_commit_survives_a_killed_process(tmp_path):
    """A writer SIGKILLed right after enqueue returns: the item is there (WAL, synchronous=FULL)."""
    path = tmp_path / "q.sqlite"
    code = (
        "import os, signal, sys\n"
        "from lasan.integration.queue import DurableQueue, IdempotencyKey\n"
        f"q = DurableQueue({str(path)!r})\n"
        "for i in range(20):\n"
        "    q.enqueue(IdempotencyKey('CART', 'WARD', f'K{i}'), b'x' * 1000, source='hl7', kind='hl7', ack='A')\n"
        "print('stored', flush=True)\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9 and "stored" in proc.stdout
    q = DurableQueue(path)
    assert q.counts()["received"] == 20


def test_unwritable_location_is_a_queue_storage_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(QueueStorageError, match="storage.queue_db"):
        DurableQueue(blocker / "q.sqlite")


def test_storage_failure_raises_queue_storage_error(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    other = sqlite3.connect(str(tmp_path / "q.sqlite"), timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # another writer holds the lock
    q._db.execute("PRAGMA busy_timeout=50")
    try:
        with pytest.raises(QueueStorageError):
            q.enqueue(KEY, b"raw", source="hl7", kind="hl7")
    finally:
        other.rollback()
        other.close()
    assert os.path.exists(tmp_path / "q.sqlite")


def test_due_after_id_lists_only_what_arrived_since(tmp_path):
    q = DurableQueue(tmp_path / "q.sqlite")
    first = q.enqueue(IdempotencyKey("CART", "WARD", "A1"), b"a", source="hl7", kind="hl7").item_id
    second = q.enqueue(IdempotencyKey("CART", "WARD", "A2"), b"b", source="hl7", kind="hl7").item_id
    assert [i.id for i in q.due()] == [first, second]
    assert [i.id for i in q.due(after_id=first)] == [second]
    assert q.due(after_id=second) == []


def _version_0_file(path):
    """A queue file as LASAN wrote it before the schema was versioned (user_version 0)."""
    from lasan.integration.queue.sqlite import _MIGRATIONS

    db = sqlite3.connect(str(path))
    for statement in _MIGRATIONS[0]:
        db.execute(statement)
    db.execute("INSERT INTO items (sender_app, sender_facility, control_id, source, kind, raw, ack, state, result, "
               "result_control_id, received_at, scored_at, sent_at) "
               "VALUES ('CART', 'WARD', 'OLD-SENT', 'hl7', 'hl7', x'01', 'ACK-OLD', 'sent', 'R', 'L1', 1, 2, 3)")
    db.execute("INSERT INTO items (sender_app, sender_facility, control_id, source, kind, raw, ack, state, result, "
               "result_control_id, received_at, scored_at) "
               "VALUES ('CART', 'WARD', 'OLD-SCORED', 'hl7', 'hl7', x'02', 'ACK-2', 'scored', 'R2', 'L2', 1, 2)")
    db.commit()
    db.close()


def test_an_old_file_is_migrated_in_place_and_keeps_its_items(tmp_path):
    from lasan.integration.queue.sqlite import SCHEMA_VERSION

    path = tmp_path / "q.sqlite"
    _version_0_file(path)
    q = DurableQueue(path)
    assert q._db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    old = {i.key.control_id: i for i in q.items()}
    assert (old["OLD-SENT"].state, old["OLD-SENT"].outcome, old["OLD-SENT"].ack) == ("sent", "scored", "ACK-OLD")
    assert q.enqueue(IdempotencyKey("CART", "WARD", "OLD-SENT"), b"x", source="hl7", kind="hl7",
                     digest="new").ack == "ACK-OLD"  # no digest stored: a re-send, not a conflict
    # The scored one is still delivered, with the text stored before the upgrade.
    assert [(i.key.control_id, i.result) for i in q.lease("w", limit=5, lease_s=60)] == [("OLD-SCORED", "R2")]
    assert q.purge(0) == 1  # sent before the upgrade: its retention clock started at sent_at
    q.close()
    assert DurableQueue(path).counts()["scored"] == 1  # opening again changes nothing


def test_a_file_from_a_newer_lasan_is_refused(tmp_path):
    path = tmp_path / "q.sqlite"
    DurableQueue(path).close()
    db = sqlite3.connect(str(path))
    db.execute("PRAGMA user_version=99")
    db.commit()
    db.close()
    with pytest.raises(QueueStorageError, match="newer than this LASAN"):
        DurableQueue(path)


def test_leases_of_a_dead_process_are_void_when_the_file_is_opened_again(tmp_path):
    path = tmp_path / "q.sqlite"
    q = DurableQueue(path)
    item = q.enqueue(KEY, b"raw", source="hl7", kind="hl7").item_id
    assert len(q.lease("host:111", limit=5, lease_s=3600)) == 1
    q.close()  # the listener was killed holding the lease
    again = DurableQueue(path)
    assert [i.id for i in again.lease("host:222", limit=5, lease_s=3600)] == [item]  # resumes at once


def test_a_purged_message_leaves_no_patient_data_in_the_files(tmp_path):
    path = tmp_path / "q.sqlite"
    q = DurableQueue(path)
    marker = b"PID|||MRN-7741^^^HOSP||DOE^JANE-PURGE-MARKER"
    item = q.enqueue(KEY, marker * 20, source="hl7", kind="hl7").item_id
    q.mark_scored(item, (marker * 5).decode(), "LSN1", deliveries={"pacs": marker * 3})
    q.mark_sent(item)
    q.mark_delivered(item, "pacs")
    assert q.purge(0, now=9e12) == 1
    # Read while the queue is still open (closing would checkpoint the WAL anyway).
    files = [p for p in tmp_path.iterdir() if p.name.startswith("q.sqlite")]
    assert files and not any(b"JANE-PURGE-MARKER" in p.read_bytes() for p in files)
    q.close()
