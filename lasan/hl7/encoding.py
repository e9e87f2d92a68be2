"""HL7 v2 encoding: delimiters, the MSH header, character sets, bytes -> text, escaping.

The one place that reads an MSH segment. :func:`read_header` reads it from the raw bytes
(MSH is ASCII in every ASCII-compatible character set; UTF-16/32 are recognised by their
byte-order mark or ``M\\0S\\0H``), so the body is decoded exactly once, with the codec
MSH-18 names (:func:`decode_message`). An unknown MSH-18 raises
:class:`~lasan.errors.HL7CharsetError` here, for every caller: the listener, the watch
folder, ``lasan inspect`` and the worker all decode through this module.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from lasan.errors import HL7CharsetError, HL7DelimiterError, HL7HeaderError

__all__ = [
    "CHARSETS",
    "STANDARD_ENCODING",
    "Delimiters",
    "STANDARD",
    "MessageHeader",
    "DecodedMessage",
    "read_header",
    "decode_message",
    "read_message",
    "split_segments",
    "escape",
    "escape_hl7",
    "unescape",
    "first_component",
    "hl7_timestamp_to_iso",
]

# HL7 table 0211 (and the DICOM spellings some senders use) -> Python codec.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii", "ISO IR6": "ascii",
    "8859/1": "latin-1", "ISO IR100": "latin-1",
    **{f"8859/{n}": f"iso8859-{n}" for n in range(2, 10)},
    "8859/15": "iso8859-15",
    "UNICODE UTF-8": "utf-8", "ISO IR192": "utf-8", "UTF-8": "utf-8",
    # Table 0211's plain "UNICODE" (ISO/IEC 10646) is sent as UTF-8 in practice.
    "UNICODE": "utf-8",
    "UNICODE UTF-16": "utf-16", "UNICODE UTF-32": "utf-32",
    "GB 18030-2000": "gb18030", "KS X 1001": "euc_kr", "BIG-5": "big5",
    "ISO IR87": "iso2022_jp", "ISO IR14": "shift_jis", "ISO IR159": "iso2022_jp_2",
}
STANDARD_ENCODING = "^~\\&"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Byte-order marks and the unmarked "MSH" of the wide encodings -> codec, charset name.
_WIDE = (
    (b"\xff\xfe\x00\x00", "utf-32", "UNICODE UTF-32"), (b"\x00\x00\xfe\xff", "utf-32", "UNICODE UTF-32"),
    (b"M\0\0\0S\0\0\0", "utf-32-le", "UNICODE UTF-32"), (b"\0\0\0M\0\0\0S", "utf-32-be", "UNICODE UTF-32"),
    (b"\xff\xfe", "utf-16", "UNICODE UTF-16"), (b"\xfe\xff", "utf-16", "UNICODE UTF-16"),
    (b"M\0S\0H\0", "utf-16-le", "UNICODE UTF-16"), (b"\0M\0S\0H", "utf-16-be", "UNICODE UTF-16"),
)


@dataclass(frozen=True)
class Delimiters:
    """MSH-1 and MSH-2: the field separator and the encoding characters."""

    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @property
    def is_standard(self) -> bool:
        return (self.field, self.component, self.repetition, self.escape, self.subcomponent) == ("|", "^", "~", "\\", "&")


STANDARD = Delimiters()


@dataclass(frozen=True)
class MessageHeader:
    """The MSH segment, read once per message. None of its fields identify a patient."""

    delimiters: Delimiters
    encoding_characters: str  # MSH-2 as sent
    sending_application: str  # MSH-3, first component, unescaped
    sending_facility: str  # MSH-4
    receiving_application: str  # MSH-5
    receiving_facility: str  # MSH-6
    message_datetime: str  # MSH-7 as sent (HL7 TS)
    message_type: str  # MSH-9 as sent, e.g. "ORU^R01^ORU_R01"
    control_id: str  # MSH-10
    processing_id: str  # MSH-11, first component
    version: str  # MSH-12, first component
    charset: str  # MSH-18, first repetition, as sent ("" when absent)
    codec: str | None  # the Python codec for the body; None when MSH-18 names an unknown set

    @property
    def field_separator(self) -> str:
        return self.delimiters.field

    @property
    def message_code(self) -> str:
        """MSH-9.1 / MSH-9.2 as ``ORU^R01`` (standard component separator, upper case)."""
        parts = [p.strip().upper() for p in self.message_type.split(self.delimiters.component)[:2]]
        return "^".join(p for p in parts if p)

    @property
    def sender(self) -> str:
        """``MSH-3|MSH-4``: safe to log."""
        return f"{self.sending_application}|{self.sending_facility}"


@dataclass(frozen=True)
class DecodedMessage:
    """A message's text (framing stripped, decoded once) with its header."""

    header: MessageHeader
    text: str

    def segments(self) -> list[str]:
        return split_segments(self.text)


def split_segments(text: str) -> list[str]:
    """Segments of a message; CR is the terminator, LF and CRLF are tolerated."""
    return [seg for seg in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if seg]


def _no_msh(start: str) -> str:
    # Name only the segment id: the rest of a first line may be a PID with patient identifiers.
    seen = f"a {start[:3]} segment" if re.fullmatch(r"[A-Z][A-Z0-9]{2}", start[:3]) else "no segment id"
    return f"not an HL7 v2 message: it must start with an MSH segment, but starts with {seen}"


def _wide(raw: bytes) -> tuple[str, str] | None:
    for mark, codec, name in _WIDE:
        if raw.startswith(mark):
            return codec, name
    return None


def _body(raw: bytes) -> bytes:
    """The bytes between optional MLLP framing, whitespace and a UTF-8 byte-order mark."""
    body = raw.lstrip(b"\x0b \t\r\n")
    if body.startswith(b"\xef\xbb\xbf"):
        body = body[3:]
    return body.rstrip(b"\x1c \t\r\n")


def _strip_text(text: str) -> str:
    return text.lstrip("\x0b\ufeff \t\r\n").rstrip("\x1c \t\r\n")


def read_header(raw: bytes | str, *, default_charset: str = "utf-8") -> MessageHeader:
    """Read the MSH segment of a message (bytes as received, or text) without the rest.

    ``default_charset`` is the codec for a message whose MSH-18 is empty (Latin-1 is tried
    when the bytes are not valid in it: senders that leave MSH-18 empty often send it).

    Raises:
        HL7HeaderError: the message does not start with an MSH segment, or MSH is truncated.
        HL7DelimiterError: MSH-1/MSH-2 are not a usable field separator and encoding characters.
    """
    wide = None
    if isinstance(raw, bytes):
        wide = _wide(raw)
        if wide is not None:
            # Only the first line is decoded here; the body is decoded once, later.
            head = raw[:4096]
            head = head[: len(head) - len(head) % (4 if "32" in wide[0] else 2)]
            line = _strip_text(head.decode(wide[0], errors="replace"))
        else:
            line = _body(raw[:65536]).decode("latin-1")
    else:
        line = _strip_text(raw[:65536])
    msh = re.split(r"[\r\n]", line, maxsplit=1)[0]
    if not msh.startswith("MSH"):
        raise HL7HeaderError(_no_msh(msh[:3]))
    if len(msh) < 8:
        raise HL7HeaderError("the MSH segment is truncated: no encoding characters after 'MSH'")
    delims, encoding = _delimiters(msh)
    fields = msh.split(delims.field)

    def field(n: int) -> str:  # MSH-n; fields[0] is "MSH" and MSH-1 is the separator itself.
        return fields[n - 1] if len(fields) > n - 1 else ""

    charset = field(18).split(delims.repetition)[0].strip()
    if wide is not None:
        codec: str | None = wide[0]
        charset = charset or wide[1]
    elif not charset:
        codec = default_charset
    else:
        codec = CHARSETS.get(charset.upper())
    return MessageHeader(
        delimiters=delims,
        encoding_characters=encoding,
        sending_application=first_component(field(3), delims) or "",
        sending_facility=first_component(field(4), delims) or "",
        receiving_application=first_component(field(5), delims) or "",
        receiving_facility=first_component(field(6), delims) or "",
        message_datetime=field(7).strip(),
        message_type=field(9),
        control_id=field(10).strip(),
        processing_id=first_component(field(11), delims) or "",
        version=first_component(field(12), delims) or "",
        charset=charset,
        codec=codec,
    )


def _delimiters(msh: str) -> tuple[Delimiters, str]:
    field = msh[3]
    encoding = msh[4:].split(field, 1)[0]
    problems = len(encoding) not in (4, 5) or len(set(encoding + field)) != len(encoding) + 1 or any(
        ch.isalnum() or ch.isspace() for ch in encoding + field
    )
    if problems:
        raise HL7DelimiterError(
            f"MSH-1/MSH-2 delimiters {field!r} {encoding!r} are invalid: expected a field separator "
            "and 4 or 5 distinct, non-alphanumeric encoding characters such as |^~\\&"
        )
    return Delimiters(field, encoding[0], encoding[1], encoding[2], encoding[3]), encoding


def decode_message(raw: bytes, header: MessageHeader) -> str:
    """The message text: ``raw`` decoded once with the codec MSH-18 names, framing stripped.

    Raises:
        HL7CharsetError: MSH-18 names a character set LASAN does not know, or the bytes are
            not valid in it.
    """
    if header.codec is None:
        raise HL7CharsetError(
            f"MSH-18 names the character set {header.charset!r}, which LASAN does not know; "
            f"use one of: {', '.join(sorted(CHARSETS))}"
        )
    if _wide(raw) is not None:
        try:
            return _strip_text(raw.decode(header.codec))
        except UnicodeDecodeError as exc:
            raise HL7CharsetError(
                f"the HL7 message looks like {header.charset} but does not decode ({exc.reason} at byte "
                f"{exc.start}); fix the sender's encoding"
            ) from exc
    body = _body(raw)
    try:
        return body.decode(header.codec)
    except UnicodeDecodeError as exc:
        if not header.charset:
            return body.decode("latin-1")  # no MSH-18 and not the default: Latin-1 decodes anything
        raise HL7CharsetError(
            f"the HL7 message declares character set {header.charset!r} in MSH-18 but byte {exc.start} "
            f"({body[exc.start:exc.start + 1]!r}) is not valid in it; fix MSH-18 at the sender"
        ) from exc


def read_message(raw: bytes | str, *, default_charset: str = "utf-8") -> DecodedMessage:
    """Header and text of a message in one call (:func:`read_header` then :func:`decode_message`).

    Raises:
        HL7HeaderError, HL7DelimiterError, HL7CharsetError: as those functions.
    """
    header = read_header(raw, default_charset=default_charset)
    text = decode_message(raw, header) if isinstance(raw, bytes) else _strip_text(raw)
    return DecodedMessage(header, text)


# ----------------------------------------------------------------------- escaping


def unescape(text: str, delims: Delimiters = STANDARD) -> str:
    """Undo HL7 escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\; formatting dropped)."""
    esc = delims.escape
    if not text or esc not in text:
        return text
    pattern = re.compile(re.escape(esc) + r"([^" + re.escape(esc) + r"]*)" + re.escape(esc))
    simple = {"F": delims.field, "S": delims.component, "T": delims.subcomponent, "R": delims.repetition,
              "E": esc, ".br": "\n"}

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


def escape(text: str, delims: Delimiters = STANDARD) -> str:
    """Escape HL7 delimiters in a text value, keeping line breaks as ``\\X0D\\`` / ``\\.br\\``."""
    esc = delims.escape
    out = text.replace(esc, f"{esc}E{esc}")
    for char, code in ((delims.field, "F"), (delims.component, "S"), (delims.repetition, "R"),
                       (delims.subcomponent, "T")):
        out = out.replace(char, f"{esc}{code}{esc}")
    return out.replace("\r", f"{esc}X0D{esc}").replace("\n", f"{esc}.br{esc}")


def escape_hl7(value: str) -> str:
    """Escape free text for a one-line field (standard delimiters); control characters become spaces."""
    value = value.replace("\\", "\\E\\")
    for char, esc in (("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\")):
        value = value.replace(char, esc)
    return _CONTROL.sub(" ", value)


def first_component(value: str, delims: Delimiters = STANDARD) -> str | None:
    """The first component of the first repetition, unescaped and stripped (None when empty)."""
    first = value.split(delims.repetition)[0].split(delims.component)[0]
    return unescape(first, delims).strip() or None


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
