"""One header reader and one bytes -> text step for every caller (MSH-18 character sets)."""

from __future__ import annotations

import pytest

from lasan.errors import HL7CharsetError
from lasan.hl7.encoding import Delimiters, decode_message, escape, read_header, read_message, unescape

MSG = b"MSH|^~\\&|CART|WARD|LASAN||20240101||ORU^R01|C1|P|2.5.1\rPID|1\r"


def test_msh18_character_sets():
    latin = "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|C1|P|2.5.1||||||8859/1\rPID|1||||Müller\r".encode("latin-1")
    assert read_header(latin).codec == "latin-1"
    assert read_message(latin).text.endswith("Müller")
    utf8 = "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|C1|P|2.5.1||||||UNICODE UTF-8\rPID|1||||Jürgen\r".encode()
    assert read_header(utf8).codec == "utf-8" and "Jürgen" in read_message(utf8).text
    assert read_header(MSG, default_charset="latin-1").codec == "latin-1"  # no MSH-18: the configured default
    with pytest.raises(HL7CharsetError, match="MSH-18"):
        read_message(latin.replace(b"8859/1", b"UNICODE UTF-8"))


def test_no_msh18_falls_back_to_latin1_when_not_the_default():
    raw = "MSH|^~\\&|A|B|C|D|20240101||ORU^R01|C1|P|2.5.1\rPID|1||||Müller\r".encode("latin-1")
    assert read_message(raw).text.endswith("Müller")


@pytest.mark.parametrize(("name", "codec"), [("ISO IR14", "shift_jis"), ("UNICODE UTF-16", "utf-16"),
                                              ("UNICODE UTF-32", "utf-32"), ("ISO IR100", "latin-1")])
def test_the_charsets_inspect_reads_are_the_ones_the_listener_decodes(name, codec):
    text = f"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|C1|P|2.5.1||||||{name}\rPID|1||||ﾔﾏﾀﾞ\r"
    if codec == "latin-1":
        text = text.replace("ﾔﾏﾀﾞ", "Müller")
    message = read_message(text.encode(codec))
    assert message.header.control_id == "C1" and message.text.startswith("MSH|") and message.header.charset == name


def test_unknown_charset_is_read_in_the_header_and_refused_on_decode():
    raw = MSG.replace(b"|2.5.1\r", b"|2.5.1||||||KLINGON\r")
    header = read_header(raw)  # the ACK can still echo MSH-10
    assert header.control_id == "C1" and header.codec is None
    with pytest.raises(HL7CharsetError, match="KLINGON"):
        decode_message(raw, header)


def test_escape_round_trip_with_custom_delimiters():
    d = Delimiters("#", "$", "~", "\\", "&")
    assert unescape(escape("a#b$c\\d", d), d) == "a#b$c\\d"
