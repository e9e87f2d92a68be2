"""Mutations of a valid DICOM ECG written by our writer, shared by the DICOM and HL7 ED harnesses:
bytes flipped and truncated, and (more useful) waveform attributes deleted, given odd values or a wrong VR."""

from __future__ import annotations

import io
from functools import lru_cache

from hypothesis import strategies as st

from lasan.formats.dicom import record_to_dataset
from lasan.formats.sample import sample_ecg

__all__ = ["attribute_mutation", "byte_mutation", "dataset_mutation", "valid_bytes"]

GROUP_ATTRS = ("SamplingFrequency", "NumberOfWaveformSamples", "NumberOfWaveformChannels", "WaveformBitsAllocated",
               "WaveformSampleInterpretation", "WaveformData", "ChannelDefinitionSequence", "MultiplexGroupLabel",
               "WaveformPaddingValue")
CHANNEL_ATTRS = ("ChannelSensitivity", "ChannelSensitivityCorrectionFactor", "ChannelBaseline",
                 "ChannelSensitivityUnitsSequence", "ChannelSourceSequence", "FilterLowFrequency", "ChannelLabel")
TOP_ATTRS = ("SOPClassUID", "WaveformSequence", "AcquisitionDateTime", "ContentDate", "PatientName")
ODD_TEXT = ["", " ", "abc", "1e-300", "1e400", "nan", "inf", "-5", "0", "²", "٣", "1\\2", "9" * 30, "-0", "0x10",
            "\x00", "500 Hz"]
VRS = ["DS", "IS", "US", "UL", "SS", "FD", "FL", "OB", "OW", "UN", "SQ", "LO", "CS", "AT", "ZZ", "XX", "OD"]


@lru_cache(maxsize=1)
def valid_bytes() -> bytes:
    ds = record_to_dataset(sample_ecg(fs=250, duration_s=2.0, seed=1), uid_key="fuzz")
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _tag_offsets(data: bytes, keyword: str) -> list[int]:
    from pydicom.datadict import tag_for_keyword

    tag = tag_for_keyword(keyword)
    assert tag is not None
    needle = (tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little")
    found, start = [], 0
    while (at := data.find(needle, start)) >= 0:
        found.append(at)
        start = at + 1
    return found


@st.composite
def attribute_mutation(draw) -> bytes:
    """An explicit-VR element of interest, edited in the file bytes: its VR, its length or its value."""
    data = bytearray(valid_bytes())
    keyword = draw(st.sampled_from(GROUP_ATTRS + CHANNEL_ATTRS + TOP_ATTRS))
    offsets = _tag_offsets(bytes(data), keyword)
    if not offsets:
        return bytes(data)
    at = draw(st.sampled_from(offsets))
    action = draw(st.sampled_from(["vr", "length", "value", "truncate_after"]))
    if action == "vr":
        data[at + 4:at + 6] = draw(st.sampled_from(VRS)).encode()
    elif action == "length":
        long_vr = bytes(data[at + 4:at + 6]) in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"OD", b"OF", b"UC", b"UR")
        if long_vr:
            data[at + 8:at + 12] = draw(st.integers(0, 2**32 - 1)).to_bytes(4, "little")
        else:
            data[at + 6:at + 8] = draw(st.integers(0, 2**16 - 1)).to_bytes(2, "little")
    elif action == "value":
        length = int.from_bytes(data[at + 6:at + 8], "little")
        text = draw(st.sampled_from(ODD_TEXT)).encode("utf-8")
        if bytes(data[at + 4:at + 6]) in (b"US", b"UL", b"SS"):
            text = draw(st.binary(min_size=length, max_size=length))
        value = (text + b" " * length)[:length]
        data[at + 8:at + 8 + length] = value
    else:
        data = data[: at + draw(st.integers(0, 16))]
    return bytes(data)


@st.composite
def dataset_mutation(draw) -> bytes:
    """The writer's dataset with a waveform attribute deleted or set to an odd value (as text, so
    pydicom writes it raw and decodes it only when the reader asks)."""
    from pydicom import config
    from pydicom.dataelem import RawDataElement

    ds = record_to_dataset(sample_ecg(fs=250, duration_s=2.0, seed=1), uid_key="fuzz")
    group = ds.WaveformSequence[0]
    channel = group.ChannelDefinitionSequence[draw(st.integers(0, 11))]
    target = draw(st.sampled_from(["group", "channel"]))
    item, names = (group, GROUP_ATTRS) if target == "group" else (channel, CHANNEL_ATTRS)
    keyword = draw(st.sampled_from(names))
    if draw(st.booleans()):
        if keyword in item:
            delattr(item, keyword)
    else:
        from pydicom.datadict import dictionary_VR, tag_for_keyword

        tag = tag_for_keyword(keyword)
        vr = draw(st.sampled_from([dictionary_VR(tag), "UN", "OB", "LO", "DS", "IS"]))
        raw = draw(st.sampled_from(ODD_TEXT)).encode("utf-8")
        if vr not in ("OB", "UN") and len(raw) % 2:
            raw += b" "
        # A raw element is written as given and decoded only when the reader touches it, like a
        # corrupt value in a received file.
        item[tag] = RawDataElement(tag, vr, len(raw), raw, 0, True, True)
    buffer = io.BytesIO()
    old = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(buffer, enforce_file_format=True)
    except Exception:  # noqa: BLE001 - pydicom refused to write this mutation: try the valid file
        return valid_bytes()
    finally:
        config.settings.writing_validation_mode = old
    return buffer.getvalue()


@st.composite
def byte_mutation(draw) -> bytes:
    data = bytearray(valid_bytes())
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(128, len(data) - 1))
        data[at] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(132, len(data)))]
    return bytes(data)
