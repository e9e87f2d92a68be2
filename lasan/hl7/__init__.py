"""HL7 v2 for ECGs: encoding and the header, the ORU reader and writer, ACKs, result messages.

* :mod:`lasan.hl7.encoding`: delimiters, the one MSH reader, character sets, bytes -> text, escaping.
* :mod:`lasan.hl7.oru`: the ECG ORU^R01 reader (header + order context + record, read once) and writer.
* :mod:`lasan.hl7.ack`: acknowledgements (AA / AE / AR with ERR), built and read.
* :mod:`lasan.hl7.result`: the ORU^R01 result message that carries a score back.

MLLP framing is not HL7 and lives in :mod:`lasan.integration.mllp`.
"""

from __future__ import annotations

from lasan.hl7.encoding import (
    CHARSETS,
    DecodedMessage,
    Delimiters,
    MessageHeader,
    decode_message,
    escape,
    hl7_timestamp_to_iso,
    read_header,
    read_message,
    unescape,
)
from lasan.hl7.oru import HL7ECGMessage, OrderContext, build_oru, parse_oru, read_hl7

__all__ = [
    "CHARSETS",
    "DecodedMessage",
    "Delimiters",
    "MessageHeader",
    "HL7ECGMessage",
    "OrderContext",
    "build_oru",
    "decode_message",
    "escape",
    "hl7_timestamp_to_iso",
    "parse_oru",
    "read_header",
    "read_hl7",
    "read_message",
    "unescape",
]
