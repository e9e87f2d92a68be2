"""The ECG record's invariants and the structured quality findings."""

from __future__ import annotations

import numpy as np
import pytest

from lasan.errors import BadWaveformError
from lasan.formats.sample import sample_ecg
from lasan.quality import check_quality
from lasan.record import Acquisition, ECGRecord, PatientIdentity


def _codes(record):
    return {(f.code, f.lead) for f in check_quality(record)}


def test_record_is_frozen_float32_and_hides_identifiers():
    rec = sample_ecg()
    assert rec.signal.dtype == np.float32 and not rec.signal.flags.writeable
    with pytest.raises(AttributeError):
        rec.fs = 250.0  # type: ignore[misc]
    text = repr(rec) + str(rec.patient)
    for secret in ("TEST-0001", "Testperson", "19700101"):
        assert secret not in text
    assert "patient_id" in text  # it says which identifiers exist


@pytest.mark.parametrize(
    ("signal", "leads", "fs", "match"),
    [
        (np.zeros(10), ("I",), 500.0, "2-D"),
        (np.zeros((2, 10)), ("I",), 500.0, "2 waveform rows"),
        (np.zeros((2, 10)), ("I", "I"), 500.0, "duplicate"),
        (np.zeros((1, 10)), ("vx",), 500.0, "non-canonical"),
        (np.zeros((1, 10)), ("I",), 0.0, "sampling rate"),
    ],
)
def test_record_refuses_inconsistent_inputs(signal, leads, fs, match):
    with pytest.raises(BadWaveformError, match=match):
        ECGRecord(signal, fs, leads, Acquisition("synthetic"))


def test_clean_record_has_no_findings():
    assert check_quality(sample_ecg()) == []


def test_quality_findings_flat_saturation_nan_short_missing_derived():
    rec = sample_ecg()
    signal = rec.signal.copy()
    signal[rec.leads.index("V1")] = 0.1  # lead off
    v2 = signal[rec.leads.index("V2")]
    signal[rec.leads.index("V2")] = np.clip(v2, None, np.percentile(v2, 90))  # amplifier clipping
    signal[rec.leads.index("V3"), 10:20] = np.nan
    bad = ECGRecord(signal, rec.fs, rec.leads, rec.acquisition)
    codes = _codes(bad)
    assert {("flat_lead", "V1"), ("saturation", "V2"), ("nan", "V3")} <= codes

    short = sample_ecg(duration_s=1.0)
    assert any(f.code == "too_short" and f.severity == "error" for f in check_quality(short))
    assert any(f.code == "too_short" and f.severity == "warning" for f in check_quality(sample_ecg(duration_s=3.0)))

    partial = sample_ecg(leads=("I", "III", "V1", "V2", "V3", "V4", "V5"))
    assert ("missing_lead", "V6") in _codes(partial)
    assert ("derived_lead", "II") in _codes(partial.with_derived_leads())


def test_implausible_amplitude_suggests_wrong_units():
    rec = sample_ecg()
    in_microvolts = ECGRecord(rec.signal * 1000, rec.fs, rec.leads, rec.acquisition, PatientIdentity())
    findings = check_quality(in_microvolts)
    assert any(f.code == "implausible_amplitude" for f in findings)
    assert all(set(f.to_dict()) == {"code", "severity", "lead", "message"} for f in findings)
