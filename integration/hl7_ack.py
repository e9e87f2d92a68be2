"""HL7 v2 acknowledgements: reading MSH, building ACK (AA / AE / AR) with an ERR segment.

Only the MSH segment of an incoming message is looked at here, by hand: hl7apy takes
seconds to tokenise a waveform message, and a broken message must still be answered.
The ACK itself is built with hl7apy so its structure follows the standard for the
version the sender used. When the incoming MSH is too broken to echo (no MSH at all,
unusable encoding characters), a minimal hand-built ACK answers instead, so the sender
always learns why.

Error codes come from HL7 table 0357 (message error condition codes).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from lasan.errors import HL7MessageError

__all__ = [
    "AA",
    "AE",
    "AR",
    "ERROR_CODES",
    "MessageHeader",
    "AckInfo",
    "read_msh",
    "build_ack",
    "parse_ack",
    "escape_hl7",
]

AA, AE, AR = "AA", "AE", "AR"

# HL7 table 0357: the codes this listener uses.
ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "207": "Application internal error",
}
_ERR3_VERSIONS = ("2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
_HL7APY_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", *_ERR3_VERSIONS)
_DEFAULT_VERSION = "2.5.1"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass(frozen=True)
class MessageHeader:
    """The MSH fields the listener needs. None of them identify a patient."""

    field_separator: str
    encoding_characters: str
    sending_application: str
    sending_facility: str
    receiving_application: str
    receiving_facility: str
    message_type: str  # e.g. "ORU^R01^ORU_R01"
    control_id: str  # MSH-10
    processing_id: str
    version: str
    charset: str  # MSH-18, as sent

    @property
    def message_code(self) -> str:
        """MSH-9.1 / MSH-9.2 as ``ORU^R01``."""
        parts = self.message_type.split(self.encoding_characters[0]) if self.encoding_characters else [""]
        return "^".join(p for p in parts[:2] if p)


@dataclass(frozen=True)
class AckInfo:
    """A parsed acknowledgement."""

    code: str  # MSA-1
    control_id: str  # MSA-2: the MSH-10 being acknowledged
    text: str  # MSA-3 or ERR-8, for humans
    ack_control_id: str  # the ACK's own MSH-10


def _component(value: str, enc: str) -> str:
    return value.split(enc[0])[0] if enc else value


def read_msh(text: str) -> MessageHeader:
    """Read the MSH segment of an HL7 v2 message without parsing the rest.

    Raises:
        HL7MessageError: no MSH segment first (``reject=True``, code 100), unusable encoding
            characters (``reject=True``, code 102) or no MSH-10 (code 101).
    """
    stripped = text.lstrip("\r\n")
    if not stripped.startswith("MSH") or len(stripped) < 8:
        raise HL7MessageError(
            "the message does not start with an MSH segment; every HL7 v2 message must begin with MSH",
            hl7_error_code="100",
            reject=True,
        )
    msh = re.split(r"[\r\n]", stripped, maxsplit=1)[0]
    sep = msh[3]
    fields = msh.split(sep)
    enc = fields[1] if len(fields) > 1 else ""
    if (
        sep.isalnum()
        or sep.isspace()
        or len(enc) not in (4, 5)
        or len(set(enc)) != len(enc)
        or sep in enc
        or any(c.isalnum() or c.isspace() for c in enc)
    ):
        raise HL7MessageError(
            f"MSH-1/MSH-2 encoding characters {sep + enc!r} are not usable; send the standard '|^~\\&'",
            hl7_error_code="102",
            reject=True,
        )

    def field(n: int) -> str:  # MSH-n; fields[0] is "MSH" and MSH-1 is the separator itself.
        return fields[n - 1] if len(fields) > n - 1 else ""

    header = MessageHeader(
        field_separator=sep,
        encoding_characters=enc,
        sending_application=_component(field(3), enc),
        sending_facility=_component(field(4), enc),
        receiving_application=_component(field(5), enc),
        receiving_facility=_component(field(6), enc),
        message_type=field(9),
        control_id=field(10).strip(),
        processing_id=_component(field(11), enc),
        version=_component(field(12), enc).strip(),
        charset=field(18).split(enc[1])[0] if len(enc) > 1 else field(18),
    )
    if not header.control_id:
        raise HL7MessageError(
            "MSH-10 (message control ID) is empty; the sender must give each message a unique control ID",
            hl7_error_code="101",
        )
    return header


def escape_hl7(value: str) -> str:
    """Escape HL7 delimiters in free text (standard ``|^~\\&``) and drop control characters."""
    value = value.replace("\\", "\\E\\")
    for char, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        value = value.replace(char, esc)
    return _CONTROL.sub(" ", value)


def _timestamp(now: datetime | None) -> str:
    return (now or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")


def _ack_control_id() -> str:
    return "ACK" + uuid.uuid4().hex[:17].upper()  # MSH-10 is ST(20) in v2.5


def build_ack(
    header: MessageHeader | None,
    code: str,
    *,
    error_code: str | None = None,
    reason: str | None = None,
    application: str = "LASAN",
    facility: str = "",
    now: datetime | None = None,
) -> str:
    """An original-mode ACK for ``header`` (None when the MSH could not be read).

    ``reason`` is free text for the sending system's operators; it goes into MSA-3 and
    ERR-8 (ERR-1 before v2.5) and must not contain patient data. AE/AR always carry an
    ERR segment (``error_code`` from HL7 table 0357, default 207). Segments end with CR.
    """
    if code not in (AA, AE, AR):
        raise HL7MessageError(f"ACK code must be AA, AE or AR, not {code!r}")
    if code != AA and not error_code:
        error_code = "207"
    if header is None:
        return _minimal_ack(code, "", error_code, reason, application, facility, now)
    try:
        return _hl7apy_ack(header, code, error_code, reason, application, facility, now)
    except Exception:  # noqa: BLE001 - any hl7apy refusal (odd field values) falls back to a hand-built ACK
        return _minimal_ack(code, header.control_id, error_code, reason, application, facility, now, header)


def _hl7apy_ack(
    header: MessageHeader,
    code: str,
    error_code: str | None,
    reason: str | None,
    application: str,
    facility: str,
    now: datetime | None,
) -> str:
    from hl7apy.core import Message  # imported lazily: hl7apy loads its tables on first use

    version = header.version if header.version in _HL7APY_VERSIONS else _DEFAULT_VERSION
    msg = Message("ACK", version=version)
    msh = msg.msh
    msh.msh_3 = escape_hl7(application)
    if facility:
        msh.msh_4 = escape_hl7(facility)
    if header.sending_application:
        msh.msh_5 = escape_hl7(header.sending_application)
    if header.sending_facility:
        msh.msh_6 = escape_hl7(header.sending_facility)
    msh.msh_7 = _timestamp(now)
    trigger = header.message_code.split("^")[1] if "^" in header.message_code else ""
    msh.msh_9 = f"ACK^{escape_hl7(trigger)}^ACK" if trigger and version in _ERR3_VERSIONS else (
        f"ACK^{escape_hl7(trigger)}" if trigger else "ACK"
    )
    msh.msh_10 = _ack_control_id()
    msh.msh_11 = escape_hl7(header.processing_id or "P")
    if header.charset:
        msh.msh_18 = escape_hl7(header.charset)
    msa = msg.add_segment("MSA")
    msa.msa_1 = code
    msa.msa_2 = escape_hl7(header.control_id)
    if reason:
        msa.msa_3 = escape_hl7(reason)[:80]
    if code != AA:
        err = msg.add_segment("ERR")
        meaning = ERROR_CODES.get(error_code or "207", "Application error")
        if version in _ERR3_VERSIONS:
            err.err_3 = f"{error_code}^{meaning}^HL70357"
            err.err_4 = "E"
            if reason:
                err.err_8 = escape_hl7(reason)
        else:
            err.err_1 = f"^^^{error_code}&{meaning}&HL70357"
    return msg.to_er7() + "\r"


def _minimal_ack(
    code: str,
    control_id: str,
    error_code: str | None,
    reason: str | None,
    application: str,
    facility: str,
    now: datetime | None,
    header: MessageHeader | None = None,
) -> str:
    send_app = escape_hl7(header.sending_application) if header else ""
    send_fac = escape_hl7(header.sending_facility) if header else ""
    text = escape_hl7(reason or "")
    segments = [
        f"MSH|^~\\&|{escape_hl7(application)}|{escape_hl7(facility)}|{send_app}|{send_fac}|{_timestamp(now)}||"
        f"ACK|{_ack_control_id()}|P|{_DEFAULT_VERSION}",
        f"MSA|{code}|{escape_hl7(control_id)}|{text[:80]}",
    ]
    if code != AA:
        meaning = ERROR_CODES.get(error_code or "207", "Application error")
        segments.append(f"ERR|||{error_code}^{meaning}^HL70357|E||||{text}")
    return "\r".join(segments) + "\r"


def _unescape(value: str) -> str:
    for char, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"), ("\\", "\\E\\")):
        value = value.replace(esc, char)
    return value


def parse_ack(text: str) -> AckInfo:
    """Read MSA (and ERR-8 / MSA-3) from an acknowledgement.

    Raises:
        HL7MessageError: the text is not an HL7 ACK (no MSH or no MSA).
    """
    header = read_msh(text)
    sep = header.field_separator
    code = control = message = ""
    found = False
    for segment in re.split(r"[\r\n]+", text):
        fields = segment.split(sep)
        if fields[0] == "MSA":
            found = True
            code = fields[1] if len(fields) > 1 else ""
            control = fields[2] if len(fields) > 2 else ""
            message = fields[3] if len(fields) > 3 else ""
        elif fields[0] == "ERR" and len(fields) > 8 and fields[8]:
            message = fields[8]
    if not found:
        raise HL7MessageError("the reply has no MSA segment; it is not an HL7 acknowledgement")
    return AckInfo(code=code, control_id=_unescape(control), text=_unescape(message), ack_control_id=header.control_id)
