"""ECG-system exports (and FHIR Observations) through the entry points: the watch folder (the one intake every entry point
uses) stores one file of each vendor format and rejects a corrupt one of each with its reason, and
``lasan inspect`` gives the same verdict and reason for the same files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from test_formats_vendor import BUILDERS, PATIENT_ID, PHILIPS, SUFFIX, _corrupt
from test_formats_vendor_fhir import ecg_observation

from lasan.formats import VENDOR_FORMATS, read_ecg
from lasan.formats.cli import inspect_file
from lasan.integration.config import WatchConfig
from lasan.integration.intake import Intake, read_stored
from lasan.integration.metrics import Health, Metrics
from lasan.integration.queue import DurableQueue
from lasan.integration.watch import WatchFolder


def _files() -> dict[str, bytes]:
    files = {fmt: build() for fmt, build in BUILDERS.items()}
    if PHILIPS.exists():
        files["philips-sierra"] = PHILIPS.read_bytes()
    files["fhir"] = json.dumps(ecg_observation()).encode()
    return files


def test_watch_folder_takes_one_file_of_each_format_and_rejects_a_corrupt_one_with_its_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "watch"
    folder.mkdir()
    queue = DurableQueue(tmp_path / "q.sqlite")
    watch = WatchFolder(WatchConfig(enabled=True, folder=folder, stable_s=0), Intake(queue, Metrics(), Health()))
    files = _files()
    for fmt, data in files.items():
        (folder / f"good-{fmt}{SUFFIX[fmt]}").write_bytes(data)
        (folder / f"bad-{fmt}{SUFFIX[fmt]}").write_bytes(_corrupt(fmt, data))
    # What lasan inspect says, before the watch folder moves the files.
    inspected = {path.name: inspect_file(str(path)) for path in folder.iterdir()}

    with caplog.at_level(logging.DEBUG):
        assert watch.scan_once() == len(files)

    processed = sorted(p.name for p in (folder / "processed").iterdir())
    assert processed == sorted(f"good-{fmt}{SUFFIX[fmt]}" for fmt in files)
    items = {item.kind: item for item in queue.due()}
    assert set(items) == set(files)
    for fmt, item in items.items():
        name = f"good-{fmt}{SUFFIX[fmt]}"
        summary, error, refusal = inspected[name]
        assert error is None and refusal is None and summary is not None
        assert summary["verdict"] == "accepted" and summary["format"] == fmt
        # The worker re-reads a stored item (after a restart) to the same record.
        again = read_stored(item.raw, item.kind, item.key).record
        np.testing.assert_array_equal(again.signal, read_ecg(files[fmt]).signal)
        assert again.leads == tuple(summary["leads"])

    for fmt in files:
        name = f"bad-{fmt}{SUFFIX[fmt]}"
        reason = (folder / "rejected" / f"{name}.reason.txt").read_text().strip()
        summary, error, refusal = inspected[name]
        assert summary is None and refusal == reason, (fmt, reason, refusal)
        assert "truncated or corrupt" in reason and PATIENT_ID not in reason
    assert PATIENT_ID not in caplog.text and "Doe" not in caplog.text


def test_every_vendor_format_reaches_the_watch_folder() -> None:
    from lasan.integration.watch import WATCH_FORMATS

    assert {*VENDOR_FORMATS, "fhir"} <= set(WATCH_FORMATS)


def _ed_message(payload: bytes, subtype: str, control_id: str) -> bytes:
    """An ORU^R01 whose ED OBX carries an ECG-system export instead of DICOM (as MUSE interfaces send)."""
    import base64
    import re

    from lasan.formats.sample import sample_ecg
    from lasan.hl7.oru import build_oru

    message = build_oru(sample_ecg(), style="ed", control_id=control_id)
    data = base64.b64encode(payload).decode()
    out, n = re.subn(rb"\^application\^DICOM\^Base64\^[^|\r]*", f"^Application^{subtype}^Base64^{data}".encode(), message)
    assert n == 1
    return out


@pytest.mark.parametrize("fmt, subtype", [("ge-muse", "XML"), ("scp-ecg", "Octet-stream"), ("hl7-aecg", "XML")])
def test_hl7_ed_attachment_carrying_an_export_is_read_through_the_mllp_intake(fmt: str, subtype: str, tmp_path: Path) -> None:
    from lasan.errors import HL7MalformedError
    from lasan.integration.intake import Accepted, Refused, Source

    export = BUILDERS[fmt]()
    record = read_ecg(_ed_message(export, subtype, "ED1"))
    assert record.acquisition.source_format == "hl7-ed"
    np.testing.assert_array_equal(record.signal, read_ecg(export).signal)
    assert record.derived_leads == read_ecg(export).derived_leads

    intake = Intake(DurableQueue(tmp_path / "q.sqlite"), Metrics(), Health())
    mllp = Source("hl7", formats=("hl7",), suffix=".hl7")
    accepted = intake.accept(_ed_message(export, subtype, "ED2"), mllp)
    assert isinstance(accepted, Accepted) and accepted.parsed is not None
    assert accepted.parsed.record.leads == record.leads
    refused = intake.accept(_ed_message(_corrupt(fmt, export), subtype, "ED3"), mllp)
    assert isinstance(refused, Refused) and isinstance(refused.error, HL7MalformedError)
    assert refused.answer.hl7_ack == "AE" and "truncated or corrupt" in refused.reason


def test_hl7_ed_pdf_next_to_nothing_else_is_still_refused() -> None:
    from lasan.errors import HL7UnsupportedError

    with pytest.raises(HL7UnsupportedError, match="ECG-system export"):
        read_ecg(_ed_message(b"%PDF-1.4 report", "PDF", "ED4"))
