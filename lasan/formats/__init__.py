"""Readers and writers for ECG formats: DICOM waveforms, HL7 v2 ORU (NA / ED), WFDB, and the
ECG-management-system exports (GE MUSE XML, Philips Sierra XML, HL7 aECG, SCP-ECG, Mortara
XML, EDF/EDF+: :mod:`.vendor`, read only).

:func:`read_ecg` is the one entry point: it recognises the format from the content
(DICOM ``DICM`` magic at byte 128, HL7 ``MSH`` at the start, possibly after an MLLP
start byte, the vendor formats' XML root or binary header) or, failing that, from the name (``.dcm``, ``.hl7``, ``.hea``, a WFDB
record base path). Every reader returns an :class:`~lasan.record.ECGRecord` in mV with
canonical lead names and the missing-but-derivable limb leads added and flagged.

Format modules are imported on first use: ``wfdb`` pulls in pandas, which
``lasan inspect`` on a DICOM file should not pay for.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import ECGFormatError, MalformedECGError, UnsupportedFormatError
from ..record import ECGRecord
from .fhir import sniff_fhir  # fhir.resources is imported when a file is read
from .vendor import VENDOR_FORMATS, sniff_vendor  # numpy only: ecgdatakit is imported when a file is read

__all__ = ["FORMATS", "FORMATS_HELP", "VENDOR_FORMATS", "detect_format", "read_ecg", "write_ecg"]

FORMATS = ("dicom", "hl7", "wfdb", *VENDOR_FORMATS, "fhir")
# For --help of the commands that read ECG files (lasan inspect, lasan score).
FORMATS_HELP = (
    "DICOM ECG waveform, HL7 v2 ORU (NA or ED), WFDB (.hea), GE MUSE XML, Philips Sierra XML "
    "(1.03/1.04/1.04.01), HL7 aECG, SCP-ECG, Mortara/Welch Allyn ELI XML, EDF/EDF+ (12-lead), "
    "FHIR R4 ECG Observation (JSON, SampledData leads)"
)
_HEAD_BYTES = 4096  # XML roots can follow a prolog and comments, and UTF-16 doubles them


def detect_format(source: str | os.PathLike[str] | bytes, *, suffix: str = "") -> str:
    """``"dicom"``, ``"hl7"``, ``"wfdb"`` or a vendor format (:data:`VENDOR_FORMATS`) for a path or bytes.

    ``suffix`` (``.hl7``, ``.dcm``) names the file or channel the bytes came from; like a
    path's suffix, it decides only when the content does not (so that a broken HL7 message
    is explained by the HL7 reader, not refused as an unknown format).

    Raises:
        ECGFormatError: the path does not exist.
        MalformedECGError: the file is empty.
        UnsupportedFormatError: the content is none of the formats LASAN reads.
    """
    if isinstance(source, bytes):
        return _detect_bytes(source, name="the ECG data", suffix=suffix.lower())
    path = Path(source)
    if path.suffix.lower() in (".hea", ".dat") or (not path.exists() and path.with_suffix(".hea").exists()):
        return "wfdb"
    if not path.exists():
        raise ECGFormatError(f"{path}: no such file")
    if path.is_dir():
        raise UnsupportedFormatError(f"{path} is a directory; give ECG files (or WFDB .hea headers)")
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    return _detect_bytes(head, name=str(path), suffix=path.suffix.lower())


def _detect_bytes(head: bytes, *, name: str, suffix: str) -> str:
    if not head:
        raise MalformedECGError(f"{name} is empty (0 bytes); the transfer may have failed")
    if head[128:132] == b"DICM":
        return "dicom"
    text = head.lstrip(b"\x0b\xef\xbb\xbf\xff\xfe \t\r\n").replace(b"\0", b"")
    if text.startswith(b"MSH"):
        return "hl7"
    vendor = sniff_vendor(head)
    if vendor is not None:
        return vendor
    if sniff_fhir(head):
        return "fhir"
    if suffix in (".dcm", ".dicom"):
        return "dicom"  # the DICOM reader explains what is wrong with it
    if suffix in (".hl7", ".oru", ".msg"):
        return "hl7"
    if suffix in (".scp", ".edf"):
        return {".scp": "scp-ecg", ".edf": "edf"}[suffix]  # the reader explains what is wrong with it
    raise UnsupportedFormatError(
        f"{name} is not an ECG format LASAN reads: no DICOM 'DICM' marker, no HL7 'MSH' header, "
        "not a WFDB .hea record, not a GE MUSE / Philips Sierra / HL7 aECG / Mortara XML, SCP-ECG, EDF or FHIR file "
        "(LASAN reads DICOM ECG waveforms, HL7 v2 ORU, WFDB and those ECG-system exports)"
    )


def read_ecg(source: str | os.PathLike[str] | bytes, *, fmt: str | None = None) -> ECGRecord:
    """Read an ECG file (or a file's bytes) of any supported format.

    Args:
        source: a path (for WFDB, the ``.hea`` or record base path) or the bytes of a
            DICOM file or HL7 message.
        fmt: one of :data:`FORMATS` to skip detection.

    Raises:
        ECGFormatError: or one of its subclasses (UnsupportedFormatError,
            MalformedECGError, BadWaveformError, MissingLeadsError, HL7*Error) saying
            what is wrong with the input.
    """
    fmt = fmt or detect_format(source)
    if fmt == "dicom":
        from .dicom import read_dicom

        return read_dicom(source)
    if fmt == "hl7":
        from lasan.hl7.oru import read_hl7

        return read_hl7(source)
    if fmt in VENDOR_FORMATS:
        from .vendor import read_vendor

        return read_vendor(source, fmt)
    if fmt == "fhir":
        from .fhir import read_fhir

        return read_fhir(source)
    if fmt == "wfdb":
        if isinstance(source, bytes):
            raise UnsupportedFormatError("a WFDB record is a header plus signal files: pass its path, not bytes")
        from .wfdb_io import read_wfdb

        return read_wfdb(source)
    raise UnsupportedFormatError(f"unknown ECG format {fmt!r}; LASAN reads {', '.join(FORMATS)}")


def write_ecg(record: ECGRecord, path: str | os.PathLike[str], fmt: str | None = None, **options) -> Path:
    """Write ``record`` to ``path`` and return the written path.

    Args:
        fmt: ``"dicom"``, ``"hl7-na"``, ``"hl7-ed"`` (``"hl7"`` = NA) or ``"wfdb"``;
            None picks by suffix (``.dcm``, ``.hl7``, ``.hea`` / none = WFDB).
        options: passed to the writer (e.g. ``control_id`` for HL7).

    Raises:
        UnsupportedFormatError: unknown format. Writers raise BadWaveformError for NaN.
    """
    path = Path(path)
    if fmt is None:
        fmt = {".dcm": "dicom", ".hl7": "hl7-na", ".hea": "wfdb", "": "wfdb"}.get(path.suffix.lower(), "")
    if fmt == "dicom":
        from .dicom import write_dicom

        return write_dicom(record, path, **options)
    if fmt in ("hl7", "hl7-na", "hl7-ed"):
        from lasan.hl7.oru import build_oru

        options.setdefault("control_id", path.stem[:20] or "1")
        path.write_bytes(build_oru(record, style="ed" if fmt == "hl7-ed" else "na", **options))
        return path
    if fmt == "wfdb":
        from .wfdb_io import write_wfdb

        return write_wfdb(record, path, **options)
    raise UnsupportedFormatError(
        f"cannot write ECG format {fmt!r} to {path}; use dicom, hl7-na, hl7-ed or wfdb (or a .dcm/.hl7/.hea name)"
    )
