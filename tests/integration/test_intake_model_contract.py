"""No AA for an ECG the model would refuse: the intake checks the model's input contract (rate
range, minimum duration, leads) with the code the served preprocess model runs, so such an ECG
gets AE with the reason at intake instead of AA and then a failure without a result."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from feedkit import oru, small_ecg

from lasan.errors import BadWaveformError
from lasan.formats.dicom import dicom_bytes
from lasan.integration.intake import Accepted, Intake, Refused, Source
from lasan.integration.listener import MLLP_SOURCE
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import DurableQueue
from lasan.preprocessing import InputSpec, preprocess_array

DICOM_SOURCE = Source("dicom", formats=("dicom",), suffix=".dcm", sender="ECGCART")


def _intake(tmp_path):
    return Intake(DurableQueue(tmp_path / "q.sqlite"), Metrics(), Health())


def _refused(outcome, match: str) -> Refused:
    assert isinstance(outcome, Refused), f"accepted (AA) an ECG the model refuses: {outcome}"
    assert isinstance(outcome.error, BadWaveformError) and match in outcome.reason
    assert outcome.answer.hl7_ack == "AE" and outcome.answer.hl7_error_code == "102"
    return outcome


@pytest.mark.parametrize(("fs", "match"), [(1e-300, "sampling rate"), (50.0, "100-20000 Hz"), (1e6, "100-20000 Hz")])
def test_hl7_with_a_rate_the_model_refuses_gets_ae_at_intake(tmp_path, fs, match):
    record = small_ecg(seed=1)
    record = dataclasses.replace(record, fs=fs)
    intake = _intake(tmp_path)
    _refused(intake.accept(oru(record, "RATE-1"), MLLP_SOURCE), match)
    assert intake.queue.counts().get("received", 0) == 0  # nothing stored, nothing to fail later
    with pytest.raises(BadWaveformError, match=match):  # and the model refuses it with the same words
        preprocess_array(record.signal, record.fs, record.leads, InputSpec())


def test_hl7_shorter_than_the_model_minimum_gets_ae_at_intake(tmp_path):
    record = small_ecg(seed=2)
    short = dataclasses.replace(record, signal=np.ascontiguousarray(record.signal[:, : int(record.fs * 1.5)]))
    outcome = _refused(_intake(tmp_path).accept(oru(short, "SHORT-1"), MLLP_SOURCE), "at least 2 s")
    assert "1.50 s long" in outcome.reason


def test_dicom_with_a_rate_the_model_refuses_gets_a_failure_status(tmp_path):
    record = dataclasses.replace(small_ecg(seed=3), fs=60.0)  # written as General ECG (outside 200-1000 Hz)
    outcome = _refused(_intake(tmp_path).accept(dicom_bytes(record), DICOM_SOURCE), "100-20000 Hz")
    assert outcome.answer.dicom_status != 0


def test_an_ecg_the_model_takes_is_still_accepted(tmp_path):
    assert isinstance(_intake(tmp_path).accept(oru(small_ecg(seed=4), "OK-1"), MLLP_SOURCE), Accepted)
