"""HL7 v2 ORU reader (NA waveforms and ED-wrapped DICOM) under mutation of a valid message:
fields replaced by odd values (Unicode digits such as '²' in lead codes and numbers), segments
dropped or repeated, bytes flipped, the message truncated, the embedded DICOM corrupted."""

from __future__ import annotations

import base64
from functools import lru_cache

from contract import FUZZ, assert_contract
from dicom_mutations import attribute_mutation, dataset_mutation
from hypothesis import given
from hypothesis import strategies as st

from lasan.formats import read_ecg
from lasan.formats.sample import sample_ecg
from lasan.hl7.oru import build_oru

ODD = ["", "²", "13132²", "2:²", "5.6.3-9-²", "٣", "١٢٣", "1e400", "-1e-300", "1e-300", "nan", "inf", "0", "-5",
       "9" * 40, "^^^", "\\E\\", "~", "&", "Hz", "uV", "NA", "ED", "\x00", "MDC_ECG_LEAD_²", "500²", "1²^2"]


@lru_cache(maxsize=2)
def valid_message(style: str) -> bytes:
    record = sample_ecg(fs=250, duration_s=2.0, seed=2)
    return build_oru(record, style=style, control_id="FUZZ1")


def _segments(style: str) -> list[str]:
    return valid_message(style).decode("utf-8").split("\r")


@st.composite
def field_mutation(draw, style: str) -> bytes:
    segments = _segments(style)
    index = draw(st.integers(0, len(segments) - 1))
    action = draw(st.sampled_from(["field", "component", "drop", "repeat", "truncate", "obx"]))
    if action == "obx":  # the observation fields a reader interprets: OBX-2 type, -3 code, -5 value, -6 units
        index = draw(st.sampled_from([i for i, seg in enumerate(segments) if seg.startswith("OBX")]))
    fields = segments[index].split("|")
    if action in ("field", "component", "obx") and len(fields) > 1:
        at = draw(st.sampled_from([2, 3, 5, 6])) if action == "obx" else draw(st.integers(1, len(fields) - 1))
        at = min(at, len(fields) - 1)
        action = "component" if action == "obx" else action
        odd = draw(st.sampled_from(ODD) | st.text(max_size=12))
        if action == "field":
            fields[at] = odd
        else:
            parts = fields[at].split("^")
            parts[draw(st.integers(0, len(parts) - 1))] = odd
            fields[at] = "^".join(parts)
        segments[index] = "|".join(fields)
    elif action == "drop":
        del segments[index]
    elif action == "repeat":
        segments.insert(index, segments[index])
    else:
        segments[index] = segments[index][: draw(st.integers(0, len(segments[index])))]
    return "\r".join(segments).encode("utf-8", "surrogatepass")


UNICODE_DIGITS = "²³¹⁴٣١۲१৩０𝟙"  # str.isdigit() is true for all of them; int() takes only some


@st.composite
def lead_code_mutation(draw) -> bytes:
    """OBX-3 (the lead code) and OBX-5/-6 numbers with a Unicode digit put in or swapped for an ASCII one."""
    segments = _segments("na")
    index = draw(st.sampled_from([i for i, seg in enumerate(segments) if seg.startswith("OBX")]))
    fields = segments[index].split("|")
    at = draw(st.sampled_from([3, 5, 6]))
    text = fields[at]
    where = draw(st.integers(0, max(0, min(len(text), 40) - 1)))
    digit = draw(st.sampled_from(UNICODE_DIGITS))
    text = text[:where] + digit + text[where + draw(st.integers(0, 1)):]
    fields[at] = text
    segments[index] = "|".join(fields)
    return "\r".join(segments).encode("utf-8")


@st.composite
def byte_mutation(draw, style: str) -> bytes:
    data = bytearray(valid_message(style))
    for _ in range(draw(st.integers(1, 6))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@st.composite
def embedded_dicom_mutation(draw) -> bytes:
    """The ED message with its DICOM attachment corrupted like the DICOM harness does."""
    corrupt = draw(attribute_mutation() | dataset_mutation())
    segments = _segments("ed")
    for i, segment in enumerate(segments):
        fields = segment.split("|")
        if fields[0] == "OBX" and len(fields) > 5 and fields[2] == "ED":
            parts = fields[5].split("^")
            parts[4] = base64.b64encode(corrupt).decode("ascii")
            fields[5] = "^".join(parts)
            segments[i] = "|".join(fields)
    return "\r".join(segments).encode("utf-8")


def test_valid_messages_read() -> None:
    assert read_ecg(valid_message("na")).fs == 250
    assert read_ecg(valid_message("ed")).fs == 250


@FUZZ
@given(field_mutation("na"))
def test_hl7_na_fields(data: bytes) -> None:
    assert_contract("hl7-na", lambda: read_ecg(data, fmt="hl7"))


@FUZZ
@given(lead_code_mutation())
def test_hl7_na_unicode_digits(data: bytes) -> None:
    assert_contract("hl7-na-digits", lambda: read_ecg(data, fmt="hl7"))


@FUZZ
@given(byte_mutation("na"))
def test_hl7_na_bytes(data: bytes) -> None:
    assert_contract("hl7-na-bytes", lambda: read_ecg(data, fmt="hl7"))


@FUZZ
@given(field_mutation("ed"))
def test_hl7_ed_fields(data: bytes) -> None:
    assert_contract("hl7-ed", lambda: read_ecg(data, fmt="hl7"))


@FUZZ
@given(embedded_dicom_mutation())
def test_hl7_ed_embedded_dicom(data: bytes) -> None:
    assert_contract("hl7-ed-dicom", lambda: read_ecg(data, fmt="hl7"))
