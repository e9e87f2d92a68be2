"""The watch folder: stable files are queued then moved; bad files are rejected with a reason."""

from __future__ import annotations

import asyncio
import os
import time

import pytest
from feedkit import oru, result_probabilities, small_ecg

from lasan.integration.config import WatchConfig, config_from_dict
from lasan.integration.intake import Intake
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import DurableQueue
from lasan.integration.watch import WatchFolder


def _watch(tmp_path, stable_s=0.5):
    folder = tmp_path / "watch"
    folder.mkdir()
    queue = DurableQueue(tmp_path / "q.sqlite")
    intake = Intake(queue, Metrics(), Health())
    return folder, queue, WatchFolder(WatchConfig(enabled=True, folder=folder, stable_s=stable_s), intake)


def test_files_are_taken_only_when_stable_then_moved(tmp_path):
    from lasan.formats.dicom import dicom_bytes

    folder, queue, watch = _watch(tmp_path)
    (folder / "a.hl7").write_bytes(b"\x0b" + oru(small_ecg(seed=1), "W1") + b"\x1c\r")  # framing tolerated
    (folder / "b.dcm").write_bytes(dicom_bytes(small_ecg(seed=2)))
    (folder / "notes.txt").write_text("Quillfeather called about her ECG")
    now = time.time()
    assert watch.scan_once(now) == 0  # first sight: not yet stable
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["a.hl7", "b.dcm", "notes.txt"]
    os.utime(folder / "a.hl7")  # still being written
    (folder / "a.hl7").write_bytes((folder / "a.hl7").read_bytes() + b"")
    assert watch.scan_once(now + 1.0) == 1  # b.dcm is stable; a.hl7's mtime changed
    assert watch.scan_once(now + 2.0) == 1
    assert sorted(p.name for p in (folder / "processed").iterdir()) == ["a.hl7", "b.dcm"]
    assert [p.name for p in (folder / "rejected").iterdir()] and (folder / "rejected" / "notes.txt.reason.txt").read_text()
    items = {i.kind: i for i in queue.due()}
    assert set(items) == {"hl7", "dicom"}
    assert items["hl7"].key.control_id == "W1" and items["hl7"].raw.startswith(b"MSH")


def test_a_file_seen_again_is_not_queued_twice(tmp_path):
    folder, queue, watch = _watch(tmp_path, stable_s=0)
    message = oru(small_ecg(), "W2")
    (folder / "x.hl7").write_bytes(message)
    assert watch.scan_once() == 1
    (folder / "x-copy.hl7").write_bytes(message)
    assert watch.scan_once() == 0  # same sender and control ID: already stored
    assert queue.counts()["received"] == 1
    assert sorted(p.name for p in (folder / "processed").iterdir()) == ["x-copy.hl7", "x.hl7"]


@pytest.mark.slow
def test_watch_folder_to_result(tmp_path, triton_server, downstream):
    from lasan.integration.cli import IntegrationApp

    cfg = config_from_dict({
        "listener": {"enabled": False},
        "watch": {"enabled": True, "folder": "in", "poll_interval_s": 0.1, "stable_s": 0.2},
        "triton": {"url": triton_server.grpc_url},
        "downstream": {"host": "127.0.0.1", "port": downstream.port},
        "storage": {"queue_db": "q.sqlite", "outbox": "out"},
        "metrics": {"enabled": False},
    }, tmp_path)

    async def main():
        app = IntegrationApp(cfg)
        await app.start()
        try:
            (tmp_path / "in" / "cart.hl7").write_bytes(oru(small_ecg(seed=7), "W3"))
            return await asyncio.to_thread(downstream.wait_for, {"W3"}, 60)
        finally:
            await app.stop()

    got = asyncio.run(main())
    assert result_probabilities(got["W3"][0])
    assert (tmp_path / "in" / "processed" / "cart.hl7").exists()
