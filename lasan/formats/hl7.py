"""HL7 v2 ORU ECG results: IHE PCD-style NA waveforms and ED-wrapped DICOM ECGs.

Structure is parsed here with plain string splitting, segment by segment, because a
waveform OBX holds tens of thousands of numbers: a general HL7 tokenizer (hl7apy)
takes seconds on one 12-lead message, while ``np.fromstring`` on the split field takes
milliseconds. Only MSH, PID, OBR and OBX are read; other segments are skipped.

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
  and Base64 (or Hex) encoding; HL7 escapes are undone before decoding.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from dataclasses import dataclass, replace

import numpy as np

from ..errors import ECGFormatError, HL7MalformedError, HL7UnsupportedError, HL7WaveformError
from ..leads import canonical_lead
from ..record import Acquisition, ECGRecord, PatientIdentity

__all__ = [
    "DEFAULT_MAX_BYTES",
    "CHARSETS",
    "HL7ECGMessage",
    "parse_oru",
    "read_hl7",
    "hl7_timestamp_to_iso",
    "unescape",
    "escape",
]

DEFAULT_MAX_BYTES = 20 * 1024 * 1024  # a 12-lead 10 s 1000 Hz NA message is ~0.8 MB
MLLP_START, MLLP_END = b"\x0b", b"\x1c"

# HL7 table 0211 (and the DICOM spellings some senders use) -> Python codec.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii", "ISO IR6": "ascii",
    "8859/1": "latin-1", "ISO IR100": "latin-1",
    **{f"8859/{n}": f"iso8859-{n}" for n in range(2, 10)},
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8", "ISO IR192": "utf-8",
    # Table 0211's plain "UNICODE" (ISO/IEC 10646) is sent as UTF-8 in practice.
    "UNICODE": "utf-8",
    "UNICODE UTF-16": "utf-16", "UNICODE UTF-32": "utf-32",
    "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "BIG-5": "big5",
    "ISO IR87": "iso2022_jp", "ISO IR14": "shift_jis", "ISO IR159": "iso2022_jp_2",
}
_RATE_CODES = {"67981", "MDC_ATTR_SAMP_RATE"}
_RATE_UNITS = {"hz", "/s", "1/s", "s-1", "264608", "mdc_dim_per_sec", "266176", "mdc_dim_hz", "per second", "hertz"}
# OBX-6 -> factor to mV. MDC volt is 4256 in partition 4; milli adds 0x12, micro 0x13.
_VOLT_UNITS = {
    "mv": 1.0, "millivolt": 1.0, "266418": 1.0, "mdc_dim_milli_volt": 1.0,
    "uv": 1e-3, "µv": 1e-3, "μv": 1e-3, "microvolt": 1e-3, "266419": 1e-3, "mdc_dim_micro_volt": 1e-3,
    "v": 1e3, "volt": 1e3, "266400": 1e3, "mdc_dim_volt": 1e3,
}
_DICOM_SUBTYPES = {"dicom", "application/dicom"}


@dataclass(frozen=True)
class HL7ECGMessage:
    """An ORU message carrying an ECG: routing fields for the ACK plus the record.

    Patient identifiers from PID live only in ``record.patient`` (redacted ``repr``).
    """

    control_id: str  # MSH-10, echoed in MSA-2 of the ACK
    sending_application: str  # MSH-3 (first component)
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    message_type: str  # MSH-9.1, "ORU"
    trigger: str  # MSH-9.2, "R01"
    version: str  # MSH-12
    charset: str  # MSH-18 as sent ("" when absent)
    processing_id: str  # MSH-11, "P" / "T" / "D"
    message_datetime: str | None  # MSH-7, ISO 8601
    placer_order_number: str | None  # OBR-2
    filler_order_number: str | None  # OBR-3
    observation_datetime: str | None  # OBR-7 (else the waveform OBX-14), ISO 8601
    field_separator: str
    encoding_characters: str  # MSH-2 as sent, for building a reply with the same delimiters
    record: ECGRecord


@dataclass(frozen=True)
class _Delims:
    field: str
    component: str
    repetition: str
    escape: str
    subcomponent: str


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


def parse_oru(message: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> HL7ECGMessage:
    """Parse an HL7 v2 ORU message that carries an ECG.

    Args:
        message: the message, raw bytes (charset from MSH-18) or already decoded text;
            MLLP framing bytes are tolerated.
        max_bytes: larger messages are refused before any parsing.

    Raises:
        HL7MalformedError: too large, no MSH, invalid delimiters, undecodable charset,
            broken ED payload.
        HL7UnsupportedError: not an ORU message, unknown charset, or no ECG waveform.
        HL7WaveformError: NA values that are not numbers, leads of unequal length,
            missing or conflicting sampling rate, unknown units.
    """
    if len(message) > max_bytes:
        raise HL7MalformedError(_too_large(len(message), max_bytes))
    text, charset = _decode(message) if isinstance(message, bytes) else (_strip_framing_text(message), None)
    segments = [seg for seg in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if seg]
    if not segments or not segments[0].startswith("MSH"):
        raise HL7MalformedError(_no_msh(segments[0] if segments else ""))
    delims = _delimiters(segments[0])
    msh = segments[0].split(delims.field)
    msh_field = _field_getter(msh, delims, offset=1)  # MSH-1 is the separator itself
    if charset is None:
        charset = msh_field(18).split(delims.repetition)[0].strip()
    message_type = msh_field(9).split(delims.component)
    if message_type[0].strip().upper() != "ORU":
        raise HL7UnsupportedError(
            f"HL7 message type {msh_field(9) or '(empty)'} is not an observation result (ORU); "
            "send ECGs as ORU^R01"
        )
    pid: list[str] | None = None
    obr: list[str] | None = None
    na_leads: list[tuple[str, str, list[str], int]] = []  # (lead, sub-id, fields, segment no)
    rates: list[tuple[str, float, int]] = []
    ed_fields: list[tuple[list[str], int]] = []
    skipped: list[str] = []
    for number, segment in enumerate(segments[1:], start=2):
        name = segment[:3]
        if name == "PID" and pid is None:
            pid = segment.split(delims.field)
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
    get_pid = _field_getter(pid or [], delims)
    get_obr = _field_getter(obr or [], delims)
    patient = PatientIdentity(
        patient_id=_first_component(get_pid(3), delims) or _first_component(get_pid(2), delims),
        name=_name(get_pid(5), delims),
        birth_date=unescape(get_pid(7), delims.escape, delims)[:8] or None,
        sex=unescape(get_pid(8), delims.escape, delims) or None,
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
    return HL7ECGMessage(
        control_id=msh_field(10).strip(),
        sending_application=_first_component(msh_field(3), delims) or "",
        sending_facility=_first_component(msh_field(4), delims) or "",
        receiving_application=_first_component(msh_field(5), delims) or "",
        receiving_facility=_first_component(msh_field(6), delims) or "",
        message_type="ORU",
        trigger=message_type[1].strip().upper() if len(message_type) > 1 else "",
        version=_first_component(msh_field(12), delims) or "",
        charset=charset,
        processing_id=_first_component(msh_field(11), delims) or "",
        message_datetime=hl7_timestamp_to_iso(msh_field(7)),
        placer_order_number=_first_component(get_obr(2), delims),
        filler_order_number=_first_component(get_obr(3), delims),
        observation_datetime=observed,
        field_separator=delims.field,
        encoding_characters=msh[1],
        record=record.with_derived_leads(),
    )


# ------------------------------------------------------------------ framing and charsets


def _too_large(size: int, limit: int) -> str:
    return (
        f"the HL7 message is {size / 1e6:.1f} MB, above the {limit / 1e6:.1f} MB limit; a 12-lead "
        "resting ECG needs well under 2 MB (raise max_bytes if this sender is trusted)"
    )


def _no_msh(start: str) -> str:
    # Name only the segment id: the rest of a first line may be a PID with patient identifiers.
    seen = f"a {start[:3]} segment" if re.fullmatch(r"[A-Z][A-Z0-9]{2}", start[:3]) else "no segment id"
    return f"not an HL7 v2 message: it must start with an MSH segment, but starts with {seen}"


def _strip_framing_text(text: str) -> str:
    return text.lstrip("\x0b\ufeff \t\r\n").rstrip("\x1c \t\r\n")


def _decode(raw: bytes) -> tuple[str, str]:
    """Decode message bytes with the character set MSH-18 names."""
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")) or raw[:6] in (b"M\0S\0H\0", b"\0M\0S\0H"):
        try:
            codec = "utf-16" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else (
                "utf-16-le" if raw[:1] == b"M" else "utf-16-be")
            return _strip_framing_text(raw.decode(codec)), "UNICODE UTF-16"
        except UnicodeDecodeError as exc:
            raise HL7MalformedError(f"the HL7 message looks like UTF-16 but does not decode: {exc}") from exc
    body = raw.lstrip(b"\x0b \t\r\n")
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    body = body.rstrip(b"\x1c \t\r\n")
    if not body.startswith(b"MSH") or len(body) < 8:
        raise HL7MalformedError(_no_msh(body[:3].decode("latin-1")))
    end = min((i for i in (body.find(b"\r"), body.find(b"\n")) if i >= 0), default=len(body))
    msh = body[:end].decode("latin-1")
    charset = msh[4:].split(msh[3]) if len(msh) > 4 else []
    declared = charset[16].split(msh[5:6] or "~")[0].strip() if len(charset) > 16 else ""
    if not declared:
        # HL7's default is ASCII, but senders that leave MSH-18 empty often send UTF-8 or Latin-1.
        try:
            return body.decode("utf-8"), ""
        except UnicodeDecodeError:
            return body.decode("latin-1"), ""
    codec = CHARSETS.get(declared.upper())
    if codec is None:
        raise HL7UnsupportedError(
            f"MSH-18 names the character set {declared!r}, which LASAN does not know; "
            f"use one of: {', '.join(sorted(CHARSETS))}"
        )
    try:
        return body.decode(codec), declared
    except UnicodeDecodeError as exc:
        raise HL7MalformedError(
            f"the HL7 message declares character set {declared!r} in MSH-18 but byte {exc.start} "
            f"({body[exc.start:exc.start + 1]!r}) is not valid in it; fix MSH-18 at the sender"
        ) from exc


def _delimiters(msh: str) -> _Delims:
    if len(msh) < 8:
        raise HL7MalformedError("the MSH segment is truncated: no encoding characters after 'MSH'")
    field = msh[3]
    encoding = msh[4:].split(field, 1)[0]
    chars = encoding[:4]
    problems = len(encoding) not in (4, 5) or len(set(encoding + field)) != len(encoding) + 1 or any(
        ch.isalnum() or ch in " \r\n" for ch in encoding + field
    )
    if problems:
        raise HL7MalformedError(
            f"MSH-1/MSH-2 delimiters {field!r} {encoding!r} are invalid: expected a field separator "
            "and 4 or 5 distinct, non-alphanumeric encoding characters such as |^~\\&"
        )
    return _Delims(field, chars[0], chars[1], chars[2], chars[3])


def _field_getter(fields: list[str], delims: _Delims, *, offset: int = 0):
    def get(number: int) -> str:
        index = number - offset
        return fields[index] if 0 <= index < len(fields) else ""

    return get


# ----------------------------------------------------------------------- escaping


def unescape(text: str, escape_char: str = "\\", delims: _Delims | None = None) -> str:
    """Undo HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\; formatting dropped)."""
    if not text or escape_char not in text:
        return text
    d = delims or _Delims("|", "^", "~", escape_char, "&")
    pattern = re.compile(re.escape(escape_char) + r"([^" + re.escape(escape_char) + r"]*)" + re.escape(escape_char))
    simple = {"F": d.field, "S": d.component, "T": d.subcomponent, "R": d.repetition, "E": d.escape, ".br": "\n"}

    def sub(match: re.Match[str]) -> str:
        code = match.group(1)
        if code in simple:
            return simple[code]
        if code[:1] == "X" and len(code) % 2 == 1:
            try:
                return bytes.fromhex(code[1:]).decode("latin-1")
            except ValueError:
                return match.group(0)
        return ""  # \H\ \N\ highlighting and \C..\ \M..\ charset switches carry no data here

    return pattern.sub(sub, text)


def escape(text: str, delims: str = "|^~\\&") -> str:
    """Escape HL7 delimiters in a text value (for writing)."""
    field, component, repetition, esc, sub = delims[0], delims[1], delims[2], delims[3], delims[4]
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((field, "F"), (component, "S"), (repetition, "R"), (sub, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}.br{esc}")


def _first_component(value: str, delims: _Delims) -> str | None:
    first = value.split(delims.repetition)[0].split(delims.component)[0]
    return unescape(first, delims.escape, delims).strip() or None


def _name(value: str, delims: _Delims) -> str | None:
    parts = value.split(delims.repetition)[0].split(delims.component)[:3]
    parts = [unescape(p, delims.escape, delims).strip() for p in parts]
    return "^".join(parts).rstrip("^") or None


def hl7_timestamp_to_iso(value: str) -> str | None:
    """``YYYYMMDD[HHMM[SS[.S]]][+ZZZZ]`` -> ISO 8601, or None when not a timestamp."""
    match = re.match(r"^\s*(\d{4})(\d{2})(\d{2})(?:(\d{2})(\d{2})(?:(\d{2})(\.\d+)?)?)?([+-]\d{4})?", value or "")
    if not match:
        return None
    year, month, day, hour, minute, second, fraction, zone = match.groups()
    iso = f"{year}-{month}-{day}"
    if hour:
        iso += f"T{hour}:{minute}" + (f":{second}{fraction or ''}" if second else "")
        if zone:
            iso += f"{zone[:3]}:{zone[3:]}"
    return iso


# ------------------------------------------------------------------- NA waveforms


def _lead_of(code: str, delims: _Delims) -> str | None:
    """OBX-3 (code^text^system) -> canonical lead, trying the code, then the text."""
    for part in code.split(delims.component)[:2]:
        lead = canonical_lead(part)
        if lead:
            return lead
    return None


def _is_rate_code(code: str, delims: _Delims) -> bool:
    parts = [p.strip().upper() for p in code.split(delims.component)[:2]]
    return any(p in _RATE_CODES for p in parts)


def _rate_value(fields: list[str], delims: _Delims, number: int) -> float:
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


def _volt_factor(units: str, delims: _Delims, lead: str, number: int) -> tuple[str, float]:
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
    delims: _Delims,
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
        device=_first_component(first[18], delims) if len(first) > 18 else None,
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


def _ed_record(ed_fields: list[tuple[list[str], int]], delims: _Delims) -> ECGRecord:
    from .dicom import read_dicom, with_source

    for fields, number in ed_fields:
        value = fields[5] if len(fields) > 5 else ""
        parts = value.split(delims.component)
        if len(parts) < 5:
            continue
        subtype = unescape(parts[2], delims.escape, delims).strip().lower()
        if subtype not in _DICOM_SUBTYPES:
            continue  # e.g. a PDF report next to the waveform
        encoding = parts[3].strip().lower()
        data = re.sub(r"\s+", "", unescape(parts[4], delims.escape, delims))
        try:
            if encoding in ("base64", "b64"):
                payload = base64.b64decode(data, validate=True)
            elif encoding == "hex":
                payload = bytes.fromhex(data)
            else:
                raise HL7UnsupportedError(
                    f"OBX segment {number}: ED encoding {parts[3]!r} is not supported; use Base64"
                )
        except (binascii.Error, ValueError) as exc:
            raise HL7MalformedError(
                f"OBX segment {number}: the ED payload is not valid {parts[3]} ({exc}); it may be truncated"
            ) from exc
        try:
            record = read_dicom(payload)
        except ECGFormatError as exc:
            wrapped = {
                "MalformedECGError": HL7MalformedError,
                "UnsupportedFormatError": HL7UnsupportedError,
                "BadWaveformError": HL7WaveformError,
            }.get(type(exc).__name__)
            if wrapped is None:
                raise
            raise wrapped(f"OBX segment {number}: the embedded DICOM ECG is unusable: {exc}") from exc
        return with_source(record, "hl7-ed")
    raise HL7UnsupportedError(
        "the ORU message has ED observations but none is a DICOM ECG "
        "(expected OBX-5 = ^application^DICOM^Base64^<data>)"
    )
