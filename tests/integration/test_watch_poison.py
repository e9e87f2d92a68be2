"""A poison file never jams the watch folder: a file that cannot be read goes to rejected/ with
its reason at once and is never retried; only storage failures are retried, and only a bounded
number of times; one bad file never stops the files after it."""

from __future__ import annotations

from feedkit import oru, small_ecg

from lasan.formats.dicom import dicom_bytes
from lasan.integration.config import WatchConfig
from lasan.integration.intake import Intake
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import DurableQueue
from lasan.integration.watch import WatchFolder


def _watch(tmp_path, **kwargs):
    folder = tmp_path / "watch"
    folder.mkdir()
    queue = DurableQueue(tmp_path / "q.sqlite")
    intake = Intake(queue, Metrics(), Health())
    watch = WatchFolder(WatchConfig(enabled=True, folder=folder, stable_s=0), intake, **kwargs)
    watch.prepare()
    return folder, queue, watch


def _corrupt_dicom() -> bytes:
    """A real DICOM ECG whose SamplingFrequency has a VR that is not a VR: pydicom reads the file
    and fails only when the value is decoded (the probe's poison file)."""
    data = bytearray(dicom_bytes(small_ecg(seed=4)))
    at = data.find(bytes.fromhex("3a001a00"))  # (003A,001A) Sampling Frequency, explicit VR little endian
    data[at + 4:at + 6] = b"S\x00"
    return bytes(data)


def test_a_corrupt_dicom_is_rejected_at_once_with_its_reason_and_the_next_file_is_taken(tmp_path):
    folder, queue, watch = _watch(tmp_path)
    (folder / "a-poison.dcm").write_bytes(_corrupt_dicom())
    (folder / "b-good.hl7").write_bytes(oru(small_ecg(seed=5), "P1"))
    assert watch.scan_once() == 1  # the good file after the poison one is stored in the same scan
    assert [p.name for p in (folder / "processed").iterdir()] == ["b-good.hl7"]
    reason = (folder / "rejected" / "a-poison.dcm.reason.txt").read_text()
    assert "corrupt or wrongly typed" in reason and "internal error" not in reason
    assert (folder / "rejected" / "a-poison.dcm").exists() and not (folder / "a-poison.dcm").exists()
    assert watch.scan_once() == 0 and not watch.health.last_error  # nothing left to retry, no error
    assert queue.counts().get("received") == 1


def test_storage_failures_are_retried_a_bounded_number_of_times_then_rejected(tmp_path):
    folder, queue, watch = _watch(tmp_path, max_store_attempts=3)
    (folder / "cart.hl7").write_bytes(oru(small_ecg(seed=6), "P2"))
    queue.close()  # a real storage failure: every enqueue raises QueueStorageError
    assert watch.scan_once() == 0 and (folder / "cart.hl7").exists()  # transient: kept for the next scan
    assert watch.scan_once() == 0 and (folder / "cart.hl7").exists()
    assert watch.scan_once() == 0 and not (folder / "cart.hl7").exists()  # third failure: given up
    reason = (folder / "rejected" / "cart.hl7.reason.txt").read_text()
    assert "could not be stored" in reason and "gave up after 3 attempts" in reason
    assert watch.scan_once() == 0


def test_a_storage_failure_then_recovery_stores_the_file(tmp_path):
    folder, queue, watch = _watch(tmp_path, max_store_attempts=3)
    (folder / "cart.hl7").write_bytes(oru(small_ecg(seed=7), "P3"))
    queue.close()
    assert watch.scan_once() == 0
    watch.intake.queue = DurableQueue(tmp_path / "q.sqlite")  # the storage is back
    assert watch.scan_once() == 1
    assert [p.name for p in (folder / "processed").iterdir()] == ["cart.hl7"]
