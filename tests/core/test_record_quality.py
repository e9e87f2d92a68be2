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


def _swap_arm_electrodes(rec: ECGRecord) -> ECGRecord:
    """The record a cart makes with LA and RA swapped: I inverted, II<->III, aVR<->aVL, aVF kept."""
    lead = {name: rec.lead(name) for name in rec.leads}
    swapped = {**lead, "I": -lead["I"], "II": lead["III"], "III": lead["II"], "aVR": lead["aVL"], "aVL": lead["aVR"]}
    return ECGRecord(np.stack([swapped[n] for n in rec.leads]), rec.fs, rec.leads, rec.acquisition)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_limb_lead_reversal_is_flagged_and_a_correct_record_is_not(seed):
    rec = sample_ecg(seed=seed, heart_rate_bpm=60 + 15 * seed)
    assert "limb_lead_reversal" not in {f.code for f in check_quality(rec)}
    reversed_findings = [f for f in check_quality(_swap_arm_electrodes(rec)) if f.code == "limb_lead_reversal"]
    assert len(reversed_findings) == 1
    finding = reversed_findings[0]
    assert finding.severity == "warning" and finding.lead == "I" and "electrodes" in finding.message


def test_right_axis_deviation_alone_is_not_called_a_reversal():
    # Negative QRS in lead I with an upright sinus P: right-axis deviation, not swapped arms.
    rec = sample_ecg()
    i = rec.lead("I").astype(np.float64)
    t = np.arange(i.size) / rec.fs
    r_times = t[(np.diff(i, prepend=i[0]) > 0) & (np.diff(i, append=i[-1]) <= 0) & (i > 0.5 * i.max())]
    flipped_qrs = i.copy()
    for r in r_times:
        window = np.abs(t - r) < 0.06
        flipped_qrs[window] = -i[window]
    signal = rec.signal.copy()
    signal[rec.leads.index("I")] = flipped_qrs
    assert "limb_lead_reversal" not in {f.code for f in check_quality(ECGRecord(signal, rec.fs, rec.leads, rec.acquisition))}
