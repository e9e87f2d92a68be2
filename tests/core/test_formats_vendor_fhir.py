"""FHIR R4 input: an ECG Observation with one SampledData component per lead (the German base
profile's EKG shape), written here by hand from the FHIR specification with known samples."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_formats_vendor import PATIENT_ID, counts

from lasan.errors import BadWaveformError, MalformedECGError, UnsupportedFormatError
from lasan.formats import detect_format, read_ecg
from lasan.formats.cli import inspect_file
from lasan.leads import MDC_CODES, STANDARD_LEADS

FACTOR_UV = 2.5
MDC_SYSTEM = "urn:oid:2.16.840.1.113883.6.24"


def ecg_observation(raw: np.ndarray | None = None, *, period_ms: float = 2.0, unit: str = "uV") -> dict:
    raw = counts(FACTOR_UV) if raw is None else raw
    components = [
        {
            "code": {"coding": [{"system": MDC_SYSTEM, "code": str(MDC_CODES[lead][0]), "display": MDC_CODES[lead][1]}]},
            "valueSampledData": {
                "origin": {"value": 0, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
                "period": period_ms, "factor": FACTOR_UV, "dimensions": 1,
                "data": " ".join(map(str, row)),
            },
        }
        for lead, row in zip(STANDARD_LEADS, raw, strict=True)
    ]
    return {
        "resourceType": "Observation",
        "id": "ecg-1",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "procedure"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6", "display": "EKG study"}]},
        "subject": {"identifier": {"system": "urn:oid:1.2.3", "value": PATIENT_ID}, "display": "Jane Doe"},
        "effectiveDateTime": "2021-05-06T10:11:12+02:00",
        "device": {"display": "MAC 5500"},
        "component": components,
    }


def _bytes(document: dict) -> bytes:
    return json.dumps(document, indent=1).encode()


def test_reads_sampled_data_leads_in_mv_with_rate_from_the_period(tmp_path: Path) -> None:
    path = tmp_path / "ecg.json"
    path.write_bytes(_bytes(ecg_observation()))
    assert detect_format(path) == "fhir"
    record = read_ecg(path)
    assert record.acquisition.source_format == "fhir" and record.fs == 500.0
    assert record.leads == STANDARD_LEADS
    np.testing.assert_allclose(record.signal, counts(FACTOR_UV) * FACTOR_UV / 1000.0, atol=1e-6)
    assert record.patient.patient_id == PATIENT_ID and PATIENT_ID not in repr(record)
    summary, error, refusal = inspect_file(str(path))
    assert error is None and refusal is None and summary["format"] == "fhir"


def test_a_bundle_is_searched_for_its_ecg_observation() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}, {"resource": ecg_observation()}]}
    assert read_ecg(_bytes(bundle)).leads == STANDARD_LEADS


def test_millivolt_origin_and_1000_hz() -> None:
    raw = counts(FACTOR_UV)
    record = read_ecg(_bytes(ecg_observation(raw, period_ms=1.0, unit="mV")))
    assert record.fs == 1000.0
    np.testing.assert_allclose(record.signal, raw * FACTOR_UV, rtol=1e-6)


@pytest.mark.parametrize("damage, error", [
    (lambda b: b[: len(b) // 2], MalformedECGError),  # truncated JSON
    (lambda b: b.replace(b'"status": "final"', b'"status": 7'), MalformedECGError),  # invalid FHIR
    (lambda b: b.replace(b'"resourceType": "Observation"', b'"resourceType": "Patient"', 1), UnsupportedFormatError),
    (lambda b: b.replace(b'"period": 2.0', b'"period": 0'), BadWaveformError),
    (lambda b: b.replace(b'"code": "uV"', b'"code": "mmHg"'), BadWaveformError),
])
def test_broken_fhir_is_refused_with_a_typed_error(damage, error) -> None:
    with pytest.raises(error) as info:
        read_ecg(damage(_bytes(ecg_observation())), fmt="fhir")
    assert PATIENT_ID not in str(info.value)


def test_a_fhir_r5_observation_is_refused_as_the_wrong_version_naming_the_file(tmp_path: Path) -> None:
    document = ecg_observation()
    for component in document["component"]:
        sampled = component["valueSampledData"]
        sampled["interval"], sampled["intervalUnit"] = sampled.pop("period"), "ms"  # R5's SampledData
    path = tmp_path / "r5.json"
    path.write_bytes(_bytes(document))
    with pytest.raises(UnsupportedFormatError, match="R5") as info:
        read_ecg(path)
    assert str(path) in str(info.value) and PATIENT_ID not in str(info.value)


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_fhir_file_is_refused_naming_the_file(damage: str, tmp_path: Path) -> None:
    data = _bytes(ecg_observation())
    path = tmp_path / "ecg.json"
    path.write_bytes(data[: len(data) // 2] if damage == "truncated" else data[:200] + bytes(range(256)))
    with pytest.raises(MalformedECGError, match="truncated or corrupt") as info:
        read_ecg(path)
    assert str(path) in str(info.value)
