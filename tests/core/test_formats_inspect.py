"""``lasan inspect`` through the installed console script, and the malformed-input corpus."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from lasan.errors import (
    HL7MalformedError,
    HL7UnsupportedError,
    HL7WaveformError,
    MalformedECGError,
    UnsupportedFormatError,
)
from lasan.formats import read_ecg, write_ecg
from lasan.formats.sample import sample_ecg
from lasan.hl7.oru import build_oru

MORTARA = get_testdata_file("waveform_ecg.dcm")
LASAN = Path(sys.executable).with_name("lasan")


def _lasan(*args: str) -> subprocess.CompletedProcess[str]:
    assert LASAN.exists(), f"the console script {LASAN} is not installed (pip install -e .)"
    return subprocess.run([str(LASAN), *args], capture_output=True, text=True, timeout=120, env={**os.environ})


def _na_text(**replace: str) -> str:
    text = build_oru(sample_ecg(duration_s=2.5), control_id="M1").decode()
    for old, new in replace.items():
        text = text.replace(old, new, 1)
    return text


def _corpus(folder: Path) -> dict[str, tuple[Path, type[Exception]]]:
    """Each malformed input with the typed error it must raise."""
    mortara = Path(MORTARA).read_bytes()
    lines = _na_text().split("\r")
    v6 = next(i for i, line in enumerate(lines) if "MDC_ECG_LEAD_V6" in line)
    unequal = lines.copy()
    fields = unequal[v6].split("|")
    fields[5] = fields[5].rsplit("^", 1)[0]  # V6 one sample shorter than the others
    unequal[v6] = "|".join(fields)
    items = {
        "truncated.dcm": (mortara[: len(mortara) // 3], MalformedECGError),
        "ct.dcm": (Path(get_testdata_file("CT_small.dcm")).read_bytes(), UnsupportedFormatError),
        "no_msh.hl7": ("\r".join(lines[1:]).encode(), HL7MalformedError),
        "not_numbers.hl7": ("\r".join(lines).replace("|NA|131329^MDC_ECG_LEAD_I^MDC|1.0.0.2|", "|NA|131329^MDC_ECG_LEAD_I^MDC|1.0.0.2|x1^", 1).encode(), HL7WaveformError),
        "unequal.hl7": ("\r".join(unequal).encode(), HL7WaveformError),
        "adt.hl7": (_na_text(**{"ORU^R01^ORU_R01": "ADT^A01^ADT_A01"}).encode(), HL7UnsupportedError),
        "garbage.bin": (bytes(range(256)) * 40, UnsupportedFormatError),
        "empty.dcm": (b"", MalformedECGError),
        "big.hl7": (_na_text().encode() + b"OBX|99|NA|131331^MDC_ECG_LEAD_V1^MDC|9|" + b"12^" * (17 * 1024 * 1024) + b"1\r", HL7MalformedError),
    }
    out = {}
    for name, (data, error) in items.items():
        (folder / name).write_bytes(data)
        out[name] = (folder / name, error)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("malformed"))


@pytest.mark.timeout(60)
def test_each_malformed_input_raises_its_specific_error(corpus):
    for name, (path, error) in corpus.items():
        with pytest.raises(error) as info:
            read_ecg(path)
        assert type(info.value) is error or issubclass(type(info.value), error), name
        assert len(str(info.value)) > 20, name  # a sentence, not a code


def test_inspect_json_on_the_mortara_file():
    result = _lasan("inspect", "--json", MORTARA)
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.strip().splitlines()
    summary = json.loads(line)
    assert summary["format"] == "dicom" and summary["fs"] == 1000.0 and summary["duration_s"] == 10.0
    assert summary["leads"] == ["I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6"]
    assert summary["n_samples"] == 10000 and summary["units"] == "mV" and summary["source_units"] == "uV"
    assert summary["manufacturer"] == "Mortara Instrument, Inc." and summary["device"] == "el250"
    assert summary["quality"] == []
    assert {"format", "fs", "duration_s", "leads", "n_samples", "quality", "units", "path"} <= set(summary)


@pytest.mark.timeout(120)
def test_inspect_reports_good_files_and_one_line_per_bad_file(tmp_path, corpus):
    good = write_ecg(sample_ecg(leads=("I", "III", "V1", "V2", "V3", "V4", "V5")), tmp_path / "partial.hl7")
    bad = [str(path) for path, _ in corpus.values()]
    result = _lasan("inspect", "--json", str(good), *bad)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(bad) and all(line.startswith("lasan inspect: ") for line in errors)
    rows = [json.loads(line) for line in result.stdout.strip().splitlines()]
    ok = [row for row in rows if "error" not in row]
    assert len(ok) == 1 and ok[0]["format"] == "hl7-na"
    codes = {(q["code"], q["lead"]) for q in ok[0]["quality"]}
    assert ("missing_lead", "V6") in codes and ("derived_lead", "II") in codes
    assert "Testperson" not in result.stdout + result.stderr and "TEST-0001" not in result.stdout + result.stderr
    assert {row["path"] for row in rows if "error" in row} == set(bad)


def test_inspect_text_output_and_flags(tmp_path):
    rec = sample_ecg()
    signal = rec.signal.copy()
    signal[rec.leads.index("V4")] = 0.0
    flat = write_ecg(type(rec)(signal, rec.fs, rec.leads, rec.acquisition), tmp_path / "flat.dcm")
    result = _lasan("inspect", str(flat), str(tmp_path / "missing.dcm"))
    assert result.returncode == 1
    assert "flat_lead" in result.stdout and "V4" in result.stdout and "12-lead ECG Waveform Storage" in result.stdout
    assert result.stderr.strip().count("\n") == 0 and "no such file" in result.stderr
