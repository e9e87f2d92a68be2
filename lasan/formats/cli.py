"""``lasan inspect FILE... [--json]``: what is in an ECG file, and is it usable?

For every file: format, manufacturer/device, sampling rate, duration, leads (canonical,
in order), units, quality findings against the model input, and the verdict the intake
would give it (accepted, or refused with the same reason as the HL7 listener, the DICOM
receiver and the watch folder: :mod:`lasan.validation`). An unreadable file
gets one line saying why (never a traceback); the others are still reported, and the
exit status is 1 when any file could not be read. Patient identifiers are never printed.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..errors import LasanError
from ..record import ECGRecord
from . import FORMATS_HELP

__all__ = ["configure", "run", "describe", "inspect_file"]


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="ECG files: " + FORMATS_HELP)
    parser.add_argument("--json", action="store_true", help="one JSON object per file, one per line")


def describe(record: ECGRecord, path: str) -> dict[str, Any]:
    """The inspection summary of a record: no patient identifiers, JSON-serialisable."""
    from ..quality import check_quality

    acq = record.acquisition
    return {
        "path": path,
        "format": acq.source_format,
        "manufacturer": acq.manufacturer,
        "device": acq.device,
        "sop_class": acq.sop_class,
        "fs": record.fs,
        "duration_s": round(record.duration_s, 3),
        "n_samples": record.n_samples,
        "leads": list(record.leads),
        "derived_leads": list(record.derived_leads),
        "units": "mV",  # every reader converts to mV
        "source_units": acq.original_units,
        "quality": [finding.to_dict() for finding in check_quality(record)],
        "notes": list(acq.notes),
    }


def inspect_file(path: str) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """``(summary, error, refusal)`` for one file: the summary when it reads (else the error), and
    the reason the intake would refuse it (None when every entry point would accept it).

    The steps are :class:`lasan.validation.Reading`'s, in the intake's order, so the refusal is
    the one the MLLP listener, the DICOM receiver and the watch folder give for the same bytes.
    """
    from ..validation import Reading, validate_record

    refusal: str | None = None
    try:
        reading = Reading.start(path)
        try:
            reading.check()
        except LasanError as exc:
            refusal = _one_line(str(exc))
        parsed = reading.read()
    except LasanError as exc:
        reason = _one_line(str(exc))
        return None, reason, refusal or reason
    except OSError as exc:
        reason = f"cannot read the file: {exc.strerror or exc}"
        return None, reason, refusal or reason
    except Exception as exc:  # a reader bug must not hide the other files' reports
        reason = f"internal error while reading ({type(exc).__name__}: {_one_line(str(exc))}); please report it"
        return None, reason, refusal or reason
    if refusal is None:
        try:
            validate_record(parsed.record)
        except LasanError as exc:
            refusal = _one_line(str(exc))
    summary = describe(parsed.record, path)
    summary["verdict"], summary["reason"] = ("refused", refusal) if refusal else ("accepted", None)
    return summary, None, refusal


def run(args: argparse.Namespace) -> int:
    status = 0
    for path in args.files:
        summary, reason, refusal = inspect_file(path)
        if summary is not None:
            print(json.dumps(summary) if args.json else _text(summary), flush=True)
            continue
        assert reason is not None
        status = 1
        where = "" if path in reason else f"{path}: "
        print(f"lasan inspect: {where}{reason}", file=sys.stderr, flush=True)
        if args.json:
            print(json.dumps({"path": path, "error": reason, "verdict": "refused", "reason": refusal}), flush=True)
    return status


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _text(summary: dict[str, Any]) -> str:
    device = " ".join(x for x in (summary["manufacturer"], summary["device"]) if x) or "unknown"
    derived = f" (derived: {', '.join(summary['derived_leads'])})" if summary["derived_leads"] else ""
    lines = [
        f"{summary['path']}",
        f"  format     {summary['format']}" + (f" ({summary['sop_class']})" if summary["sop_class"] else ""),
        f"  device     {device}",
        f"  rate       {summary['fs']:g} Hz, {summary['duration_s']:g} s, {summary['n_samples']} samples",
        f"  leads      {' '.join(summary['leads'])}{derived}",
        f"  units      mV (source: {summary['source_units']})",
    ]
    if summary["quality"]:
        lines += [f"  {q['severity']:<9}  {q['code']}: {q['message']}" for q in summary["quality"]]
    else:
        lines.append("  quality    no findings")
    lines += [f"  note       {note}" for note in summary["notes"]]
    verdict = summary.get("verdict", "accepted")
    lines.append(f"  verdict    {verdict}" + (f": {summary['reason']}" if summary.get("reason") else ""))
    return "\n".join(lines)
