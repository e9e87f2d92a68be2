"""Client-test fixtures: real ECG files on disk (the shared Triton fixtures are in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from lasan.formats import read_ecg, write_ecg
from lasan.formats.sample import sample_ecg
from lasan.record import ECGRecord


@pytest.fixture(scope="session")
def mortara_path() -> Path:
    """pydicom's real 12-lead Mortara ECG (1000 Hz, 10 s)."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("waveform_ecg.dcm"))


@pytest.fixture(scope="session")
def ecg_files(tmp_path_factory: pytest.TempPathFactory, mortara_path: Path) -> dict[str, Path]:
    """Good ECG files in each format the readers know, plus a bad one."""
    d = tmp_path_factory.mktemp("ecgs")
    files = {
        "wfdb": write_ecg(sample_ecg(fs=500.0, seed=1), d / "synthetic_wfdb.hea"),
        "hl7": write_ecg(sample_ecg(fs=250.0, seed=2, heart_rate_bpm=90.0), d / "synthetic.hl7"),
        "dicom": mortara_path,
    }
    bad = d / "not_an_ecg.txt"
    bad.write_text("this is not an ECG\n")
    files["bad"] = bad
    return files


@pytest.fixture(scope="session")
def mortara(mortara_path: Path) -> ECGRecord:
    return read_ecg(mortara_path)


def _eight_lead(record: ECGRecord) -> ECGRecord:
    order = ("V3", "I", "V1", "V6", "II", "V2", "V5", "V4")
    rows = np.stack([record.lead(lead) for lead in order])
    return replace(record, signal=rows, leads=order, derived_leads=())


@pytest.fixture(scope="session")
def eight_lead() -> Callable[[ECGRecord], ECGRecord]:
    """``eight_lead(record)``: the same ECG with only I, II, V1-V6, shuffled (as some carts export them)."""
    return _eight_lead
