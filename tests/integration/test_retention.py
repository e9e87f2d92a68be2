"""Retention: delivered items and their patient data, outbox files and watch-folder copies are
deleted once older than ``storage.retention_days``; anything still waiting is kept."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from feedkit import free_port, oru, small_ecg

from lasan.errors import ConfigError, QueueStorageError
from lasan.integration.config import config_from_dict
from lasan.integration.queue import DurableQueue, IdempotencyKey
from lasan.integration.retention import DAY_S, Purged, purge_expired, purge_interval_s

UNREADABLE = b"MSH|^~\\&|CART|WARD7\rOBX|1|NA|junk"  # stored after an AA, no longer reads: a not-scored result


def _config(tmp_path, **storage):
    return config_from_dict({"listener": {"port": 0}, "metrics": {"enabled": False},
                             "watch": {"enabled": True, "folder": "watch", "stable_s": 0, "poll_interval_s": 0.1},
                             "storage": {"queue_db": "q.sqlite", "outbox": "outbox", **storage}}, tmp_path)


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_purge_expired_deletes_what_finished_before_the_retention_only(tmp_path):
    cfg = _config(tmp_path, retention_days=1)
    queue = DurableQueue(cfg.storage.queue_db)
    done = queue.enqueue(IdempotencyKey("CART", "WARD7", "OLD"), b"MSH|old", source="hl7", kind="hl7").item_id
    queue.mark_scored(done, "MSH|^~\\&|LASAN\rPID|1||MRN7730419\r", "LSNOLD")
    queue.mark_sent(done)
    waiting = queue.enqueue(IdempotencyKey("CART", "WARD7", "WAIT"), b"MSH|wait", source="hl7", kind="hl7").item_id
    cfg.storage.outbox.mkdir()
    old_file, new_file = cfg.storage.outbox / "LSNOLD.hl7", cfg.storage.outbox / "LSNNEW.hl7"
    old_file.write_text("old")
    assert purge_expired(queue, cfg) == Purged(0, 0, 0)  # the retention configured here: a day
    time.sleep(1.2)
    new_file.write_text("new")
    (tmp_path / "watch" / "processed").mkdir(parents=True)
    copied = tmp_path / "watch" / "processed" / "cart.hl7"
    copied.write_text("x")
    _age(copied, 2 * DAY_S)  # a copy that kept its old mtime, moved in now (ctime): kept

    purged = purge_expired(queue, cfg, older_than_days=1 / DAY_S)
    assert (purged.items, purged.outbox_files, purged.watch_files) == (1, 1, 0)
    assert not old_file.exists() and new_file.exists() and copied.exists()
    with pytest.raises(QueueStorageError, match="does not exist"):
        queue.get(done)  # the message and result (patient data) are gone with it
    assert queue.get(waiting).state == "received"  # never purged while it waits
    with pytest.raises(ConfigError):
        purge_expired(queue, cfg, older_than_days=-1)
    queue.close()


def test_the_interval_is_hourly_or_a_quarter_of_a_short_retention():
    assert purge_interval_s(30) == 3600.0 and purge_interval_s(4 / DAY_S) == 1.0 and purge_interval_s(0.1 / DAY_S) == 0.5


@pytest.mark.timeout(120)
def test_the_listener_purges_delivered_items_and_files_after_the_retention(tmp_path, downstream):
    from lasan.integration.cli import IntegrationApp

    retention_s = 1.5
    cfg = config_from_dict({
        "listener": {"port": 0}, "metrics": {"enabled": False},
        "watch": {"enabled": True, "folder": "watch", "stable_s": 0, "poll_interval_s": 0.1},
        "storage": {"queue_db": "q.sqlite", "outbox": "outbox", "retention_days": retention_s / DAY_S},
        "triton": {"url": f"127.0.0.1:{free_port()}", "timeout_s": 1},  # no Triton: the watched ECG waits
        "retry": {"initial_s": 0.1, "max_s": 0.5},
        "downstream": {"host": "127.0.0.1", "port": downstream.port, "timeout_s": 5},
    }, tmp_path)

    async def main() -> tuple[bool, int, int]:
        app = IntegrationApp(cfg)
        await app.start()
        try:
            delivered = app.queue.enqueue(IdempotencyKey("CART", "WARD7", "RET-1"), UNREADABLE,
                                          source="hl7", kind="hl7").item_id
            app.worker.wake()
            (cfg.watch.folder / "cart.hl7").write_bytes(oru(small_ecg(seed=50), "RET-2"))
            deadline = time.monotonic() + 60
            seen_outbox = seen_processed = False
            while time.monotonic() < deadline:
                seen_outbox |= any(cfg.storage.outbox.glob("*.hl7"))
                seen_processed |= (cfg.watch.folder / "processed" / "cart.hl7").exists()
                ids = {i.id for i in app.queue.items()}
                if delivered not in ids and seen_outbox and seen_processed and not any(
                        cfg.storage.outbox.glob("*.hl7")) and not (cfg.watch.folder / "processed" / "cart.hl7").exists():
                    break
                await asyncio.sleep(0.1)
            waiting = [i for i in app.queue.items() if i.key.control_id == "RET-2"]
            return delivered not in {i.id for i in app.queue.items()}, len(waiting), len(downstream.received)
        finally:
            await app.stop()

    purged, waiting, results = asyncio.run(main())
    assert results == 1  # the not-scored result went out before it was purged
    assert purged  # the delivered item, with its message and result, is gone
    assert not any(cfg.storage.outbox.glob("*.hl7")) and not any((cfg.watch.folder / "processed").iterdir())
    assert waiting == 1  # the ECG still waiting for Triton is kept
