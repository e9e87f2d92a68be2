"""Every fuzz finding, kept as a named regression test: each input once made a reader raise
something other than a LasanError (so the listener answered AE 207 "internal error" and the
DICOM receiver 0xC211 instead of a reason). Now each is a typed error that says what is wrong."""

from __future__ import annotations

import base64
import io

import pytest
from dicom_mutations import valid_bytes
from pydicom import dcmread
from pydicom.datadict import tag_for_keyword
from pydicom.dataelem import RawDataElement

from lasan.errors import ECGFormatError, HL7MalformedError, MalformedECGError, protocol_answer
from lasan.formats import read_ecg
from lasan.formats.dicom import dataset_to_record
from lasan.formats.sample import sample_ecg
from lasan.hl7.oru import build_oru
from lasan.leads import canonical_lead


def _with_raw(keyword: str, vr: str, value: bytes, *, in_channel: bool = False) -> bytes:
    """The valid DICOM ECG with one waveform attribute replaced by raw, undecoded bytes."""
    ds = dcmread(io.BytesIO(valid_bytes()))
    group = ds.WaveformSequence[0]
    item = group.ChannelDefinitionSequence[0] if in_channel else group
    tag = tag_for_keyword(keyword)
    item[tag] = RawDataElement(tag, vr, len(value), value, 0, True, True)
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    return out.getvalue()


def _with_vr_bytes(keyword: str, vr: bytes) -> bytes:
    """The valid file with the two VR bytes of ``keyword``'s element overwritten (e.g. not a VR at all)."""
    data = bytearray(valid_bytes())
    tag = tag_for_keyword(keyword)
    at = data.find((tag >> 16).to_bytes(2, "little") + (tag & 0xFFFF).to_bytes(2, "little"))
    data[at + 4:at + 6] = vr
    return bytes(data)


def _not_internal(exc: BaseException) -> None:
    assert isinstance(exc, ECGFormatError)
    assert protocol_answer(exc).hl7_error_code != protocol_answer(RuntimeError()).hl7_error_code


def test_dicom_unknown_vr_in_a_waveform_attribute_is_malformed() -> None:
    # pydicom: NotImplementedError("Unknown Value Representation") on first access, after dcmread.
    for keyword in ("SamplingFrequency", "MultiplexGroupLabel", "NumberOfWaveformSamples"):
        with pytest.raises(MalformedECGError, match="corrupt or wrongly typed") as info:
            read_ecg(_with_vr_bytes(keyword, b"S\x00"), fmt="dicom")
        _not_internal(info.value)


def test_dicom_sampling_frequency_not_a_number_is_malformed() -> None:
    # ValueError from DS("abc") raised while building the record, outside the old try block.
    with pytest.raises(MalformedECGError):
        read_ecg(_with_raw("SamplingFrequency", "DS", b"abc "), fmt="dicom")


def test_dicom_multivalued_sampling_frequency_is_malformed() -> None:
    # TypeError: float() of a MultiValue.
    with pytest.raises(MalformedECGError):
        read_ecg(_with_raw("SamplingFrequency", "DS", b"250\\500 "), fmt="dicom")


def test_dicom_empty_sampling_frequency_is_malformed() -> None:
    # TypeError: float(None) for an empty DS.
    with pytest.raises(MalformedECGError):
        read_ecg(_with_raw("SamplingFrequency", "DS", b""), fmt="dicom")


def test_dicom_channel_sensitivity_not_a_number_is_malformed() -> None:
    with pytest.raises(MalformedECGError):
        read_ecg(_with_raw("ChannelSensitivity", "DS", b"abc ", in_channel=True), fmt="dicom")


def test_dicom_zero_channels_is_malformed() -> None:
    with pytest.raises(MalformedECGError, match="at least 1"):
        read_ecg(_with_raw("NumberOfWaveformChannels", "US", b"\x00\x00"), fmt="dicom")


def test_dicom_sequence_with_a_non_sequence_vr_is_malformed() -> None:
    # TypeError("Sequence contents must be 'Dataset' instances") from a retyped sequence.
    with pytest.raises(MalformedECGError):
        read_ecg(_with_raw("ChannelSensitivityUnitsSequence", "OB", b"ab", in_channel=True), fmt="dicom")


def test_dicom_dataset_from_the_network_takes_the_same_boundary() -> None:
    # The DICOM receiver hands a Dataset (never bytes) to dataset_to_record.
    ds = dcmread(io.BytesIO(_with_vr_bytes("SamplingFrequency", b"S\x00")))
    with pytest.raises(MalformedECGError):
        dataset_to_record(ds)


def test_hl7_ed_attachment_with_a_corrupt_dicom_is_hl7_malformed() -> None:
    message = build_oru(sample_ecg(fs=250, duration_s=2.0, seed=2), style="ed", control_id="F1").decode()
    good = base64.b64encode(valid_bytes()).decode()
    start = message.index("^Base64^") + len("^Base64^")
    end = message.index("|", start) if "|" in message[start:] else len(message)
    corrupt = base64.b64encode(_with_vr_bytes("SamplingFrequency", b"S\x00")).decode()
    assert len(good) > 0
    message = message[:start] + corrupt + message[end:]
    with pytest.raises(HL7MalformedError, match="corrupt or wrongly typed") as info:
        read_ecg(message.encode(), fmt="hl7")
    _not_internal(info.value)


@pytest.mark.parametrize("code", ["13132²", "2:²", "5.6.3-9-²", "²"])
def test_lead_code_with_a_superscript_digit_is_not_a_lead(code: str) -> None:
    # str.isdigit() is true for '²' and int() then raised a bare ValueError.
    assert canonical_lead(code) is None


def test_hl7_na_lead_code_with_a_superscript_digit_reads_or_is_refused() -> None:
    message = build_oru(sample_ecg(fs=250, duration_s=2.0, seed=2), style="na", control_id="F2").decode()
    message = message.replace("131329", "13132²", 1)  # lead I's MDC code
    assert "13132²" in message
    record = read_ecg(message.encode("utf-8"), fmt="hl7")  # lead I is then derived from II and III
    assert "I" in record.leads


def test_dicom_value_of_the_wrong_length_for_its_vr_is_malformed() -> None:
    # pydicom's BytesLengthException: 4 bytes where FD needs a multiple of 8.
    with pytest.raises(MalformedECGError):
        read_ecg(_with_raw("SamplingFrequency", "FD", b"250 "), fmt="dicom")
