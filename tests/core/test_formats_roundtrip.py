"""One ECG, four formats: every reader gives back the same model input."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file

from lasan.formats import read_ecg, write_ecg
from lasan.formats.sample import sample_ecg
from lasan.preprocessing import preprocess

FORMATS = [("dicom", "ecg.dcm"), ("hl7-na", "ecg.hl7"), ("hl7-ed", "ecg_ed.hl7"), ("wfdb", "ecg")]


@pytest.mark.parametrize(
    "record",
    [sample_ecg(fs=500.0), sample_ecg(fs=257.0, seed=3, heart_rate_bpm=95.0), read_ecg(get_testdata_file("waveform_ecg.dcm"))],
    ids=["synthetic-500Hz", "synthetic-257Hz", "mortara-1000Hz"],
)
def test_all_formats_read_back_to_the_same_model_input(tmp_path, record):
    reference = preprocess(record)
    for fmt, name in FORMATS:
        path = write_ecg(record, tmp_path / name, fmt)
        back = read_ecg(path)
        assert back.leads == record.leads, fmt
        assert back.fs == record.fs and back.n_samples == record.n_samples, fmt
        # Every writer stores 1 uV steps: at most 0.5 uV error per sample.
        np.testing.assert_allclose(back.signal, record.signal, atol=0.5e-3 + 1e-6, err_msg=fmt)
        x = preprocess(back)
        assert x.shape == reference.shape and x.dtype == np.float32
        # 0.5 uV against a lead spread of >= 50 uV after z-scoring: < 0.02 per sample.
        np.testing.assert_allclose(x, reference, atol=0.02, err_msg=fmt)
        assert np.corrcoef(x.ravel(), reference.ravel())[0, 1] > 0.9999, fmt


def test_format_is_detected_from_content_not_only_the_name(tmp_path):
    rec = sample_ecg(duration_s=3.0)
    dicom = write_ecg(rec, tmp_path / "a.dcm")
    hl7 = write_ecg(rec, tmp_path / "b.hl7")
    renamed_dicom, renamed_hl7 = tmp_path / "blob1.bin", tmp_path / "blob2.txt"
    renamed_dicom.write_bytes(dicom.read_bytes())
    renamed_hl7.write_bytes(b"\x0b" + hl7.read_bytes() + b"\x1c\r")
    assert read_ecg(renamed_dicom).acquisition.source_format == "dicom"
    assert read_ecg(renamed_hl7).acquisition.source_format == "hl7-na"
    assert read_ecg(dicom.read_bytes()).n_samples == rec.n_samples
