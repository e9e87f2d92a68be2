"""The ECG-system exports through the entry points other than the watch folder (which
``test_formats_vendor_intake.py`` covers): the ``lasan inspect`` console script, ``--help`` of
``lasan inspect`` and ``lasan score``, HL7 ED attachments (routed through the same content
detection as a file) and training manifests (``read_manifest`` + ``load_arrays``). ``lasan score``
on these files is in ``test_formats_vendor_triton.py`` (it needs the served ensemble)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_formats_vendor import BUILDERS, EIGHT, PATIENT_ID, PHILIPS, SUFFIX, _corrupt, needs_philips
from test_formats_vendor_fhir import ecg_observation
from test_formats_vendor_intake import _ed_message

from lasan.errors import ECGFormatError, HL7UnsupportedError
from lasan.formats import VENDOR_FORMATS, read_ecg, write_ecg
from lasan.formats.sample import sample_ecg
from lasan.formats.vendor import FORMAT_NAMES
from lasan.leads import STANDARD_LEADS
from lasan.preprocessing import InputSpec, preprocess

LASAN = Path(sys.executable).with_name("lasan")


def _lasan(*args: str) -> subprocess.CompletedProcess[str]:
    assert LASAN.exists(), f"the console script {LASAN} is not installed (pip install -e .)"
    return subprocess.run([str(LASAN), *args], capture_output=True, text=True, timeout=120, env={**os.environ})


def export_files(folder: Path) -> dict[str, Path]:
    """One file of each ECG-system export (the real Philips file when present) and a FHIR Observation."""
    data = {fmt: build() for fmt, build in BUILDERS.items()}
    if PHILIPS.exists():
        data["philips-sierra"] = PHILIPS.read_bytes()
    data["fhir"] = json.dumps(ecg_observation()).encode()
    files = {}
    for fmt, raw in data.items():
        files[fmt] = folder / f"{fmt}{SUFFIX[fmt]}"
        files[fmt].write_bytes(raw)
    return files


@pytest.mark.parametrize("command", ["inspect", "score"])
def test_help_lists_every_format(command: str) -> None:
    result = _lasan(command, "--help")
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())  # argparse wraps the help text
    for name in (*FORMAT_NAMES.values(), "DICOM", "HL7 v2 ORU", "WFDB", "FHIR R4", "1.03/1.04/1.04.01"):
        assert name in text, (command, name)


@pytest.mark.timeout(120)
def test_lasan_inspect_reads_each_export_and_names_each_broken_one(tmp_path: Path) -> None:
    files = export_files(tmp_path)
    broken = {}
    for fmt, path in files.items():
        broken[fmt] = tmp_path / f"broken-{path.name}"
        broken[fmt].write_bytes(_corrupt(fmt, path.read_bytes()))
    result = _lasan("inspect", "--json", *map(str, files.values()), *map(str, broken.values()))
    assert result.returncode == 1  # some files could not be read
    rows = {row["path"]: row for row in map(json.loads, result.stdout.splitlines())}
    for fmt, path in files.items():
        row = rows[str(path)]
        assert row["format"] == fmt and row["verdict"] == "accepted", row
        assert row["fs"] == 500.0 and row["leads"] == list(STANDARD_LEADS) and row["units"] == "mV"
        expected_derived = [lead for lead in STANDARD_LEADS if lead not in EIGHT] if fmt == "ge-muse" else []
        assert row["derived_leads"] == expected_derived
        derived_flags = sorted(q["lead"] for q in row["quality"] if q["code"] == "derived_lead")
        assert derived_flags == sorted(expected_derived)
    for fmt, path in broken.items():
        assert rows[str(path)]["verdict"] == "refused" and "truncated or corrupt" in rows[str(path)]["error"], fmt
    errors = result.stderr.strip().splitlines()
    assert len(errors) == len(broken) and all(line.startswith("lasan inspect: ") for line in errors)
    assert all(any(str(path) in line for line in errors) for path in broken.values())
    assert "Traceback" not in result.stderr
    assert PATIENT_ID not in result.stdout + result.stderr and "Doe" not in result.stdout + result.stderr


# ---------------------------------------------------------------- HL7 ED attachments
@needs_philips
def test_hl7_ed_carrying_the_real_philips_export_reads_like_the_file() -> None:
    record = read_ecg(_ed_message(PHILIPS.read_bytes(), "XML", "EDP"))
    assert record.acquisition.source_format == "hl7-ed"
    np.testing.assert_array_equal(record.signal, read_ecg(PHILIPS).signal)


@pytest.mark.parametrize("fmt", ["mortara", "edf"])
def test_hl7_ed_carrying_the_other_exports_reads_like_the_file(fmt: str) -> None:
    export = BUILDERS[fmt]()
    record = read_ecg(_ed_message(export, "Octet-stream", "EDV"))
    np.testing.assert_array_equal(record.signal, read_ecg(export).signal)


def test_hl7_ed_is_detected_by_content_like_a_file(tmp_path: Path) -> None:
    """A DICOM ECG under a generic subtype and a FHIR Observation are found by the file detection."""
    dicom = write_ecg(sample_ecg(seed=4), tmp_path / "ecg.dcm").read_bytes()
    record = read_ecg(_ed_message(dicom, "Octet-stream", "EDD"))
    np.testing.assert_allclose(record.signal, read_ecg(dicom).signal, atol=1e-6)
    fhir = json.dumps(ecg_observation()).encode()
    record = read_ecg(_ed_message(fhir, "JSON", "EDF"))
    np.testing.assert_array_equal(record.signal, read_ecg(fhir).signal)
    # An XML document that is no ECG export is an attachment of another kind, not an ECG.
    with pytest.raises(HL7UnsupportedError, match="ECG-system export"):
        read_ecg(_ed_message(b'<?xml version="1.0"?><invoice><total>3</total></invoice>', "XML", "EDX"))


# ---------------------------------------------------------------- training manifests
def test_training_manifest_of_exports_preprocesses_each_file_like_the_served_path(tmp_path: Path) -> None:
    from lasan.train.dataset import load_arrays
    from lasan.train.manifest import read_manifest

    files = export_files(tmp_path)
    manifest = tmp_path / "manifest.csv"
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["patient_id", "path", "label", "format"])
        for k, (fmt, path) in enumerate(files.items()):
            writer.writerow([f"P{k}", path.name, ("ARVC", "LQTS", "control")[k % 3], fmt])  # relative paths
    rows = read_manifest(manifest)
    assert {row.format for row in rows} == set(files)
    spec = InputSpec()
    arrays = load_arrays(rows, spec, ("ARVC", "LQTS", "control"), cache_dir=tmp_path / "cache")
    assert arrays.x.shape == (len(files), len(spec.leads), spec.n_samples)
    for k, path in enumerate(files.values()):
        np.testing.assert_allclose(arrays.x[k], preprocess(read_ecg(path), spec), atol=1e-6)
    assert {*VENDOR_FORMATS, "fhir"} - {"philips-sierra"} <= set(files)


def test_training_manifest_with_a_corrupt_export_names_the_file(tmp_path: Path) -> None:
    from lasan.train.dataset import load_arrays
    from lasan.train.manifest import read_manifest

    bad = tmp_path / "scp.scp"
    bad.write_bytes(_corrupt("scp-ecg", BUILDERS["scp-ecg"]()))
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("patient_id,path,label,format\nP1,scp.scp,ARVC,scp-ecg\n")
    with pytest.raises(ECGFormatError, match="truncated or corrupt") as info:
        load_arrays(read_manifest(manifest), InputSpec(), ("ARVC", "LQTS", "control"))
    assert str(bad) in str(info.value)
