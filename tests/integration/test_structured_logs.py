"""Structured log lines: key=value with quoting, or JSON; exceptions reduced to type and message."""

from __future__ import annotations

import json
import logging

from lasan.integration.logs import StructuredFormatter
from lasan.record import PatientIdentity


def _record(fields, exc=None):
    rec = logging.LogRecord("lasan.integration.test", logging.WARNING, __file__, 1, "hl7.ack", None, exc)
    rec.fields = fields
    return rec


def test_kv_quotes_values_with_spaces_and_equals():
    line = StructuredFormatter("kv").format(_record({"control_id": "C 1", "reason": 'a="b"', "code": "AE"}))
    assert "event=hl7.ack" in line and "code=AE" in line
    assert 'control_id="C 1"' in line and 'reason="a=\\"b\\""' in line


def test_json_lines_and_exceptions():
    try:
        raise ValueError("bad sample")
    except ValueError:
        import sys

        exc_info = sys.exc_info()
    doc = json.loads(StructuredFormatter("json").format(_record({"item": 3}, exc_info)))
    assert doc["item"] == 3 and doc["exc_type"] == "ValueError" and doc["exc"] == "bad sample"
    assert "Traceback" not in json.dumps(doc)


def test_a_patient_identity_that_slips_into_a_field_stays_redacted():
    who = PatientIdentity(patient_id="MRN7730419", name="Quillfeather^Zenobia", birth_date="19431207")
    line = StructuredFormatter("kv").format(_record({"patient": who}))
    assert "MRN7730419" not in line and "Quillfeather" not in line and "19431207" not in line
