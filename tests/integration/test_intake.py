"""The one intake in memory: data sets, duplicates, channels, storage failure, the answer table."""

from __future__ import annotations

import io

import pydicom
from feedkit import oru, small_ecg

from lasan.errors import QueueStorageError, UnsupportedFormatError
from lasan.formats.dicom import dicom_bytes
from lasan.integration.handoff import ParsedRecords
from lasan.integration.intake import Accepted, Intake, Refused, Source
from lasan.integration.listener import MLLP_SOURCE
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import DurableQueue

DICOM_SOURCE = Source("dicom", formats=("dicom",), suffix=".dcm", sender="ECGCART")


def _intake(tmp_path, **kw):
    return Intake(DurableQueue(tmp_path / "q.sqlite"), Metrics(), Health(), **kw)


def test_a_dicom_data_set_is_read_once_and_handed_over_with_its_order(tmp_path):
    raw = dicom_bytes(small_ecg(seed=1))
    ds = pydicom.dcmread(io.BytesIO(raw))
    handoff = ParsedRecords()
    intake = _intake(tmp_path, handoff=handoff)
    first = intake.accept(ds, DICOM_SOURCE)
    assert isinstance(first, Accepted) and first.kind == "dicom" and not first.duplicate
    assert first.key.control_id == str(ds.SOPInstanceUID) and first.key.sender_app == "ECGCART"
    handed = handoff.take(first.item_id)
    assert handed is not None and handed.record is first.parsed.record
    assert handed.order.original_control_id == str(ds.SOPInstanceUID) and handed.order.sending_application == "ECGCART"
    again = intake.accept(raw, DICOM_SOURCE)  # the same object as bytes: already stored
    assert isinstance(again, Accepted) and again.duplicate and again.item_id == first.item_id
    assert intake.queue.counts()["received"] == 1 and len(handoff) == 0


def test_a_channel_refuses_formats_it_does_not_carry(tmp_path):
    intake = _intake(tmp_path)
    refused = intake.accept(dicom_bytes(small_ecg(seed=2)), MLLP_SOURCE)
    assert isinstance(refused, Refused) and isinstance(refused.error, UnsupportedFormatError)
    assert (refused.answer.hl7_ack, refused.answer.hl7_error_code) == ("AR", "200")
    refused = intake.accept(oru(small_ecg(seed=2), "C-1"), DICOM_SOURCE)
    assert isinstance(refused, Refused) and refused.answer.dicom_status == 0xA900


def test_storage_failure_is_refused_with_the_queue_answer_and_nothing_is_handed_over(tmp_path):
    handoff = ParsedRecords()
    intake = _intake(tmp_path, handoff=handoff)
    intake.queue.close()
    refused = intake.accept(oru(small_ecg(seed=3), "Q-1"), MLLP_SOURCE)
    assert isinstance(refused, Refused) and isinstance(refused.error, QueueStorageError)
    assert "could not be stored" in refused.reason and refused.control_id == "Q-1"
    assert (refused.answer.hl7_ack, refused.answer.hl7_error_code, refused.answer.dicom_status) == ("AE", "207", 0xA700)
    assert len(handoff) == 0 and intake.health.last_error
