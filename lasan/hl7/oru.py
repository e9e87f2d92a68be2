"""HL7 v2 ORU ECG messages: the reader (NA waveforms and ED-wrapped DICOM) and the writer.

The reader returns everything later steps need in one object, :class:`HL7ECGMessage`:
the header (:mod:`.encoding`), the order context the result goes back to (sender,
control ID, placer / filler order, observation time, the PID segment) and the
:class:`~lasan.record.ECGRecord`; nothing downstream splits the message again.

Structure is parsed with plain string splitting, segment by segment, because a waveform
OBX holds tens of thousands of numbers: a general HL7 tokenizer (hl7apy) takes seconds on
one 12-lead message, while ``np.fromstring`` on the split field takes milliseconds. Only
MSH, PID, OBR and OBX are read; other segments are skipped.

Accepted (see docs/formats.md for the full list):

* Segments separated by CR (LF and CRLF tolerated); optional MLLP framing bytes.
* Delimiters from MSH-1 / MSH-2; character set from MSH-18 (first repetition).
* NA waveforms: one OBX per lead, OBX-2 = NA, OBX-3 a lead code that
  :func:`lasan.leads.canonical_lead` maps (MDC ``131329^MDC_ECG_LEAD_I^MDC`` or a
  local ``I^Lead I^L``), OBX-5 the samples separated by the component separator,
  OBX-6 mV or uV (UCUM or MDC). Sampling rate in an NM OBX coded
  ``67981^MDC_ATTR_SAMP_RATE^MDC`` (any code value with that text is accepted),
  units Hz or per second; a rate OBX whose OBX-4 sub-id extends a lead's sub-id
  belongs to that lead.
* ED: OBX-2 = ED, OBX-5 = ``source^type^subtype^encoding^data`` with a DICOM subtype
  and Base64 (or Hex) encoding; HL7 escapes are undone before decoding. A payload of another
  subtype (not a PDF/image/text report) is recognised by :func:`lasan.formats.detect_format`,
  as a file would be, and read when it is DICOM, an ECG-system export (GE MUSE XML, Philips
  Sierra XML, aECG, SCP-ECG, Mortara, EDF) or a FHIR ECG Observation.

The writer (:func:`build_oru`) has two styles: ``"na"`` (IHE PCD-style: one NM OBX
``67981^MDC_ATTR_SAMP_RATE^MDC``, then one NA OBX per lead, integer microvolts by
default: 1 uV is finer than any amplifier's noise and integers keep the message small)
and ``"ed"`` (one ED OBX ``^application^DICOM^Base64^<data>``).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import numpy as np

from lasan.errors import (
    BadWaveformError,
    ConfigError,
    ECGFormatError,
    HL7MalformedError,
    HL7UnsupportedError,
    HL7WaveformError,
    MalformedECGError,
    UnsupportedFormatError,
)
from lasan.hl7.encoding import (
    CHARSETS,
    STANDARD,
    DecodedMessage,
    Delimiters,
    MessageHeader,
    escape,
    first_component,
    hl7_timestamp_to_iso,
    read_message,
    unescape,
)
from lasan.leads import canonical_lead, mdc_code
from lasan.record import Acquisition, ECGRecord, PatientIdentity

__all__ = [
    "DEFAULT_MAX_BYTES",
    "ECG_SERVICE_CODE",
    "OrderContext",
    "HL7ECGMessage",
    "parse_oru",
    "read_hl7",
    "build_oru",
]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # a 12-lead 10 s 1000 Hz NA message is ~0.8 MB
ECG_SERVICE_CODE = "11524-6^EKG study^LN"  # LOINC for OBR-4 / the ED OBX-3

_RATE_CODES = {"67981", "MDC_ATTR_SAMP_RATE"}
_RATE_UNITS = {"hz", "/s", "1/s", "s-1", "264608", "mdc_dim_per_sec", "266176", "mdc_dim_hz", "per second", "hertz"}
# OBX-6 -> factor to mV. MDC volt is 4256 in partition 4; milli adds 0x12, micro 0x13.
_VOLT_UNITS = {
    "mv": 1.0, "millivolt": 1.0, "266418": 1.0, "mdc_dim_milli_volt": 1.0,
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "266419": 1e-3, "mdc_dim_micro_volt": 1e-3,
    "v": 1e3, "volt": 1e3, "266400": 1e3, "mdc_dim_volt": 1e3,
}
_DICOM_SUBTYPES = {"dicom", "application/dicom"}
# ED subtypes that are never an ECG waveform; any other payload is sniffed for an ECG-system export.
_REPORT_SUBTYPES = {"pdf", "application/pdf", "jpeg", "image/jpeg", "png", "image/png", "tiff", "rtf", "html",
                    "text/html", "plain", "text/plain"}
_WRITE_RATE_CODE = "67981^MDC_ATTR_SAMP_RATE^MDC"
_WRITE_RATE_UNITS = "264608^MDC_DIM_PER_SEC^MDC"
_NA_UNITS = {"uV": "266419^MDC_DIM_MICRO_VOLT^MDC", "mV": "266418^MDC_DIM_MILLI_VOLT^MDC"}
# An embedded DICOM's error -> the HL7 error of the same kind (exact classes only: a more
# specific DICOM error, e.g. MissingLeadsError, passes through unchanged).
_WRAPPED: tuple[tuple[type[ECGFormatError], type[ECGFormatError]], ...] = (
    (MalformedECGError, HL7MalformedError),
    (UnsupportedFormatError, HL7UnsupportedError),
    (BadWaveformError, HL7WaveformError),
)


@dataclass(frozen=True)
class OrderContext:
    """Where a result must go: the original message, its patient and its order.

    Fields are kept as sent (HL7-escaped, standard delimiters) so a result repeats them
    verbatim. ``pid_segment`` and ``patient`` hold protected health information: they go
    into the result message only, never into logs (``repr`` hides them).
    """

    original_control_id: str
    sending_application: str
    sending_facility: str
    placer_order: str = ""
    filler_order: str = ""
    observation_time: str = ""  # HL7 TS
    pid_segment: str | None = None  # verbatim from the original message (standard delimiters)
    patient: PatientIdentity | None = None  # when there is no PID to copy (DICOM)

    def __repr__(self) -> str:
        return (f"OrderContext(control_id={self.original_control_id!r}, sender={self.sending_application!r}|"
                f"{self.sending_facility!r}, <patient redacted>)")


@dataclass(frozen=True)
class HL7ECGMessage:
    """An ORU message carrying an ECG, read once: header, order context and record.

    Patient identifiers from PID live only in ``record.patient`` and ``order`` (both
    redacted in ``repr``).
    """

    header: MessageHeader
    order: OrderContext
    record: ECGRecord
    placer_order_number: str | None  # OBR-2, first component, unescaped
    filler_order_number: str | None  # OBR-3
    observation_datetime: str | None  # OBR-7 (else the waveform OBX-14), ISO 8601

    @property
    def control_id(self) -> str:
        return self.header.control_id


def read_hl7(source: str | os.PathLike[str] | bytes, *, max_bytes: int = DEFAULT_MAX_BYTES) -> ECGRecord:
    """Read an HL7 v2 ORU ECG (file path or message bytes) into an ECG record.

    Raises:
        HL7MalformedError, HL7UnsupportedError, HL7WaveformError: see :func:`parse_oru`.
    """
    if not isinstance(source, bytes):
        path = os.fspath(source)
        try:
            size = os.path.getsize(path)
            if size > max_bytes:
                raise HL7MalformedError(_too_large(size, max_bytes))
            with open(path, "rb") as fh:
                source = fh.read()
        except OSError as exc:
            raise HL7MalformedError(f"cannot read HL7 file {path}: {exc.strerror or exc}") from exc
    return parse_oru(source, max_bytes=max_bytes).record


def parse_oru(message: bytes | str | DecodedMessage, *, max_bytes: int = DEFAULT_MAX_BYTES) -> HL7ECGMessage:
    """Parse an HL7 v2 ORU message that carries an ECG.

    Args:
        message: raw bytes (charset from MSH-18; MLLP framing tolerated), decoded text, or
            a :class:`~lasan.hl7.encoding.DecodedMessage` whose header was already read
            (it is then neither re-read nor decoded again).
        max_bytes: larger messages are refused before any parsing.

    Raises:
        HL7MalformedError: too large, no MSH (:class:`~lasan.errors.HL7HeaderError`), invalid
            delimiters, unknown or undecodable charset (:class:`~lasan.errors.HL7CharsetError`),
            broken ED payload.
        HL7UnsupportedError: not an ORU message, or no ECG waveform.
        HL7WaveformError: NA values that are not numbers, leads of unequal length,
            missing or conflicting sampling rate, unknown units.
    """
    if isinstance(message, DecodedMessage):
        decoded = message
        if len(decoded.text) > max_bytes:
            raise HL7MalformedError(_too_large(len(decoded.text), max_bytes))
    else:
        if len(message) > max_bytes:
            raise HL7MalformedError(_too_large(len(message), max_bytes))
        decoded = read_message(message)
    header, delims = decoded.header, decoded.header.delimiters
    if header.message_code.split("^")[0] != "ORU":
        raise HL7UnsupportedError(
            f"HL7 message type {header.message_type or '(empty)'} is not an observation result (ORU); "
            "send ECGs as ORU^R01"
        )
    segments = decoded.segments()
    pid: list[str] | None = None
    pid_text: str | None = None
    obr: list[str] | None = None
    na_leads: list[tuple[str, str, list[str], int]] = []  # (lead, sub-id, fields, segment no)
    rates: list[tuple[str, float, int]] = []
    ed_fields: list[tuple[list[str], int]] = []
    skipped: list[str] = []
    for number, segment in enumerate(segments[1:], start=2):
        name = segment[:3]
        if name == "PID" and pid is None:
            pid, pid_text = segment.split(delims.field), segment
        elif name == "OBR" and obr is None:
            obr = segment.split(delims.field)
        elif name == "OBX":
            fields = segment.split(delims.field)
            value_type = fields[2].strip().upper() if len(fields) > 2 else ""
            code = fields[3] if len(fields) > 3 else ""
            sub_id = fields[4].strip() if len(fields) > 4 else ""
            if value_type == "NA":
                lead = _lead_of(code, delims)
                if lead is None:
                    skipped.append(code.split(delims.component)[1 if delims.component in code else 0])
                else:
                    na_leads.append((lead, sub_id, fields, number))
            elif value_type in ("NM", "SN") and _is_rate_code(code, delims):
                rates.append((sub_id, _rate_value(fields, delims, number), number))
            elif value_type == "ED":
                ed_fields.append((fields, number))
    get_pid = _field_getter(pid or [])
    get_obr = _field_getter(obr or [])
    patient = PatientIdentity(
        patient_id=first_component(get_pid(3), delims) or first_component(get_pid(2), delims),
        name=_name(get_pid(5), delims),
        birth_date=unescape(get_pid(7), delims)[:8] or None,
        sex=unescape(get_pid(8), delims) or None,
    )
    if na_leads:
        record, obx14 = _na_record(na_leads, rates, delims, skipped)
    elif ed_fields:
        record, obx14 = _ed_record(ed_fields, delims), None
    else:
        raise HL7UnsupportedError(
            "the ORU message carries no ECG waveform: expected OBX segments of type NA coded with "
            "MDC lead codes (e.g. 131329^MDC_ECG_LEAD_I^MDC) or an ED OBX with a base64 DICOM ECG"
        )
    observed = hl7_timestamp_to_iso(get_obr(7)) or hl7_timestamp_to_iso(obx14 or "")
    if record.acquisition.acquired_at is None and observed:
        record = replace(record, acquisition=replace(record.acquisition, acquired_at=observed))
    if any(getattr(patient, key) for key in ("patient_id", "name", "birth_date", "sex")):
        record = replace(record, patient=patient)
    # The result repeats order fields verbatim, which is only safe with standard delimiters.
    standard = delims.is_standard and header.encoding_characters == "^~\\&"
    order = OrderContext(
        original_control_id=header.control_id,
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        placer_order=get_obr(2) if standard else "",
        filler_order=get_obr(3) if standard else "",
        observation_time=get_obr(7).split(delims.component)[0],
        pid_segment=pid_text if standard else None,
    )
    return HL7ECGMessage(
        header=header,
        order=order,
        record=record.with_derived_leads(),
        placer_order_number=first_component(get_obr(2), delims),
        filler_order_number=first_component(get_obr(3), delims),
        observation_datetime=observed,
    )


def _too_large(size: int, limit: int) -> str:
    return (
        f"the HL7 message is {size / 1e6:.1f} MB, above the {limit / 1e6:.1f} MB limit; a 12-lead "
        "resting ECG needs well under 2 MB (raise max_bytes if this sender is trusted)"
    )


def _field_getter(fields: list[str]):
    def get(number: int) -> str:
        return fields[number] if 0 <= number < len(fields) else ""

    return get


def _name(value: str, delims: Delimiters) -> str | None:
    parts = value.split(delims.repetition)[0].split(delims.component)[:3]
    parts = [unescape(p, delims).strip() for p in parts]
    return "^".join(parts).rstrip("^") or None


# ------------------------------------------------------------------- NA waveforms


def _lead_of(code: str, delims: Delimiters) -> str | None:
    """OBX-3 (code^text^system) -> canonical lead, trying the code, then the text."""
    for part in code.split(delims.component)[:2]:
        lead = canonical_lead(part)
        if lead:
            return lead
    return None


def _is_rate_code(code: str, delims: Delimiters) -> bool:
    parts = [p.strip().upper() for p in code.split(delims.component)[:2]]
    return any(p in _RATE_CODES for p in parts)


def _rate_value(fields: list[str], delims: Delimiters, number: int) -> float:
    value = fields[5].strip() if len(fields) > 5 else ""
    units = fields[6] if len(fields) > 6 else ""
    try:
        rate = float(value.split(delims.component)[-1])
    except ValueError:
        raise HL7WaveformError(f"OBX segment {number}: sampling rate {value!r} is not a number") from None
    unit_parts = {p.strip().lower() for p in units.split(delims.component)[:2] if p.strip()}
    if unit_parts and not unit_parts & _RATE_UNITS:
        raise HL7WaveformError(
            f"OBX segment {number}: sampling rate units {units!r} are not Hz "
            "(use Hz^Hz^UCUM or 264608^MDC_DIM_PER_SEC^MDC)"
        )
    if not (np.isfinite(rate) and rate > 0):
        raise HL7WaveformError(f"OBX segment {number}: sampling rate {value!r} must be a positive number of Hz")
    return rate


def _volt_factor(units: str, delims: Delimiters, lead: str, number: int) -> tuple[str, float]:
    for part in units.split(delims.component)[:2]:
        key = part.strip().lower()
        if key in _VOLT_UNITS:
            return ("uV" if _VOLT_UNITS[key] == 1e-3 else "mV" if _VOLT_UNITS[key] == 1.0 else "V"), _VOLT_UNITS[key]
    raise HL7WaveformError(
        f"OBX segment {number} (lead {lead}): units {units or '(empty)'!r} in OBX-6 are not a voltage; "
        "send mV or uV (UCUM mV/uV or MDC 266418^MDC_DIM_MILLI_VOLT / 266419^MDC_DIM_MICRO_VOLT)"
    )


_DIGIT_0, _DIGIT_9, _PLUS, _MINUS = ord("0"), ord("9"), ord("+"), ord("-")
_INT_LIMIT = 10**17  # |sample| below this: every int64 the text can hold, far from saturation


def _integer_samples(value: str, separator: str) -> np.ndarray | None:
    """OBX-5 written as integers (``[+-]digits`` joined by one-character ``separator``) -> int64.

    ``np.fromstring`` parses such text about 8x faster than splitting it and converting the
    list, but it is lenient (``"1^-^2"`` reads as 1, 0, 2), so the grammar is checked first,
    byte-wise with numpy. Returns None for anything else; the caller then uses the strict path.
    """
    if len(separator) != 1 or separator in "0123456789+-" or not value.isascii():
        return None
    b = np.frombuffer(value.encode("ascii"), dtype=np.uint8)
    if b.size == 0:
        return None
    digit = (b >= _DIGIT_0) & (b <= _DIGIT_9)
    sign = (b == _PLUS) | (b == _MINUS)
    sep = b == ord(separator)
    starts_number = digit | sign
    if not (
        (digit | sign | sep).all()
        and starts_number[0]
        and digit[-1]
        and starts_number[1:][sep[:-1]].all()  # every separator is followed by a number
        and digit[1:][sign[:-1]].all()  # every sign is followed by a digit ...
        and sep[:-1][sign[1:]].all()  # ... and starts its number (first byte or after a separator)
    ):
        return None
    out = np.fromstring(value, dtype=np.int64, sep=separator)
    if out.size != int(sep.sum()) + 1 or not ((out < _INT_LIMIT) & (out > -_INT_LIMIT)).all():
        return None
    return out


def _samples(value: str, separator: str, lead: str, number: int) -> np.ndarray:
    """OBX-5 of an NA OBX -> float64 samples.

    Fast paths, all in C: integer samples (the usual uV counts) are checked and parsed by
    numpy in one pass each; decimals take one ``str.split`` and one numpy conversion.
    """
    if "." not in value and "e" not in value and "E" not in value:
        ints = _integer_samples(value, separator)
        if ints is not None:
            return ints.astype(np.float64)
    parts = value.split(separator)
    try:
        if "." in value or "e" in value or "E" in value:
            fast = np.array(parts, dtype=np.float64)
        else:
            fast = np.array(parts, dtype=np.int64).astype(np.float64)
        if np.all(np.isfinite(fast)):
            return fast
    except (ValueError, OverflowError):
        pass
    expected = len(parts)
    # Slow path: empty components are missing samples (NaN); anything else must be a number.
    out = np.empty(expected, dtype=np.float64)
    for i, item in enumerate(parts):
        item = item.strip()
        if not item:
            out[i] = np.nan
            continue
        try:
            out[i] = float(item)
        except ValueError:
            raise HL7WaveformError(
                f"OBX segment {number} (lead {lead}): sample {i + 1} is {item[:20]!r}, not a number; "
                "NA waveform values must be numbers separated by the component separator"
            ) from None
        if not np.isfinite(out[i]):
            raise HL7WaveformError(f"OBX segment {number} (lead {lead}): sample {i + 1} is {item!r}")
    return out


def _na_record(
    na_leads: list[tuple[str, str, list[str], int]],
    rates: list[tuple[str, float, int]],
    delims: Delimiters,
    skipped: list[str],
) -> tuple[ECGRecord, str | None]:
    rows: list[np.ndarray] = []
    leads: list[str] = []
    lead_rates: list[float] = []
    units_seen: set[str] = set()
    for lead, sub_id, fields, number in na_leads:
        if lead in leads:
            raise HL7WaveformError(f"OBX segment {number}: lead {lead} appears twice in the message")
        value = fields[5] if len(fields) > 5 else ""
        if not value.strip():
            raise HL7WaveformError(f"OBX segment {number} (lead {lead}) has no samples in OBX-5")
        unit, factor = _volt_factor(fields[6] if len(fields) > 6 else "", delims, lead, number)
        rows.append(_samples(value, delims.component, lead, number) * factor)
        leads.append(lead)
        units_seen.add(unit)
        lead_rates.append(_rate_for(sub_id, rates, lead, number))
    lengths = {lead: row.size for lead, row in zip(leads, rows, strict=True)}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{lead}={n}" for lead, n in lengths.items())
        raise HL7WaveformError(f"the ECG leads have unequal numbers of samples ({detail}); all leads must be equally long")
    if len(set(lead_rates)) > 1:
        raise HL7WaveformError(f"the leads are sampled at different rates {sorted(set(lead_rates))} Hz")
    first = na_leads[0][2]
    notes = tuple(f"OBX lead code {code!r} is not a 12-lead ECG lead; ignored" for code in skipped)
    acquisition = Acquisition(
        source_format="hl7-na",
        device=first_component(first[18], delims) if len(first) > 18 else None,
        original_units="/".join(sorted(units_seen)),
        notes=notes,
    )
    record = ECGRecord(np.stack(rows).astype(np.float32), lead_rates[0], tuple(leads), acquisition)
    return record.in_standard_order(), (first[14] if len(first) > 14 else None)


def _rate_for(sub_id: str, rates: list[tuple[str, float, int]], lead: str, number: int) -> float:
    if not rates:
        raise HL7WaveformError(
            f"OBX segment {number} (lead {lead}): the message has no sampling rate; add an NM OBX "
            "coded 67981^MDC_ATTR_SAMP_RATE^MDC with the rate in Hz"
        )
    own = [rate for rid, rate, _ in rates if sub_id and rid.startswith(sub_id + ".")]
    if own:
        return own[0]
    distinct = {rate for _, rate, _ in rates}
    if len(distinct) == 1:
        return distinct.pop()
    raise HL7WaveformError(
        f"OBX segment {number} (lead {lead}): several sampling rates {sorted(distinct)} and none is tied "
        "to this lead by its OBX-4 sub-id"
    )


# ------------------------------------------------------------------- ED (DICOM) payloads


def _ed_record(ed_fields: list[tuple[list[str], int]], delims: Delimiters) -> ECGRecord:
    from lasan.formats import read_ecg
    from lasan.formats.dicom import with_source
    from lasan.formats.vendor import FORMAT_NAMES

    for fields, number in ed_fields:
        value = fields[5] if len(fields) > 5 else ""
        parts = value.split(delims.component)
        if len(parts) < 5:
            continue
        subtype = unescape(parts[2], delims).strip().lower()
        is_dicom = subtype in _DICOM_SUBTYPES
        if not is_dicom and subtype in _REPORT_SUBTYPES:
            continue  # e.g. a PDF report next to the waveform
        encoding = parts[3].strip().lower()
        data = re.sub(r"\s+", "", unescape(parts[4], delims))
        try:
            if encoding in ("base64", "b64"):
                payload = base64.b64decode(data, validate=True)
            elif encoding == "hex":
                payload = bytes.fromhex(data)
            else:
                raise HL7UnsupportedError(
                    f"OBX segment {number}: ED encoding {parts[3]!r} is not supported; use Base64"
                )
        except (binascii.Error, ValueError, HL7UnsupportedError) as exc:
            if not is_dicom:
                continue  # an attachment of another kind: only its content could say it is an ECG
            if isinstance(exc, HL7UnsupportedError):
                raise
            raise HL7MalformedError(
                f"OBX segment {number}: the ED payload is not valid {parts[3]} ({exc}); it may be truncated"
            ) from exc
        # Any other subtype (XML, Octet-stream, SCP, JSON ...) is recognised by its content through
        # the same detection as a file (lasan.formats.detect_format): DICOM, an ECG-system export
        # (GE MUSE XML, SCP-ECG, ...) or a FHIR ECG Observation.
        fmt = "dicom" if is_dicom else _ed_format(payload)
        if fmt is None:
            continue
        what = FORMAT_NAMES.get(fmt, {"fhir": "FHIR"}.get(fmt, "DICOM"))
        try:
            record = read_ecg(payload, fmt=fmt)
        except ECGFormatError as exc:
            # The DICOM reader's error, restated as the HL7 message's error of the same kind.
            wrapped: type[ECGFormatError] | None = next(
                (hl7 for base, hl7 in _WRAPPED if type(exc) is base), None)
            if wrapped is None:
                raise
            raise wrapped(f"OBX segment {number}: the embedded {what} ECG is unusable: {exc}") from exc
        return with_source(record, "hl7-ed")
    raise HL7UnsupportedError(
        "the ORU message has ED observations but none is a DICOM ECG or an ECG-system export "
        "(expected OBX-5 = ^application^DICOM^Base64^<data>, or a GE MUSE / Philips / aECG / Mortara XML, "
        "SCP-ECG, EDF or FHIR ECG Observation in Base64)"
    )


def _ed_format(payload: bytes) -> str | None:
    """The ECG format of an ED attachment by content, or None for an attachment of another kind."""
    from lasan.formats import VENDOR_FORMATS, detect_format

    try:
        fmt = detect_format(payload)
    except ECGFormatError:
        return None  # empty, or no ECG format: a document, an image, ...
    # HL7 inside HL7, or a WFDB header, is no ECG attachment.
    return fmt if fmt in ("dicom", "fhir", *VENDOR_FORMATS) else None


# ----------------------------------------------------------------------- the writer


def build_oru(
    record: ECGRecord,
    *,
    style: str = "na",
    control_id: str,
    sending_application: str = "LASAN",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    message_datetime: datetime | None = None,
    processing_id: str = "P",
    version: str = "2.6",
    charset: str = "UNICODE UTF-8",
    placer_order_number: str = "",
    filler_order_number: str = "",
    include_patient: bool = True,
    na_units: str = "uV",
    uid_key: str | None = None,
) -> bytes:
    """An ORU^R01 message (segments ended by CR, no MLLP framing) carrying ``record``.

    Args:
        record: the ECG.
        style: ``"na"`` (one NA OBX per lead) or ``"ed"`` (base64 DICOM).
        control_id: MSH-10.
        message_datetime: MSH-7; now (UTC) when None.
        charset: MSH-18; the message is encoded with it.
        include_patient: write PID-3/5/7/8 from ``record.patient``.
        na_units: ``"uV"`` (integers) or ``"mV"`` (4 decimals) for NA samples.
        uid_key: ED style only: derive the embedded DICOM's UIDs from this key
            (deterministic output) instead of fresh random UIDs.

    Raises:
        ConfigError: unknown style, units or charset.
        BadWaveformError: NaN samples (HL7 NA and DICOM cannot carry them here).
    """
    if style not in ("na", "ed"):
        raise ConfigError(f"HL7 ECG style must be 'na' or 'ed', got {style!r}")
    if na_units not in _NA_UNITS:
        raise ConfigError(f"na_units must be 'uV' or 'mV', got {na_units!r}")
    codec = CHARSETS.get(charset.upper())
    if codec is None:
        raise ConfigError(f"unknown HL7 character set {charset!r}; use one of {sorted(CHARSETS)}")
    if not np.all(np.isfinite(record.signal)):
        raise BadWaveformError("cannot write an ECG with NaN or infinite samples to HL7")
    when = (message_datetime or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    observed = _hl7_time(record.acquisition.acquired_at) or when
    msh = [
        "MSH", "^~\\&", _e(sending_application), _e(sending_facility), _e(receiving_application),
        _e(receiving_facility), when, "", "ORU^R01^ORU_R01", _e(control_id), processing_id, version,
        "", "", "AL", "NE", "", charset,
    ]
    segments = ["|".join(msh)]
    patient = record.patient
    if include_patient:
        segments.append(
            "|".join([
                "PID", "1", "", f"{_e(patient.patient_id or '')}^^^^MR" if patient.patient_id else "", "",
                "^".join(_e(part) for part in (patient.name or "").split("^")), "",
                _e(patient.birth_date or ""), _e(patient.sex or ""),
            ])
        )
    else:
        segments.append("PID|1")
    segments.append(
        f"OBR|1|{_e(placer_order_number)}|{_e(filler_order_number)}|{ECG_SERVICE_CODE}|||{observed}"
    )
    if style == "na":
        segments += _na_segments(record, na_units, observed)
    else:
        from lasan.formats.dicom import dicom_bytes

        data = base64.b64encode(dicom_bytes(record, uid_key=uid_key)).decode("ascii")
        segments.append(f"OBX|1|ED|{ECG_SERVICE_CODE}|1|^application^DICOM^Base64^{data}||||||F|||{observed}")
    return ("\r".join(segments) + "\r").encode(codec)


def _na_segments(record: ECGRecord, units: str, observed: str) -> list[str]:
    lines = [f"OBX|1|NM|{_WRITE_RATE_CODE}|1.0.0.1|{record.fs:g}|{_WRITE_RATE_UNITS}|||||F|||{observed}"]
    if units == "uV":
        counts = np.rint(record.signal.astype(np.float64) * 1000.0).astype(np.int64)
        values = ["^".join(map(str, row.tolist())) for row in counts]
    else:
        values = ["^".join(np.char.mod("%.4f", row.astype(np.float64)).tolist()) for row in record.signal]
    for k, (lead, value) in enumerate(zip(record.leads, values, strict=True), start=2):
        lines.append(f"OBX|{k}|NA|{mdc_code(lead)}|1.0.0.{k}|{value}|{_NA_UNITS[units]}|||||F|||{observed}")
    return lines


def _e(text: str) -> str:
    return escape(text, STANDARD)


def _hl7_time(iso: str | None) -> str | None:
    if not iso:
        return None
    digits = "".join(ch for ch in iso.split("+")[0] if ch.isdigit())
    return digits[:14] if len(digits) >= 8 else None
