"""Parse once: the listener's record reaches the worker; the worker runs on its own thread."""

from __future__ import annotations

import threading
import time

import numpy as np
from feedkit import oru, small_ecg

from lasan.integration.config import config_from_dict
from lasan.integration.handoff import Handoff, ParsedRecords
from lasan.integration.intake import Intake, read_stored
from lasan.integration.listener import MLLP_SOURCE
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import DurableQueue, IdempotencyKey
from lasan.integration.worker import ResultWorker


def _config(tmp_path):
    return config_from_dict({"listener": {"port": 0}, "storage": {"queue_db": "q.sqlite", "outbox": "outbox"},
                             "metrics": {"enabled": False}}, tmp_path)


def test_parsed_records_are_taken_once_and_bounded():
    rec = small_ecg(0)
    rec = Handoff(rec, read_stored(oru(rec, "X"), "hl7", IdempotencyKey("A", "B", "X")).order)
    parsed = ParsedRecords(max_items=2)
    for item_id in (1, 2, 3):
        parsed.put(item_id, rec)
    assert len(parsed) == 2
    assert parsed.take(1) is None  # the oldest was dropped
    assert parsed.take(3) is rec
    assert parsed.take(3) is None  # taken once
    assert parsed.take(2) is rec and len(parsed) == 0


def test_intake_hands_over_the_record_the_worker_would_parse(tmp_path):
    cfg = _config(tmp_path)
    queue = DurableQueue(cfg.storage.queue_db)
    parsed = ParsedRecords()
    stored = threading.Event()
    intake = Intake(queue, Metrics(), Health(), on_stored=stored.set, handoff=parsed)
    raw = oru(small_ecg(3), "H-1")
    assert intake.accept(raw, MLLP_SOURCE).ack and stored.is_set()
    item = queue.due()[0]
    handed = parsed.take(item.id)
    assert handed is not None
    reread = read_stored(item.raw, item.kind, item.key)  # what the worker reads from the stored bytes
    assert handed.record.leads == reread.record.leads and handed.record.fs == reread.record.fs
    np.testing.assert_array_equal(handed.record.signal, reread.record.signal)
    assert handed.order == reread.order

    # A re-sent control ID and a refused message hand over nothing.
    assert intake.accept(raw, MLLP_SOURCE).duplicate
    bad = oru(small_ecg(4), "H-2").replace(b"ORU^R01", b"ADT^A01", 1)
    refused = intake.accept(bad, MLLP_SOURCE)
    assert refused.answer.hl7_ack == "AR" and "ADT^A01" in refused.reason
    assert len(parsed) == 0
    queue.close()


def test_worker_thread_wakes_and_stops_from_another_thread(tmp_path):
    cfg = _config(tmp_path)
    queue = DurableQueue(cfg.storage.queue_db)
    # A poll interval of an hour: only wake() / stop() crossing threads can make it act in time.
    worker = ResultWorker(cfg, queue, Metrics(), Health(), poll_interval_s=3600)
    thread = worker.start_thread()
    try:
        time.sleep(0.3)  # let the first (empty) pass finish and the worker sleep
        item_id = queue.enqueue(IdempotencyKey("CART", "WARD", "W-1"), b"MSH|^~\\&|not an ECG\r",
                                source="hl7", kind="hl7").item_id
        threading.Thread(target=worker.wake).start()
        deadline = time.monotonic() + 20
        while queue.get(item_id).outcome != "not_scored" and time.monotonic() < deadline:
            time.sleep(0.05)
        # An unreadable stored message fails for good, without a scorer: a "not scored" result.
        assert queue.get(item_id).outcome == "not_scored"
    finally:
        worker.stop()
        thread.join(20)
    assert not thread.is_alive()
    queue.close()
