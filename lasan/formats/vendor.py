"""ECG-management-system exports: GE MUSE XML, Philips Sierra XML, HL7 aECG, SCP-ECG,
Mortara ELI XML and EDF/EDF+, read with ``ecgdatakit`` (STYLE rule 16).

The library does the format work (XLI decompression, SCP-ECG Huffman and section
parsing, aECG's ``SLIST_PQ`` scaling, EDF digital-to-physical mapping); this module
decides which format a file is (from its content, :func:`sniff_vendor`), refuses what
must not reach a parser (too large, XML entity declarations), and turns the library's
record into ours: float32 mV, canonical lead names through :func:`lasan.leads.canonical_lead`,
the rhythm waveform (the library keeps median beats apart; they are never used), missing
limb leads derived and flagged (GE MUSE stores 8 leads), patient identifiers in
:class:`~lasan.record.PatientIdentity` only. Every library exception is caught here and
raised as a :mod:`lasan.errors` type that names the file and the problem.
"""

from __future__ import annotations

import os
import re
import struct
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import BadWaveformError, MalformedECGError, MissingLeadsError, UnsupportedFormatError
from ..leads import STANDARD_LEADS, canonical_lead
from ..record import Acquisition, ECGRecord, PatientIdentity
from .bounded import read_bounded

__all__ = ["VENDOR_FORMATS", "FORMAT_NAMES", "MAX_VENDOR_BYTES", "MAX_EDF_SECONDS", "sniff_vendor", "read_vendor"]

# Our format name -> (what a person calls it, the ecgdatakit parser that reads it).
_PARSERS: dict[str, tuple[str, str, str]] = {
    "ge-muse": ("GE MUSE XML", "ge_muse_xml", "GEMuseXMLParser"),
    "philips-sierra": ("Philips Sierra XML", "sierra_xml", "SierraXMLParser"),
    "hl7-aecg": ("HL7 aECG", "hl7_aecg", "HL7aECGParser"),
    "scp-ecg": ("SCP-ECG", "scp_ecg", "SCPECGParser"),
    "mortara": ("Mortara/Welch Allyn ELI XML", "mortara_el250", "MortaraEL250Parser"),
    "edf": ("EDF/EDF+", "edf", "EDFParser"),
}
VENDOR_FORMATS: tuple[str, ...] = tuple(_PARSERS)
# The format is the vendor's own: its maker is the manufacturer when the file does not say.
_FORMAT_VENDOR = {"ge-muse": "GE Healthcare", "philips-sierra": "Philips", "mortara": "Mortara (Welch Allyn)"}
FORMAT_NAMES: dict[str, str] = {fmt: name for fmt, (name, _, _) in _PARSERS.items()}
# A 12-lead 10 s resting ECG is 0.05-2 MB in any of these formats; 32 MB leaves room for
# long rhythm strips and refuses Holter files and XML bombs before a parser sees them.
MAX_VENDOR_BYTES = 32 * 1024 * 1024
# EDF also carries sleep studies and Holter recordings: only resting-length ECGs are read.
MAX_EDF_SECONDS = 600.0
# SCP-ECG protocol versions published (1.0 ... 1.3, 2.0, 2.2, 3.0); ecgdatakit reads any.
_SCP_VERSIONS = (1.0, 3.0)

# Root element local name -> format. Sniffed on the first few KB, before any parsing.
_XML_ROOTS = {"restingecgdata": "philips-sierra", "RestingECG": "ge-muse", "AnnotatedECG": "hl7-aecg", "ECG": "mortara"}
_ROOT_TAG = re.compile(r"<(?![?!])(?:[A-Za-z_][\w.-]*:)?([A-Za-z_][\w.-]*)")
_ROOT_START = re.compile(r"<(?![?!])(?:([A-Za-z_][\w.-]*):)?[A-Za-z_][\w.-]*([^>]*)>")
# HL7 aECG release 1 (PORT_MT020001) lives in the HL7 v3 namespace; an AnnotatedECG root in
# another namespace is a draft or another schema, which the reader would misread silently.
_AECG_NAMESPACE = "urn:hl7-org:v3"
# MUSE exports the 10 s rhythm strip as WaveformType "Rhythm"; some sites export median beats only.
_MUSE_RHYTHM = re.compile(r"<WaveformType>\s*Rhythm\s*</WaveformType>", re.IGNORECASE)
_ENTITY_DECL = re.compile(r"<!(?:DOCTYPE|ENTITY)", re.IGNORECASE)


def _xml_text(head: bytes) -> str | None:
    """The start of an XML document as text (UTF-8, or UTF-16 with or without BOM), else None."""
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        text = head[: len(head) - len(head) % 2].decode("utf-16", errors="ignore")
    elif head.startswith(b"<\0"):
        text = head[: len(head) - len(head) % 2].decode("utf-16-le", errors="ignore")
    elif head.startswith(b"\0<"):
        text = head[: len(head) - len(head) % 2].decode("utf-16-be", errors="ignore")
    else:
        text = head.decode("utf-8", errors="ignore")
    text = text.lstrip("\ufeff \t\r\n")
    return text if text.startswith("<") else None


def sniff_vendor(head: bytes) -> str | None:
    """The vendor format of a file from its first bytes (4 KB suffice), or None.

    Content only, never the name: an ``.xml`` file may be any of four formats.
    """
    head = head[:4096]  # callers may pass a whole file's bytes
    if len(head) >= 256 and head[:8] == b"0       " and head[252:256].strip().isdigit():
        return "edf"  # EDF/EDF+ version field "0" padded to 8 bytes, then a numeric signal count
    if len(head) >= 32:
        # SCP-ECG (EN 1064): CRC, record size, then Section 0's header (id 0) whose first
        # pointer describes Section 0 itself (id 0, starting at byte 7).
        sec0_id, sec0_len = struct.unpack_from("<HI", head, 8)
        if sec0_id == 0 and sec0_len >= 26 and struct.unpack_from("<H", head, 22)[0] == 0 \
                and struct.unpack_from("<I", head, 28)[0] == 7:
            return "scp-ecg"
    text = _xml_text(head)
    if text is None:
        return None
    match = _ROOT_TAG.search(_strip_prolog(text))
    return _XML_ROOTS.get(match.group(1)) if match else None


def _strip_prolog(text: str) -> str:
    # Comments may precede the root; <?...?> and <!...> are skipped by the tag pattern.
    return re.sub(r"<!--.*?-->", "", text, flags=re.DOTALL)


def read_vendor(source: str | os.PathLike[str] | bytes, fmt: str | None = None) -> ECGRecord:
    """Read a vendor ECG export (path or bytes) into an ECG record in mV.

    Args:
        fmt: one of :data:`VENDOR_FORMATS`; sniffed from the content when None.

    Raises:
        UnsupportedFormatError: not one of these formats, a version the reader does not
            know, or an EDF file that is not a resting ECG (too long).
        MalformedECGError: too large, XML entity declarations, truncated or corrupt.
        BadWaveformError: leads at different rates or lengths, amplitudes without units.
        MissingLeadsError: no channel is one of the 12 standard leads.
    """
    if isinstance(source, bytes):
        data, what = source, "the ECG data"
    else:
        path = Path(source)
        what = f"ECG file {path}"
        data = read_bounded(path, what, lambda size: _check_size(size, what))
    _check_size(len(data), what)
    sniffed = sniff_vendor(data[:4096])
    fmt = fmt or sniffed
    if fmt not in _PARSERS:
        raise UnsupportedFormatError(f"{what} is not a vendor ECG export LASAN reads ({', '.join(FORMAT_NAMES.values())})")
    name = FORMAT_NAMES[fmt]
    what = f"{name} {what}" if not isinstance(source, bytes) else f"the {name} data"
    if not data.strip(b"\0 \t\r\n"):
        raise MalformedECGError(f"{what} is empty; the export or transfer may have failed")
    if sniffed != fmt:
        raise MalformedECGError(f"{what} does not start like a {name} file (truncated or corrupt header)")
    text = _xml_text(data) if _xml_text(data[:4096]) is not None else None
    if text is not None and _ENTITY_DECL.search(text):
        raise MalformedECGError(
            f"{what} declares a DOCTYPE or XML entities, which LASAN refuses for safety (entity expansion); "
            "export the ECG without a DTD"
        )
    if text is not None:
        _check_variant(fmt, text, what)
    parsed, caught = _parse(data, fmt, what)
    version = str(getattr(parsed.file_format, "version", "") or "")
    if fmt == "scp-ecg" and version and not _SCP_VERSIONS[0] <= float(version) <= _SCP_VERSIONS[1]:
        raise UnsupportedFormatError(
            f"{what} declares SCP-ECG version {version}; LASAN reads versions 1.0 to 3.0 (EN 1064 / ISO 11073-91064)"
        )
    return _to_record(parsed, fmt, what, caught)


def _root_namespace(text: str) -> str | None:
    """The namespace URI of the document's root element, None when it declares none."""
    match = _ROOT_START.search(_strip_prolog(text))
    if match is None:
        return None
    prefix, attributes = match.group(1), match.group(2)
    declared = re.search(rf"""\bxmlns{':' + re.escape(prefix) if prefix else ''}\s*=\s*["']([^"']*)["']""", attributes)
    return declared.group(1) if declared else None


def _check_variant(fmt: str, text: str, what: str) -> None:
    """Refuse the XML variants whose schema differs from what the reader reads (the library does not check)."""
    if fmt == "hl7-aecg" and (namespace := _root_namespace(text)) != _AECG_NAMESPACE:
        raise UnsupportedFormatError(
            f"{what} has its AnnotatedECG root in namespace {namespace or '(none)'!r}, not the HL7 v3 aECG "
            f"namespace {_AECG_NAMESPACE!r}: a draft or another schema version LASAN cannot read; "
            "export it as HL7 aECG release 1 (PORT_MT020001)"
        )
    # Only a complete document: a truncated one lost its rhythm to the cut, and the parser says so.
    complete = text.rstrip("\0 \t\r\n").endswith("</RestingECG>")
    if fmt == "ge-muse" and complete and not _MUSE_RHYTHM.search(text):
        raise UnsupportedFormatError(
            f"{what} holds no rhythm waveform (a median-beat-only MUSE export); LASAN reads the 10 s rhythm "
            "strip: export the resting ECG with its rhythm waveform"
        )


def _check_size(size: int, what: str) -> None:
    if size > MAX_VENDOR_BYTES:
        raise MalformedECGError(
            f"{what} is {size / 1e6:.1f} MB, more than the {MAX_VENDOR_BYTES // (1024 * 1024)} MB a resting ECG "
            "export can be; it was not read (a Holter recording, or not an ECG export)"
        )


def _parse(data: bytes, fmt: str, what: str):
    """The library's record for ``data``, and its warnings; library errors become ours."""
    import importlib

    from ecgdatakit.exceptions import ChecksumWarning
    from ecgdatakit.exceptions import UnsupportedFormatError as LibraryUnsupported

    _, module, cls_name = _PARSERS[fmt]
    parser_cls = getattr(importlib.import_module(f"ecgdatakit.parsing.parsers.{module}"), cls_name)
    # The library reads paths: the bytes go to a private temporary file, removed at once.
    with tempfile.TemporaryDirectory(prefix="lasan-ecg-") as tmp:
        path = Path(tmp) / "ecg"
        path.write_bytes(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                record = parser_cls().parse(path)
            except LibraryUnsupported as exc:
                raise UnsupportedFormatError(
                    f"{what} is a version or variant LASAN cannot read ({_clean(exc, path)}); "
                    "export it as a supported version or as DICOM"
                ) from exc
            except RecursionError as exc:
                raise MalformedECGError(f"{what} is nested too deeply to be an ECG export") from exc
            except Exception as exc:  # noqa: BLE001 - the boundary: any parser failure is a broken file
                raise MalformedECGError(
                    f"{what} is truncated or corrupt ({type(exc).__name__}: {_clean(exc, path)}); "
                    "ask for the file to be exported again"
                ) from exc
    notes = tuple(_clean(w.message, path) for w in caught)
    # The library reads what it can of a damaged file and warns; a clinical reading must not
    # be made from part of an ECG or from samples whose checksum fails.
    damaged = [note for w, note in zip(caught, notes, strict=True)
               if issubclass(w.category, ChecksumWarning) or "truncated" in note.lower()]
    if damaged:
        raise MalformedECGError(f"{what} is truncated or corrupt ({damaged[0]}); ask for the file to be exported again")
    return record, notes


def _one_line(message: object) -> str:
    return " ".join(str(message).split())[:300]


def _clean(message: object, path: Path) -> str:
    """A library message without our temporary file's name, on one line."""
    text = " ".join(str(message).replace(str(path), "the file").replace(path.name, "the file").split())
    return text[:300]


def _to_record(parsed, fmt: str, what: str, notes: tuple[str, ...]) -> ECGRecord:
    rows: list[np.ndarray] = []
    leads: list[str] = []
    rates: set[float] = set()
    source_units: set[str] = set()
    notes_out = list(notes)
    for lead in parsed.leads:  # the rhythm waveform; median beats are in parsed.median_beats
        name = canonical_lead(lead.label)
        if name is None:
            notes_out.append(f"channel {lead.label!r} is not one of the 12 standard leads; ignored")
            continue
        if name in leads:
            notes_out.append(f"channel {lead.label!r} repeats lead {name}; the first one is used")
            continue
        try:
            if lead.is_raw and not lead.resolution_unit:
                raise ValueError("raw counts without a voltage unit")
            physical = lead.to_physical().convert_units("mV")
        except Exception as exc:  # noqa: BLE001 - RawSamplesError, ValueError on unknown units
            raise BadWaveformError(
                f"{what}: lead {name} has no usable amplitude units ({_one_line(exc)}); LASAN cannot convert it to mV"
            ) from exc
        rows.append(np.asarray(physical.samples, dtype=np.float64))
        leads.append(name)
        rates.add(float(lead.sampling_rate))
        if lead.resolution_unit:
            source_units.add(f"{lead.resolution:g} {lead.resolution_unit}/count")
    if not leads:
        raise MissingLeadsError(STANDARD_LEADS, [])
    if len(rates) != 1 or not all(r > 0 for r in rates):
        raise BadWaveformError(f"{what}: leads at different or invalid sampling rates ({sorted(rates)} Hz)")
    lengths = {len(row) for row in rows}
    if len(lengths) != 1:
        raise BadWaveformError(f"{what}: leads of unequal length ({sorted(lengths)} samples)")
    fs = rates.pop()
    duration = rows[0].size / fs
    if fmt == "edf" and duration > MAX_EDF_SECONDS:
        raise UnsupportedFormatError(
            f"{what} holds {duration / 60:.0f} min of signal: not a resting ECG (LASAN reads EDF files of "
            f"at most {MAX_EDF_SECONDS / 60:.0f} min with 12-lead ECG channels)"
        )
    recording = parsed.recording
    device, filters = recording.device, recording.acquisition.filters
    version = getattr(parsed.file_format, "version", "") or ""
    acquisition = Acquisition(
        source_format=fmt,
        manufacturer=device.manufacturer or _FORMAT_VENDOR.get(fmt),
        device=device.model or None,
        acquired_at=recording.date.isoformat() if recording.date else None,
        original_units=", ".join(sorted(source_units)) or "mV",
        filter_low_hz=filters.highpass,
        filter_high_hz=filters.lowpass,
        notes=(f"{FORMAT_NAMES[fmt]} {version}".strip() + " (read with ecgdatakit)", *notes_out),
    )
    patient = parsed.patient
    name = "^".join(part for part in (patient.last_name, patient.first_name) if part) or None
    identity = PatientIdentity(
        patient_id=patient.patient_id or None,
        name=name,
        birth_date=patient.birth_date.strftime("%Y%m%d") if patient.birth_date else None,
        sex=patient.sex or None,
    )
    record = ECGRecord(np.stack(rows).astype(np.float32), fs, tuple(leads), acquisition, identity)
    return record.in_standard_order().with_derived_leads()
