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


def test_a_library_warning_is_logged_by_kind_and_origin_never_by_its_text(tmp_path, monkeypatch):
    import warnings

    from lasan.integration.logs import configure_logging

    monkeypatch.setattr(warnings, "showwarning", warnings.showwarning)  # restored after the test
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", list(root.handlers))
    monkeypatch.setattr(root, "level", root.level)
    log_file = tmp_path / "logs" / "listen.log"
    configure_logging("kv", "INFO", log_file)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn('The string "Quillfeather Zenobia" is unlikely to represent a person name', UserWarning,
                      stacklevel=1)
    for handler in logging.getLogger().handlers:
        handler.close()
    text = log_file.read_text()
    assert "event=python.warning" in text and "category=UserWarning" in text
    assert "test_structured_logs.py:" in text
    assert "Quillfeather" not in text
