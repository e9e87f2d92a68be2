"""FHIR R4 results: a scored ECG becomes a validated Bundle (DiagnosticReport + Observations),
written to the outbox and POSTed to a real local HTTP server (a stand-in FHIR server on loopback)."""

from __future__ import annotations

import http.server
import json
import threading
from datetime import datetime, timezone

import pytest

from lasan.client.score import Score
from lasan.errors import IntegrationError
from lasan.formats.sample import sample_ecg
from lasan.integration.fhir import LASAN_CODES, post_bundle, report_bundle, write_bundle
from lasan.leads import MODEL_LEADS


def _score() -> Score:
    importance = dict(zip(MODEL_LEADS, (0.3, 0.1, 0.2, 0.1, 0.1, 0.1, 0.05, 0.05), strict=True))
    return Score(
        probabilities={"control": 0.2, "ARVC": 0.7, "LQTS": 0.1}, predicted_class="ARVC",
        screening={"ARVC": True, "LQTS": False}, confirmation={"ARVC": False, "LQTS": False},
        thresholds={"screening": {"ARVC": 0.3, "LQTS": 0.4}, "confirmation": {"ARVC": 0.8, "LQTS": 0.9}},
        lead_importance=importance, model_name="lasan_ensemble", model_version="1-abc", round_trip_ms=3.0,
    )


def _resources(bundle, kind):
    return [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == kind]


def test_bundle_carries_probabilities_decision_and_lead_importance_and_validates():
    from fhir.resources.R4B.bundle import Bundle

    record = sample_ecg()
    bundle = report_bundle(_score(), record, issued=datetime(2026, 1, 2, tzinfo=timezone.utc))
    Bundle.model_validate(bundle)  # what a FHIR server's validator would check first
    (report,) = _resources(bundle, "DiagnosticReport")
    observations = _resources(bundle, "Observation")
    assert report["code"]["coding"][0]["code"] == "11524-6"
    assert len(report["result"]) == len(observations) == 3 + 2
    by_code = {o["code"]["coding"][0]["code"]: o for o in observations}
    assert by_code["probability-ARVC"]["valueQuantity"]["value"] == pytest.approx(0.7, abs=1e-6)
    decision = {c["code"]["coding"][0]["code"]: c["valueBoolean"] for c in by_code["decision"]["component"]}
    assert decision == {"ARVC": True, "LQTS": False}
    weights = {c["code"]["text"]: c["valueQuantity"]["value"] for c in by_code["lead-importance"]["component"]}
    assert weights == pytest.approx(_score().lead_importance, abs=1e-6)
    assert all(o["code"]["coding"][0]["system"] == LASAN_CODES for o in observations)
    assert "1-abc" in report["conclusion"] and observations[0]["method"]["text"].endswith("1-abc")
    assert report["subject"]["identifier"]["value"] == record.patient.patient_id


def test_bundle_is_written_to_the_outbox_and_posted_to_a_fhir_server(tmp_path):
    received: list[tuple[str, str, dict]] = []
    status = {"code": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], json.loads(body)))
            self.send_response(status["code"])
            self.send_header("Content-Type", "application/fhir+json")
            self.end_headers()
            self.wfile.write(b'{"resourceType": "Bundle", "type": "transaction-response"}')

        def log_message(self, *args):  # keep test output clean
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}/fhir"
        bundle = report_bundle(_score(), sample_ecg(seed=2))
        path = write_bundle(bundle, tmp_path / "outbox", "R1")
        assert json.loads(path.read_text()) == bundle
        assert post_bundle(base, bundle) == 200
        (where, content_type, body), = received
        assert where == "/fhir" and content_type == "application/fhir+json" and body == bundle
        status["code"] = 500
        with pytest.raises(IntegrationError, match="HTTP 500"):
            post_bundle(base, bundle)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(IntegrationError, match="unreachable"):
        post_bundle(base, bundle, timeout_s=2)



def test_bundle_with_a_result_identifier_is_idempotent_to_post_again():
    from fhir.resources.R4B.bundle import Bundle

    from lasan.integration.fhir import RESULT_IDS

    record = sample_ecg(seed=3)
    first = report_bundle(_score(), record, identifier="LSN0123456789ABCDEF")
    again = report_bundle(_score(), record, identifier="LSN0123456789ABCDEF")
    other = report_bundle(_score(), record, identifier="LSNFEDCBA9876543210")
    Bundle.model_validate(first)
    urls = [e["fullUrl"] for e in first["entry"]]
    assert urls == [e["fullUrl"] for e in again["entry"]]  # stable: a re-built bundle links the same way
    assert not set(urls) & {e["fullUrl"] for e in other["entry"]}
    for entry in first["entry"]:
        (ident,) = entry["resource"]["identifier"]
        assert ident["system"] == RESULT_IDS and ident["value"].startswith("LSN0123456789ABCDEF")
        # A conditional create: a server that already holds this identifier creates nothing new.
        assert entry["request"]["ifNoneExist"] == f"identifier={RESULT_IDS}|{ident['value']}"
    values = [e["resource"]["identifier"][0]["value"] for e in first["entry"]]
    assert len(set(values)) == len(values)
    report = first["entry"][0]["resource"]
    assert report["resourceType"] == "DiagnosticReport" and report["identifier"][0]["value"] == "LSN0123456789ABCDEF"
    assert {r["reference"] for r in report["result"]} == set(urls[1:])
