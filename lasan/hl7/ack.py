"""HL7 v2 acknowledgements: building ACK (AA / AE / AR) with an ERR segment, reading one back.

The incoming message's header comes from :func:`lasan.hl7.encoding.read_header` (read
once, by hand: hl7apy takes seconds to tokenise a waveform message, and a broken message
must still be answered). The ACK is built by hand too, in the sender's HL7 version
(ERR-3/4/8 from v2.5, ERR-1 before); the tests validate its structure with hl7apy, which
is otherwise not used at run time. When the incoming MSH is too broken to echo (no MSH at
all, unusable encoding characters), the ACK has an empty MSA-2, so the sender still learns
why.

Error codes come from HL7 table 0357 (message error condition codes).
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from lasan.errors import HL7MessageError, LasanError
from lasan.hl7.encoding import MessageHeader, escape_hl7, read_message

__all__ = [
    "AA",
    "AE",
    "AR",
    "ERROR_CODES",
    "AckInfo",
    "build_ack",
    "parse_ack",
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
_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", *_ERR3_VERSIONS)
_MSA3_WITHDRAWN = ("2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
_DEFAULT_VERSION = "2.5.1"


@dataclass(frozen=True)
class AckInfo:
    """A parsed acknowledgement."""

    code: str  # MSA-1
    control_id: str  # MSA-2: the MSH-10 being acknowledged
    text: str  # MSA-3 or ERR-8, for humans
    ack_control_id: str  # the ACK's own MSH-10


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

    ``reason`` is free text for the sending system's operators; it goes into MSA-3 (80
    characters; before v2.7, which withdrew it) and ERR-8 (v2.5 and later; before that
    ERR-1 carries only the code) and
    must not contain patient data. AE/AR always carry an ERR segment (``error_code`` from
    HL7 table 0357, default 207). The ACK is in the sender's HL7 version when LASAN knows
    it (else 2.5.1) and echoes MSH-18 when the sender's character set is known. Segments
    end with CR.

    Raises:
        HL7MessageError: ``code`` is not AA, AE or AR.
    """
    if code not in (AA, AE, AR):
        raise HL7MessageError(f"ACK code must be AA, AE or AR, not {code!r}")
    if code != AA and not error_code:
        error_code = "207"
    version = header.version if header is not None and header.version in _VERSIONS else _DEFAULT_VERSION
    code_parts = header.message_code.split("^") if header is not None else []
    trigger = escape_hl7(code_parts[1]) if len(code_parts) > 1 else ""
    message_type = ("ACK" if not trigger else f"ACK^{trigger}^ACK" if version in _ERR3_VERSIONS
                    else f"ACK^{trigger}")
    # An unknown character set is not echoed: the ACK is not encoded in it.
    charset = header.charset if header is not None and header.codec is not None else ""
    msh = [
        "MSH", "^~\\&", escape_hl7(application), escape_hl7(facility),
        escape_hl7(header.sending_application) if header else "", escape_hl7(header.sending_facility) if header else "",
        _timestamp(now), "", message_type, _ack_control_id(),
        escape_hl7((header.processing_id if header else "") or "P"), version, "", "", "", "", "", escape_hl7(charset),
    ]
    text = escape_hl7(reason) if reason else ""
    # MSA-3 is withdrawn from v2.7 on; ERR-8 carries the reason there (and from v2.5).
    msa3 = text[:80] if version not in _MSA3_WITHDRAWN else ""
    segments = [_fields(msh), _fields(["MSA", code, escape_hl7(header.control_id) if header else "", msa3])]
    if code != AA:
        meaning = ERROR_CODES.get(error_code or "207", "Application error")
        if version in _ERR3_VERSIONS:
            segments.append(_fields(["ERR", "", "", f"{error_code}^{meaning}^HL70357", "E", "", "", "", text]))
        else:
            segments.append(f"ERR|^^^{error_code}&{meaning}&HL70357")
    return "\r".join(segments) + "\r"


def _fields(fields: list[str]) -> str:
    """One segment, without trailing empty fields."""
    while fields and not fields[-1]:
        fields.pop()
    return "|".join(fields)


def _unescape(value: str) -> str:
    for char, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"), ("\\", "\\E\\")):
        value = value.replace(esc, char)
    return value


def parse_ack(reply: str | bytes) -> AckInfo:
    """Read MSA (and ERR-8 / MSA-3) from an acknowledgement (text, or bytes as received).

    Raises:
        HL7MessageError: the reply is not an HL7 ACK (no readable MSH, or no MSA).
    """
    try:
        message = read_message(reply)
    except LasanError as exc:
        raise HL7MessageError(f"the reply is not an HL7 message: {exc}") from exc
    header, text = message.header, message.text
    sep = header.field_separator
    code = control = note = ""
    found = False
    for segment in re.split(r"[\r\n]+", text):
        fields = segment.split(sep)
        if fields[0] == "MSA":
            found = True
            code = fields[1] if len(fields) > 1 else ""
            control = fields[2] if len(fields) > 2 else ""
            note = fields[3] if len(fields) > 3 else ""
        elif fields[0] == "ERR" and len(fields) > 8 and fields[8]:
            note = fields[8]
    if not found:
        raise HL7MessageError("the reply has no MSA segment; it is not an HL7 acknowledgement")
    return AckInfo(code=code, control_id=_unescape(control), text=_unescape(note), ack_control_id=header.control_id)
