"""HL7 v2 ORU ECGs: IHE PCD NA waveforms, ED-wrapped DICOM, delimiters, charsets, errors."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from lasan.errors import HL7CharsetError, HL7HeaderError, HL7MalformedError, HL7UnsupportedError, HL7WaveformError
from lasan.formats import read_ecg
from lasan.formats.dicom import dicom_bytes
from lasan.formats.sample import sample_ecg
from lasan.hl7 import build_oru, hl7_timestamp_to_iso, parse_oru, read_header, unescape
from lasan.leads import MODEL_LEADS, STANDARD_LEADS

I_SAMPLES = [0.1, 0.2, -0.3, 0.4, 0.5, 0.25]
II_SAMPLES = [1.0, 1.5, -1.25, 0.0, 0.75, 2.0]


def _pcd_message(*, eol: str = "\r", extra: str = "", units: str = "266418^MDC_DIM_MILLI_VOLT^MDC") -> str:
    """A hand-written IHE PCD-01 style message, laid out as real monitors send it."""

    def na(values):
        return "^".join(f"{v:g}" for v in values)

    segments = [
        "MSH|^~\\&|CART^0001^EUI-64|WARD7|LASAN|HOSP|20240305101500+0100||ORU^R01^ORU_R01|MSG00042|P|2.6|||AL|NE||8859/1",
        "PID|1||MRN123^^^HOSP^MR||M\\E\\ller^Hans^J||19600229|M",
        "OBR|1|PLC-9|FIL-7|11524-6^EKG study^LN|||20240305101000",
        "OBX|1|NA|131329^MDC_ECG_LEAD_I^MDC|1.1.1.1001|" + na(I_SAMPLES) + "|" + units + "|||||F",
        "OBX|2|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1001.1|500.0|264608^MDC_DIM_PER_SEC|||||F",
        "OBX|3|NR|0^MDC_ATTR_DATA_RANGE^MDC|1.1.1.1001.2|-5.0^10.0|266418^MDC_DIM_MILLI_VOLT^MDC|||||F",
        "OBX|4|NA|II^Lead II^L|1.1.1.1002|" + na(II_SAMPLES) + "|" + units + "|||||F",
        "OBX|5|NM|0^MDC_ATTR_SAMP_RATE^MDC|1.1.1.1002.1|500.0|Hz^Hz^UCUM|||||F",
        "OBX|6|NA|131400^MDC_ECG_LEAD_VX^MDC|1.1.1.1003|1^2^3^4^5^6|" + units + "|||||F",
    ]
    return eol.join(segments) + extra + eol


def test_pcd_style_na_message():
    msg = parse_oru(_pcd_message().encode("latin-1"))
    rec = msg.record
    assert rec.fs == 500.0 and rec.n_samples == 6
    assert rec.leads[:2] == ("I", "II") and set(rec.derived_leads) == {"III", "aVR", "aVL", "aVF"}
    np.testing.assert_allclose(rec.lead("I"), I_SAMPLES, atol=1e-6)
    np.testing.assert_allclose(rec.lead("II"), II_SAMPLES, atol=1e-6)
    np.testing.assert_allclose(rec.lead("III"), np.subtract(II_SAMPLES, I_SAMPLES), atol=1e-6)
    assert rec.acquisition.source_format == "hl7-na" and rec.acquisition.original_units == "mV"
    assert any("131400" in note or "MDC_ECG_LEAD_VX" in note for note in rec.acquisition.notes)
    head = msg.header
    assert (head.control_id, head.sending_application, head.sending_facility) == ("MSG00042", "CART", "WARD7")
    assert (head.receiving_application, head.receiving_facility) == ("LASAN", "HOSP")
    assert (head.message_code, head.version, head.processing_id) == ("ORU^R01", "2.6", "P")
    assert head.charset == "8859/1" and head.encoding_characters == "^~\\&"
    assert (msg.placer_order_number, msg.filler_order_number) == ("PLC-9", "FIL-7")
    assert msg.observation_datetime == "2024-03-05T10:10:00"
    assert hl7_timestamp_to_iso(head.message_datetime) == "2024-03-05T10:15:00+01:00"
    # The order context the result goes back to, read in the same pass.
    assert (msg.order.original_control_id, msg.order.placer_order, msg.order.filler_order) == ("MSG00042", "PLC-9", "FIL-7")
    assert msg.order.pid_segment is not None and msg.order.pid_segment.startswith("PID|")
    assert rec.patient.patient_id == "MRN123" and rec.patient.name == "M\\ller^Hans^J"
    assert rec.patient.birth_date == "19600229" and rec.patient.sex == "M"
    assert "MRN123" not in repr(msg) and "Hans" not in repr(msg)


@pytest.mark.parametrize("eol", ["\r", "\n", "\r\n"])
def test_segment_terminators_and_mllp_framing_are_tolerated(eol):
    raw = b"\x0b" + _pcd_message(eol=eol).encode("latin-1") + b"\x1c\r"
    np.testing.assert_allclose(parse_oru(raw).record.lead("II"), II_SAMPLES, atol=1e-6)
    np.testing.assert_allclose(parse_oru(raw.decode("latin-1")).record.lead("I"), I_SAMPLES, atol=1e-6)


@pytest.mark.parametrize("units", ["uV^microvolt^UCUM", "266419^MDC_DIM_MICRO_VOLT^MDC", "uV"])
def test_microvolt_units(units):
    rec = parse_oru(_pcd_message(units=units)).record
    np.testing.assert_allclose(rec.lead("I"), np.multiply(I_SAMPLES, 1e-3), atol=1e-9)
    assert rec.acquisition.original_units == "uV"


def test_custom_encoding_characters_from_msh():
    text = _pcd_message().replace("^", "$").replace("|", "#").replace("#$~\\&#", "#$~\\&#", 1)
    rec = parse_oru(text).record
    np.testing.assert_allclose(rec.lead("II"), II_SAMPLES, atol=1e-6)


def test_charsets_from_msh_18():
    latin = _pcd_message().replace("M\\E\\ller", "Müller")
    assert parse_oru(latin.encode("latin-1")).record.patient.name == "Müller^Hans^J"
    utf8 = latin.replace("8859/1", "UNICODE UTF-8").replace("Müller", "Åsa-Łucja")
    assert parse_oru(utf8.encode("utf-8")).record.patient.name == "Åsa-Łucja^Hans^J"
    with pytest.raises(HL7MalformedError, match="ASCII"):
        parse_oru(latin.replace("8859/1", "ASCII").encode("latin-1"))
    with pytest.raises(HL7CharsetError, match="KLINGON"):
        parse_oru(latin.replace("8859/1", "KLINGON").encode("latin-1"))
    utf16 = utf8.replace("UNICODE UTF-8", "UNICODE UTF-16")
    assert parse_oru(utf16.encode("utf-16")).record.patient.name == "Åsa-Łucja^Hans^J"
    assert parse_oru(utf16.encode("utf-16-le")).record.patient.name == "Åsa-Łucja^Hans^J"  # no BOM
    utf32 = utf8.replace("UNICODE UTF-8", "UNICODE UTF-32")
    assert parse_oru(utf32.encode("utf-32")).record.patient.name == "Åsa-Łucja^Hans^J"
    japanese = latin.replace("8859/1", "ISO IR14").replace("Müller", "ﾔﾏﾀﾞ")
    assert parse_oru(japanese.encode("shift_jis")).record.patient.name == "ﾔﾏﾀﾞ^Hans^J"


def test_one_header_reader_for_bytes_and_text():
    raw = _pcd_message().encode("latin-1")
    from_bytes, from_text = read_header(raw), read_header(raw.decode("latin-1"))
    assert from_bytes == from_text and from_bytes.codec == "latin-1" and from_bytes.sender == "CART|WARD7"
    assert read_header(_pcd_message().replace("8859/1", "KLINGON").encode()).codec is None  # raised on decode
    with pytest.raises(HL7HeaderError):
        read_header(b"PID|1||MRN123")


def test_builder_and_reader_agree_for_na_and_ed():
    rec = sample_ecg()
    for style in ("na", "ed"):
        raw = build_oru(rec, style=style, control_id="C-1", sending_application="CART", placer_order_number="P1")
        assert raw.startswith(b"MSH|^~\\&|CART|") and b"ORU^R01" in raw and raw.endswith(b"\r")
        msg = parse_oru(raw)
        assert msg.control_id == "C-1" and msg.placer_order_number == "P1" and msg.header.charset == "UNICODE UTF-8"
        assert msg.record.leads == STANDARD_LEADS and msg.record.fs == 500.0
        assert msg.record.acquisition.source_format == f"hl7-{style}"
        np.testing.assert_allclose(msg.record.signal, rec.signal, atol=0.5e-3 + 1e-6)
        assert msg.record.patient.name == "Testperson^Anna"
    mv = parse_oru(build_oru(rec, control_id="C-2", na_units="mV")).record
    np.testing.assert_allclose(mv.signal, rec.signal, atol=0.5e-4 + 1e-6)
    anonymous = parse_oru(build_oru(rec, control_id="C-3", include_patient=False)).record
    assert anonymous.patient.name is None and anonymous.patient.patient_id is None


def test_ed_with_escaped_line_breaks_and_lowercase_layout():
    rec = sample_ecg(duration_s=4.0)
    data = base64.b64encode(dicom_bytes(rec)).decode()
    wrapped = "\\X0D\\\\X0A\\".join(data[i : i + 76] for i in range(0, len(data), 76))
    text = (
        "MSH|^~\\&|CART||||20240101||ORU^R01|X9|P|2.5\r"
        "OBR|1|||ECG\r"
        "OBX|1|ED|PDF^report^L||^application^pdf^Base64^JVBERi0=||||||F\r"
        f"OBX|2|ED|ECG^12-lead^L||CART^Application^dicom^base64^{wrapped}||||||F\r"
    )
    back = parse_oru(text).record
    assert back.acquisition.source_format == "hl7-ed"
    np.testing.assert_allclose(back.signal, rec.signal, atol=0.5e-3 + 1e-6)


def test_empty_na_component_is_a_missing_sample():
    text = _pcd_message().replace("0.1^0.2^-0.3", "0.1^^-0.3")
    rec = parse_oru(text).record
    assert np.isnan(rec.lead("I")[1]) and np.isfinite(rec.lead("II")).all()


def test_integer_na_samples_fast_path_matches_the_strict_parse():
    # Integer uV counts take a numpy fast path; it must read exactly what a per-value parse
    # reads, and leave everything it does not accept to the strict path (NaN or an error).
    text = _pcd_message(units="uV").replace("131400^MDC_ECG_LEAD_VX^MDC|1.1.1.1003|1^2^3^4^5^6",
                                            "V1^Lead V1^L|1.1.1.1003|-12^+7^0^-0^40000^3")
    rec = parse_oru(text).record
    np.testing.assert_array_equal(rec.lead("V1") * 1000.0, [-12, 7, 0, 0, 40000, 3])
    missing = parse_oru(text.replace("-12^+7^0", "-12^^0")).record
    assert np.isnan(missing.lead("V1")[1])
    for bad in ("-12^-^0", "-12^7-1^0", "-12^--7^0", "-12^7a^0"):
        with pytest.raises(HL7WaveformError, match="not a number"):
            parse_oru(text.replace("-12^+7^0", bad))


def test_unescape_and_timestamps():
    assert unescape("a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f\\X41\\\\.br\\g\\H\\") == "a|b^c&d~e\\fA\ng"
    assert hl7_timestamp_to_iso("20240305101500.123-0500") == "2024-03-05T10:15:00.123-05:00"
    assert hl7_timestamp_to_iso("20240305") == "2024-03-05"
    assert hl7_timestamp_to_iso("garbage") is None


@pytest.mark.parametrize(
    ("mutate", "error", "match"),
    [
        (lambda m: m.split("\r", 1)[1], HL7MalformedError, "MSH"),
        (lambda m: m.replace("MSH|^~\\&|", "MSH|^^\\&|"), HL7MalformedError, "delimiters"),
        (lambda m: m.replace("ORU^R01^ORU_R01", "ADT^A01^ADT_A01"), HL7UnsupportedError, "ADT"),
        (lambda m: m.replace("0.2^-0.3", "0.2^abc"), HL7WaveformError, "abc"),
        (lambda m: m.replace("0.2^-0.3", "0.2^1e400"), HL7WaveformError, "lead I"),
        (lambda m: m.replace("1^1.5^-1.25", "1^-1.25"), HL7WaveformError, "unequal"),
        (lambda m: m.replace("MDC_ATTR_SAMP_RATE", "MDC_ATTR_OTHER"), HL7WaveformError, "sampling rate"),
        (lambda m: m.replace("|500.0|Hz^Hz^UCUM|", "|250|Hz^Hz^UCUM|"), HL7WaveformError, "different rates"),
        (lambda m: m.replace("266418^MDC_DIM_MILLI_VOLT^MDC|||||F", "mmHg|||||F"), HL7WaveformError, "mmHg"),
        (lambda m: m.replace("|NA|", "|ST|"), HL7UnsupportedError, "no ECG waveform"),
        (lambda m: m.replace("II^Lead II^L", "131329^MDC_ECG_LEAD_I^MDC"), HL7WaveformError, "twice"),
    ],
)
def test_malformed_messages_raise_specific_errors(mutate, error, match):
    with pytest.raises(error, match=match):
        parse_oru(mutate(_pcd_message()))


def test_broken_ed_payloads():
    head = "MSH|^~\\&|A||||||ORU^R01|1|P|2.5\rOBX|1|ED|X||^application^DICOM^Base64^"
    with pytest.raises(HL7MalformedError, match="Base64"):
        parse_oru(head + "AAA*==|\r")
    with pytest.raises(HL7MalformedError, match="embedded DICOM"):
        parse_oru(head + base64.b64encode(dicom_bytes(sample_ecg())[:3000]).decode() + "|\r")


@pytest.mark.timeout(20)
def test_oversized_message_is_refused_before_parsing(tmp_path):
    big = _pcd_message().encode() + b"OBX|9|NA|131331^MDC_ECG_LEAD_V1^MDC|1|" + b"1^" * (25 * 1024 * 1024) + b"1\r"
    with pytest.raises(HL7MalformedError, match="limit"):
        parse_oru(big)
    path = tmp_path / "big.hl7"
    path.write_bytes(big)
    with pytest.raises(HL7MalformedError, match="MB"):
        read_ecg(path)
    assert parse_oru(_pcd_message(), max_bytes=10_000).record.n_samples == 6
    with pytest.raises(HL7MalformedError):
        parse_oru(_pcd_message(), max_bytes=100)


def test_model_leads_from_a_real_size_message():
    rec = sample_ecg(leads=MODEL_LEADS)
    back = parse_oru(build_oru(rec, control_id="1")).record
    assert set(MODEL_LEADS) <= set(back.leads) and set(back.derived_leads) == {"III", "aVR", "aVL", "aVF"}
