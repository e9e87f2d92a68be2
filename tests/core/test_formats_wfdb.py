"""WFDB records as PhysioNet ships them (PTB, PTB-XL), written here byte by byte."""

from __future__ import annotations

import numpy as np
import pytest

from lasan.errors import BadWaveformError, MalformedECGError
from lasan.formats import detect_format, read_ecg, write_ecg
from lasan.formats.sample import sample_ecg
from lasan.formats.wfdb_io import read_wfdb, write_wfdb
from lasan.leads import STANDARD_LEADS

PTB_NAMES = ["i", "ii", "iii", "avr", "avl", "avf", "v1", "v2", "v3", "v4", "v5", "v6", "vx", "vy", "vz"]


def _write_record(folder, name, names, fs, gain, units, counts, extra_header=""):
    """A format-16 WFDB record with the header layout PhysioNet uses."""
    n = counts.shape[0]
    lines = [f"{name} {len(names)} {fs:g} {n}"]
    for k, sig in enumerate(names):
        lines.append(f"{name}.dat 16 {gain:g}({0})/{units} 16 0 {counts[0, k]} 0 0 {sig}")
    (folder / f"{name}.hea").write_text("\n".join(lines) + "\n" + extra_header)
    counts.astype("<i2").tofile(folder / f"{name}.dat")
    return folder / f"{name}.hea"


def test_ptb_style_record_with_frank_leads(tmp_path):
    ref = sample_ecg(fs=1000.0, duration_s=4.0)
    frank = np.zeros((3, ref.n_samples))
    counts = np.rint(np.vstack([ref.signal, frank]).T * 2000).astype(np.int64)  # PTB: gain 2000/mV
    hea = _write_record(tmp_path, "s0010_re", PTB_NAMES, 1000, 2000, "mV", counts, "# age: 81\n# sex: female\n")
    assert detect_format(hea) == "wfdb" and detect_format(tmp_path / "s0010_re") == "wfdb"
    rec = read_ecg(tmp_path / "s0010_re")
    assert rec.leads == STANDARD_LEADS and rec.fs == 1000.0 and rec.acquisition.source_format == "wfdb"
    assert sum("'v" in note for note in rec.acquisition.notes) == 3  # vx vy vz skipped, said so
    np.testing.assert_allclose(rec.signal, ref.signal, atol=0.25e-3 + 1e-6)
    assert rec.patient.patient_id is None and rec.patient.name is None


def test_ptb_xl_style_microvolt_header_and_mixed_case(tmp_path):
    ref = sample_ecg(fs=500.0, duration_s=10.0)
    names = ["I", "II", "III", "AVR", "AVL", "AVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    counts = np.rint(ref.signal.T * 1000).astype(np.int64)  # 1 count = 1 uV, header in uV
    _write_record(tmp_path, "00001_hr", names, 500, 1, "uV", counts)
    rec = read_wfdb(tmp_path / "00001_hr.hea")
    assert rec.leads == STANDARD_LEADS and rec.acquisition.original_units == "uV"
    np.testing.assert_allclose(rec.signal, ref.signal, atol=0.5e-3 + 1e-6)


def test_missing_lead_ii_is_derived_and_flagged(tmp_path):
    ref = sample_ecg()
    names = ["i", "iii", "v1", "v2", "v3", "v4", "v5", "v6"]
    counts = np.rint(np.stack([ref.lead(n.upper() if n != "iii" else "III") for n in names]).T * 1000)
    _write_record(tmp_path, "rec", names, 500, 1000, "mV", counts.astype(np.int64))
    rec = read_ecg(tmp_path / "rec.hea")
    assert "II" in rec.derived_leads
    np.testing.assert_allclose(rec.lead("II"), ref.lead("II"), atol=1.5e-3)


def test_non_voltage_units_and_broken_records(tmp_path):
    counts = np.zeros((100, 2), dtype=np.int64)
    _write_record(tmp_path, "bp", ["i", "ii"], 500, 1, "mmHg", counts)
    with pytest.raises(BadWaveformError, match="mmHg"):
        read_ecg(tmp_path / "bp.hea")
    hea = _write_record(tmp_path, "cut", ["i", "ii"], 500, 1000, "mV", np.zeros((1000, 2), dtype=np.int64))
    (tmp_path / "cut.dat").write_bytes(b"\x00" * 10)
    with pytest.raises(MalformedECGError):
        read_ecg(hea)
    (tmp_path / "nodat.hea").write_text("nodat 1 500 100\nnodat.dat 16 1000/mV 16 0 0 0 0 i\n")
    with pytest.raises(MalformedECGError):
        read_ecg(tmp_path / "nodat.hea")


def test_writer_round_trip_ptb_xl_style(tmp_path):
    rec = sample_ecg(fs=500.0)
    hea = write_ecg(rec, tmp_path / "out" / "ecg_1")
    assert hea.name == "ecg_1.hea"
    names = [line.split()[-1] for line in hea.read_text().splitlines()[1:] if line and not line.startswith("#")]
    assert names == [lead.lower() for lead in rec.leads]  # PTB-XL spelling
    back = read_ecg(hea)
    assert back.leads == rec.leads and back.fs == rec.fs
    np.testing.assert_allclose(back.signal, rec.signal, atol=0.5e-3 + 1e-6)
    with pytest.raises(MalformedECGError, match="letters"):
        write_wfdb(rec, tmp_path / "bad name")
