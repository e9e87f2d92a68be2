"""DICOM ECG reading (real Mortara file, by-code lead mapping, scaling) and writing."""

from __future__ import annotations

import io
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.waveforms import multiplex_array

from lasan.errors import BadWaveformError, MalformedECGError, UnsupportedFormatError
from lasan.formats import read_ecg
from lasan.formats.dicom import (
    GENERAL_ECG_SOP_CLASS,
    TWELVE_LEAD_ECG_SOP_CLASS,
    dicom_bytes,
    read_dicom,
    write_dicom,
)
from lasan.formats.sample import sample_ecg
from lasan.leads import STANDARD_LEADS

MORTARA = get_testdata_file("waveform_ecg.dcm")


def _dataset():
    return pydicom.dcmread(MORTARA)


def _bytes(ds) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def test_mortara_rhythm_strip_in_millivolts():
    rec = read_dicom(MORTARA)
    assert rec.leads == STANDARD_LEADS
    assert rec.fs == 1000.0 and rec.n_samples == 10000 and rec.duration_s == 10.0  # not the 1.2 s median beat
    assert rec.acquisition.manufacturer == "Mortara Instrument, Inc." and rec.acquisition.device == "el250"
    assert rec.acquisition.original_units == "uV" and rec.acquisition.sop_class == "12-lead ECG Waveform Storage"
    assert rec.derived_leads == ()
    # pydicom's own scaling (raw x sensitivity x correction + baseline, in uV) as the reference.
    expected_uv = multiplex_array(_dataset(), 0, as_raw=False).T
    np.testing.assert_allclose(rec.signal, expected_uv / 1000.0, atol=1e-6)
    assert 0.5 < np.abs(rec.signal).max() < 5.0  # a plausible ECG in mV
    np.testing.assert_allclose(rec.lead("III"), rec.lead("II") - rec.lead("I"), atol=0.01)  # Einthoven


def test_patient_identifiers_go_to_patient_identity_only():
    rec = read_dicom(MORTARA)
    ds = _dataset()
    assert rec.patient.patient_id == str(ds.PatientID) and rec.patient.name == str(ds.PatientName)
    assert str(ds.PatientID) not in repr(rec)


def test_leads_are_mapped_by_code_not_position():
    ds = _dataset()
    group = ds.WaveformSequence[0]
    order = np.random.default_rng(1).permutation(12)
    raw = np.frombuffer(group.WaveformData, "<i2").reshape(-1, 12)
    group.WaveformData = np.ascontiguousarray(raw[:, order]).tobytes()
    group.ChannelDefinitionSequence = [group.ChannelDefinitionSequence[i] for i in order]
    shuffled = read_dicom(_bytes(ds))
    np.testing.assert_array_equal(shuffled.signal, read_dicom(MORTARA).signal)


def test_mdc_codes_and_code_meanings_are_understood():
    ds = _dataset()
    channels = ds.WaveformSequence[0].ChannelDefinitionSequence
    for k, channel in enumerate(channels):
        source = channel.ChannelSourceSequence[0]
        if k % 2:
            source.CodeValue, source.CodingSchemeDesignator = "X-LOCAL", "99LOCAL"  # meaning only
        else:
            number = {"5.6.3-9-61": 61, "5.6.3-9-62": 62, "5.6.3-9-63": 63, "5.6.3-9-64": 64}.get(source.CodeValue)
            number = number or int(source.CodeValue.rsplit("-", 1)[1])
            source.CodeValue, source.CodingSchemeDesignator = f"2:{number}", "MDC"
    rec = read_dicom(_bytes(ds))
    assert rec.leads == STANDARD_LEADS
    np.testing.assert_array_equal(rec.signal, read_dicom(MORTARA).signal)


def test_sensitivity_correction_baseline_and_units_are_applied():
    ds = _dataset()
    lead_i, lead_ii = ds.WaveformSequence[0].ChannelDefinitionSequence[:2]
    lead_i.ChannelSensitivityCorrectionFactor = "2"
    lead_i.ChannelBaseline = "10"  # uV
    lead_ii.ChannelSensitivity = "0.00125"
    lead_ii.ChannelSensitivityUnitsSequence[0].CodeValue = "mV"
    lead_ii.ChannelSensitivityUnitsSequence[0].CodeMeaning = "millivolt"
    rec, ref = read_dicom(_bytes(ds)), read_dicom(MORTARA)
    np.testing.assert_allclose(rec.lead("I"), ref.lead("I") * 2 + 0.010, atol=1e-6)
    np.testing.assert_allclose(rec.lead("II"), ref.lead("II"), atol=1e-6)


def test_unknown_units_are_refused():
    ds = _dataset()
    ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0].CodeValue = "mmHg"
    ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSensitivityUnitsSequence[0].CodeMeaning = "mmHg"
    with pytest.raises(BadWaveformError, match="mmHg"):
        read_dicom(_bytes(ds))


def test_longest_group_is_used_when_there_are_no_labels():
    ds = _dataset()
    ds.WaveformSequence = [ds.WaveformSequence[1], ds.WaveformSequence[0]]  # median beat first
    for group in ds.WaveformSequence:
        del group.MultiplexGroupLabel
    assert read_dicom(_bytes(ds)).n_samples == 10000


def test_general_ecg_sop_class_is_read_and_others_refused():
    ds = _dataset()
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = GENERAL_ECG_SOP_CLASS
    assert read_dicom(_bytes(ds)).acquisition.sop_class == "General ECG Waveform Storage"
    with pytest.raises(UnsupportedFormatError, match="CT Image Storage"):
        read_ecg(get_testdata_file("CT_small.dcm"))


def test_writer_round_trip_within_one_microvolt_and_choice_of_sop_class(tmp_path):
    rec = sample_ecg()
    path = write_dicom(rec, tmp_path / "ecg.dcm")
    back = read_ecg(path)
    assert back.leads == rec.leads and back.fs == rec.fs
    np.testing.assert_allclose(back.signal, rec.signal, atol=0.5e-3 + 1e-6)
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == TWELVE_LEAD_ECG_SOP_CLASS
    assert ds.WaveformSequence[0].ChannelDefinitionSequence[0].ChannelSourceSequence[0].CodeValue == "5.6.3-9-1"
    assert ds.PatientName == "Testperson^Anna"
    fast = sample_ecg(fs=2000.0, duration_s=3.0)
    assert pydicom.dcmread(io.BytesIO(dicom_bytes(fast))).SOPClassUID == GENERAL_ECG_SOP_CLASS
    loud = sample_ecg()
    big = type(loud)(loud.signal * 60, loud.fs, loud.leads, loud.acquisition)  # beyond int16 at 1 uV
    np.testing.assert_allclose(read_dicom(dicom_bytes(big)).signal, big.signal, rtol=1e-3, atol=0.05)


def test_written_file_passes_dcmdump(tmp_path):
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmdump (dcmtk) is not installed; `make install` installs it")
    path = write_dicom(sample_ecg(), tmp_path / "ecg.dcm")
    result = subprocess.run([dcmdump, "-E", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "TwelveLeadECGWaveformStorage" in result.stdout and "W:" not in result.stderr + result.stdout


def test_nan_cannot_be_written():
    rec = sample_ecg()
    signal = rec.signal.copy()
    signal[0, 5] = np.nan
    with pytest.raises(BadWaveformError):
        dicom_bytes(type(rec)(signal, rec.fs, rec.leads, rec.acquisition))


@pytest.mark.parametrize("cut", [132, 200, 1000, 3000, 100_000, 145_544])
def test_truncated_files_are_malformed(cut):
    data = open(MORTARA, "rb").read()[:cut]
    with pytest.raises(MalformedECGError):
        read_ecg(data)
