"""HL7 v2 acknowledgements: building ACK (AA / AE / AR) with an ERR segment, reading one back.

The incoming message's header comes from :func:`lasan.hl7.encoding.read_header` (read
once, by hand: hl7apy takes seconds to tokenise a waveform message, and a broken message
must still be answered). The ACK itself is built with hl7apy so its structure follows
the standard for the version the sender used. When the incoming MSH is too broken to echo (no MSH at all,
unusable encoding characters), a minimal hand-built ACK answers instead, so the sender
always learns why.

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
_HL7APY_VERSIONS = ("2.1", "2.2", "2.3", "2.3.1", "2.4", *_ERR3_VERSIONS)
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
    if header.charset and header.codec is not None:  # an unknown set is not echoed: the ACK is not in it
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
