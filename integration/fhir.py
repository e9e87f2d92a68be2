"""FHIR R4 results: a scored ECG as a ``DiagnosticReport`` with its ``Observation``s, in a Bundle.

Built as plain JSON and validated with ``fhir.resources`` (R4B models, which these R4 resources
satisfy) before it leaves: a resource the library refuses is our bug, never sent. The Bundle is
written to the outbox (``<id>.fhir.json``) and, when a FHIR base URL is configured, POSTed to it
as a ``transaction`` (FHIR RESTful API: a Bundle POSTed to the base).

Codes (also in docs/formats.md, "FHIR"):

* DiagnosticReport.code: LOINC ``11524-6`` "EKG study"; category ``CG`` (cardiodiagnostics, v2-0074).
* Observation per class probability: local code ``probability-<class>`` in
  :data:`LASAN_CODES`, ``valueQuantity`` in UCUM ``1`` (a fraction 0-1).
* Observation ``decision``: one component per disease class (local code ``<class>``) whose
  ``valueBoolean`` is the decision at the configured operating point (``screening`` or
  ``confirmation``), its threshold as the component's ``referenceRange.text``.
* Observation ``lead-importance``: one component per model lead, coded with its MDC code
  (``urn:oid:2.16.840.1.113883.6.24``), ``valueQuantity`` UCUM ``1``.
* The model name and version are the Observations' ``method.text`` and the report's
  ``conclusion`` names them; the subject is the patient identifier the ECG carried.
* With an ``identifier`` (the worker passes the result MSH-10), every resource carries
  ``identifier`` ``urn:lasan:result|<id>`` (Observations ``<id>-<code>``), its entry a
  conditional create (``ifNoneExist``) and a ``fullUrl`` derived from it: a Bundle POSTed
  again after a lost answer creates nothing new on the server.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lasan.errors import DeliveryError, IntegrationError
from lasan.leads import MDC_CODES
from lasan.record import ECGRecord

__all__ = ["LASAN_CODES", "MDC_SYSTEM", "RESULT_IDS", "report_bundle", "write_bundle", "post_bundle"]

LASAN_CODES = "urn:lasan:fhir:codes"  # local code system; documented in docs/integration.md
RESULT_IDS = "urn:lasan:result"  # identifier system of our resources (value: the result MSH-10)
MDC_SYSTEM = "urn:oid:2.16.840.1.113883.6.24"
_LOINC = "http://loinc.org"
_UCUM = "http://unitsofmeasure.org"


def _fraction(value: float) -> dict[str, Any]:
    return {"value": round(float(value), 6), "unit": "1", "system": _UCUM, "code": "1"}


def _local(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": LASAN_CODES, "code": code, "display": display}], "text": display}


def report_bundle(
    score: Any,
    record: ECGRecord,
    *,
    operating_point: str = "screening",
    issued: datetime | None = None,
    bundle_type: str = "transaction",
    identifier: str | None = None,
) -> dict[str, Any]:
    """A validated FHIR R4 Bundle (DiagnosticReport + Observations) for one scored ECG.

    Args:
        score: a :class:`lasan.client.score.Score`.
        record: the ECG that was scored (subject identifier and acquisition time).
        operating_point: which decision the ``decision`` Observation reports.
        identifier: a stable ID of this result (the result MSH-10): resources get identifiers,
            conditional creates and stable fullUrls from it (see the module docstring).

    Raises:
        IntegrationError: the resources do not validate (a bug: nothing is sent).
    """
    issued_at = (issued or datetime.now(timezone.utc)).isoformat()
    method = {"text": f"LASAN {score.model_name} {score.model_version}"}
    subject: dict[str, Any] = {"display": "patient of the ECG"}
    if record.patient.patient_id:
        subject = {"identifier": {"value": record.patient.patient_id}}
    acquired = _fhir_datetime(record.acquisition.acquired_at)
    effective = {"effectiveDateTime": acquired} if acquired else {}
    common = {"status": "final", "subject": subject, "issued": issued_at, "method": method, **effective}
    observations: list[dict[str, Any]] = []
    for cls, p in score.probabilities.items():
        observations.append({"resourceType": "Observation", **common,
                             "code": _local(f"probability-{cls}", f"LASAN probability of {cls}"),
                             "valueQuantity": _fraction(p)})
    decisions = getattr(score, operating_point)
    cut = score.thresholds.get(operating_point, {})
    observations.append({
        "resourceType": "Observation", **common,
        "code": _local("decision", f"LASAN decision at the {operating_point} operating point"),
        "component": [{"code": _local(cls, cls), "valueBoolean": bool(positive),
                       **({"referenceRange": [{"text": f"positive when p >= {cut[cls]:.4f}"}]} if cls in cut else {})}
                      for cls, positive in decisions.items()],
    })
    observations.append({
        "resourceType": "Observation", **common,
        "code": _local("lead-importance", "LASAN lead importance (occlusion)"),
        "component": [{"code": {"coding": [{"system": MDC_SYSTEM, "code": str(MDC_CODES[lead][0]),
                                            "display": MDC_CODES[lead][1]}], "text": lead},
                       "valueQuantity": _fraction(weight)} for lead, weight in score.lead_importance.items()],
    })
    entries = [_entry(obs, identifier, obs["code"]["coding"][0]["code"]) for obs in observations]
    positives = [cls for cls, positive in decisions.items() if positive]
    report = {
        "resourceType": "DiagnosticReport", "status": "final", "subject": subject, "issued": issued_at, **effective,
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0074", "code": "CG"}]}],
        "code": {"coding": [{"system": _LOINC, "code": "11524-6", "display": "EKG study"}]},
        "result": [{"reference": entry["fullUrl"]} for entry in entries],
        "conclusion": (f"LASAN {score.model_name} {score.model_version}: predicted {score.predicted_class}; "
                       f"{operating_point} positive for {', '.join(positives) or 'none'}. Decision support only."),
    }
    entries.insert(0, _entry(report, identifier, None))
    if bundle_type != "transaction":
        for entry in entries:
            entry.pop("request")
    bundle = {"resourceType": "Bundle", "type": bundle_type, "timestamp": issued_at, "entry": entries}
    _validate(bundle)
    return bundle


def _entry(resource: dict[str, Any], identifier: str | None, code: str | None) -> dict[str, Any]:
    """A transaction entry; with an identifier, a conditional create with a stable fullUrl."""
    kind = resource["resourceType"]
    request: dict[str, Any] = {"method": "POST", "url": kind}
    if identifier is None:
        return {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": resource, "request": request}
    value = identifier if code is None else f"{identifier}-{code}"
    resource["identifier"] = [{"system": RESULT_IDS, "value": value}]
    request["ifNoneExist"] = f"identifier={RESULT_IDS}|{value}"
    return {"fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{RESULT_IDS}:{kind}:{value}')}",
            "resource": resource, "request": request}


def _fhir_datetime(text: str | None) -> str | None:
    """An ISO time as a FHIR dateTime: FHIR needs a zone with a time, so a local time keeps its date."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    if "T" not in text or value.tzinfo is not None:
        return text
    return value.date().isoformat()


def _validate(bundle: Mapping[str, Any]) -> None:
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    try:
        Bundle.model_validate(bundle)
    except ValidationError as exc:
        raise IntegrationError(f"the FHIR result does not validate as R4 ({exc.error_count()} problem(s): "
                               f"{exc.errors()[0].get('msg')}); this is a LASAN bug, please report it") from exc


def write_bundle(bundle: Mapping[str, Any], outbox: Path, name: str) -> Path:
    """Write ``bundle`` atomically to ``outbox/<name>.fhir.json``."""
    from lasan.integration.private import private_dir, write_private

    target = private_dir(outbox, owned=True) / f"{name}.fhir.json"
    return write_private(target, json.dumps(bundle, indent=1).encode("utf-8"), fsync=False)


def post_bundle(base_url: str, bundle: Mapping[str, Any], *, timeout_s: float = 30.0) -> int:
    """POST a transaction Bundle to a FHIR server's base URL; the HTTP status on success.

    Raises:
        DeliveryError: the server is unreachable or answered with an error (retry later).
    """
    request = urllib.request.Request(
        base_url.rstrip("/"), data=json.dumps(bundle).encode(), method="POST",
        headers={"Content-Type": "application/fhir+json", "Accept": "application/fhir+json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310 - configured URL
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise DeliveryError(f"the FHIR server at {base_url} refused the result (HTTP {exc.code}); "
                               "it stays queued and is retried") from exc
    except (urllib.error.URLError, OSError) as exc:
        raise DeliveryError(f"the FHIR server at {base_url} is unreachable ({exc}); "
                               "the result stays queued and is retried") from exc
