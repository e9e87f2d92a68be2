"""FHIR R4 input: an ECG ``Observation`` whose components carry the leads as ``SampledData``.

This is the shape national ECG profiles use (e.g. the German base profile's EKG observation:
LOINC ``11524-6`` "EKG study", one component per lead coded with its MDC code, the samples in
``valueSampledData``). The resource is validated with ``fhir.resources`` (R4B models, which
R4 resources of this shape satisfy) before anything is read from it; a ``Bundle`` is searched
for its first such Observation. Per lead: value = origin + factor × sample in the origin's
UCUM unit (``mV``, ``uV``, ``V``), rate = 1000 / ``period`` (milliseconds between samples);
``E``/``L``/``U`` samples (error, below / above the detection limit) become NaN, which the
intake refuses and ``lasan inspect`` reports as ``nan``. The subject reference's identifier
and display go into :class:`~lasan.record.PatientIdentity` only.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadWaveformError, MalformedECGError, MissingLeadsError, UnsupportedFormatError
from ..leads import STANDARD_LEADS, canonical_lead
from ..record import Acquisition, ECGRecord, PatientIdentity
from .bounded import read_bounded

__all__ = ["MAX_FHIR_BYTES", "sniff_fhir", "read_fhir"]

MAX_FHIR_BYTES = 32 * 1024 * 1024


def _check_size(size: int, what: str) -> None:
    if size > MAX_FHIR_BYTES:
        raise MalformedECGError(f"{what} is larger than {MAX_FHIR_BYTES // (1024 * 1024)} MB; it was not read")
_ANY_RESOURCE = re.compile(rb'"resourceType"\s*:\s*"(Observation|Bundle)"')
_UNITS_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "v": 1e3, "nv": 1e-6}
_OUT_OF_RANGE = {"E", "L", "U"}


def sniff_fhir(head: bytes) -> bool:
    """True when ``head`` starts a FHIR JSON Observation or Bundle (``resourceType`` near the start)."""
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return text.startswith(b"{") and _ANY_RESOURCE.search(text[:4096]) is not None


def read_fhir(source: str | os.PathLike[str] | bytes) -> ECGRecord:
    """Read a FHIR ECG Observation (path or JSON bytes) into an ECG record in mV.

    Raises:
        MalformedECGError: too large, not JSON, or not a valid FHIR resource.
        UnsupportedFormatError: another resource type, or no Observation with lead components.
        BadWaveformError: samples that are not numbers, leads at different rates or lengths, units that are not a voltage.
        MissingLeadsError: no component is one of the 12 standard leads.
    """
    if isinstance(source, bytes):
        data, what = source, "the FHIR data"
    else:
        path = Path(source)
        what = f"FHIR file {path}"
        data = read_bounded(path, what, lambda size: _check_size(size, what))
    _check_size(len(data), what)
    try:
        document = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MalformedECGError(f"{what} is truncated or corrupt: not valid JSON ({exc}); ask the sender to resend it") from exc
    if not isinstance(document, dict):
        raise MalformedECGError(f"{what} is JSON but not a FHIR resource")
    _refuse_r5(document, what)
    observation = _observation(document, what)
    return _to_record(observation, what)


def _refuse_r5(document: dict[str, Any], what: str) -> None:
    """FHIR R5 renamed SampledData.period to interval + intervalUnit: say which version it is."""
    entry = document.get("entry")
    entries: list[Any] = entry if isinstance(entry, list) else []
    resources: list[Any] = [document, *(e.get("resource") for e in entries if isinstance(e, dict))]
    for resource in resources:
        components = resource.get("component") if isinstance(resource, dict) else None
        for component in components if isinstance(components, list) else []:
            sampled = component.get("valueSampledData") if isinstance(component, dict) else None
            if isinstance(sampled, dict) and "interval" in sampled and "period" not in sampled:
                raise UnsupportedFormatError(
                    f"{what} is a FHIR R5 Observation (SampledData 'interval' instead of R4's 'period'); "
                    "LASAN reads FHIR R4 ECG Observations: ask the sender for R4"
                )


def _observation(document: dict[str, Any], what: str):
    from fhir.resources.R4B.bundle import Bundle
    from fhir.resources.R4B.observation import Observation
    from pydantic import ValidationError

    kind = document.get("resourceType")
    try:
        if kind == "Observation":
            return Observation.model_validate(document)
        if kind == "Bundle":
            bundle = Bundle.model_validate(document)
            for entry in bundle.entry or []:
                resource = entry.resource
                if isinstance(resource, Observation) and any(
                    c.valueSampledData is not None for c in (resource.component or [])
                ):
                    return resource
            raise UnsupportedFormatError(f"{what} is a FHIR Bundle without an ECG Observation (lead components)")
    except ValidationError as exc:
        errors = exc.errors()
        where = ".".join(str(p) for p in errors[0]["loc"]) if errors else ""
        message = errors[0]["msg"] if errors else str(exc)
        raise MalformedECGError(
            f"{what} is not a valid FHIR R4 {kind} ({exc.error_count()} problem(s), first at {where or 'the top'}: "
            f"{message}); fix the sender's FHIR export"
        ) from exc
    raise UnsupportedFormatError(
        f"{what} is a FHIR {kind or 'document without resourceType'}, not an ECG Observation; "
        "LASAN reads an Observation whose components carry the leads as SampledData"
    )


def _lead_of(component) -> str | None:
    for coding in component.code.coding or []:
        for label in (coding.code, coding.display):
            lead = canonical_lead(label) if label else None
            if lead:
                return lead
    return canonical_lead(component.code.text) if component.code.text else None


def _to_record(observation, what: str) -> ECGRecord:
    rows: list[np.ndarray] = []
    leads: list[str] = []
    rates: set[float] = set()
    notes: list[str] = []
    for index, component in enumerate(observation.component or []):
        sampled = component.valueSampledData
        if sampled is None:
            continue
        lead = _lead_of(component)
        if lead is None or lead in leads:
            notes.append(f"component {index + 1} is not a (new) standard lead; ignored")
            continue
        if sampled.dimensions != 1:
            raise BadWaveformError(f"{what}: lead {lead} has SampledData with {sampled.dimensions} dimensions; "
                                   "LASAN reads one lead per component")
        unit = str(sampled.origin.code or sampled.origin.unit or "").strip().lower()
        factor_mv = _UNITS_TO_MV.get(unit)
        if factor_mv is None:
            raise BadWaveformError(f"{what}: lead {lead} is in units {unit or '(none)'!r}; LASAN converts mV, uV and V")
        if not sampled.period or float(sampled.period) <= 0:
            raise BadWaveformError(f"{what}: lead {lead} has no sampling period")
        tokens = (sampled.data or "").split()
        try:
            values = np.array([np.nan if t in _OUT_OF_RANGE else float(t) for t in tokens], dtype=np.float64)
        except ValueError as exc:
            raise BadWaveformError(f"{what}: lead {lead} has a sample that is not a number ({exc})") from exc
        origin = float(sampled.origin.value or 0.0)
        factor = float(sampled.factor) if sampled.factor is not None else 1.0
        rows.append((origin + factor * values) * factor_mv)
        leads.append(lead)
        rates.add(1000.0 / float(sampled.period))
    if not leads:
        if not any(c.valueSampledData is not None for c in observation.component or []):
            raise UnsupportedFormatError(f"{what} is a FHIR Observation without SampledData lead components")
        raise MissingLeadsError(STANDARD_LEADS, [])
    if len(rates) != 1:
        raise BadWaveformError(f"{what}: leads at different sampling rates ({sorted(rates)} Hz)")
    if len({row.size for row in rows}) != 1:
        raise BadWaveformError(f"{what}: leads of unequal length ({sorted({row.size for row in rows})} samples)")
    subject = observation.subject
    identifier = subject.identifier.value if subject is not None and subject.identifier is not None else None
    patient = PatientIdentity(patient_id=identifier, name=subject.display if subject is not None else None)
    effective = observation.effectiveDateTime
    acquisition = Acquisition(
        source_format="fhir",
        device=observation.device.display if observation.device is not None else None,
        acquired_at=effective.isoformat() if hasattr(effective, "isoformat") else (str(effective) if effective else None),
        original_units="SampledData",
        notes=("FHIR R4 Observation (validated with fhir.resources)", *notes),
    )
    record = ECGRecord(np.stack(rows).astype(np.float32), rates.pop(), tuple(leads), acquisition, patient)
    return record.in_standard_order().with_derived_leads()
