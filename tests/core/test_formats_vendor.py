"""ECG-system exports through lasan.formats: the real Philips Sierra XML 1.03 file, and GE MUSE XML,
HL7 aECG, SCP-ECG, Mortara ELI XML and EDF+ files written here by hand from each format's
specification, with known sample values. Expected values are computed from the counts written
(never from the reader under test); the Philips file is checked against sierraecg.

The builders (``*_bytes``) are also used by ``test_formats_vendor_intake.py``.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from testkit import PHILIPS_SAMPLE

from lasan.errors import ECGFormatError, MalformedECGError, UnsupportedFormatError
from lasan.formats import VENDOR_FORMATS, detect_format, read_ecg
from lasan.formats.sample import sample_ecg
from lasan.leads import STANDARD_LEADS

PHILIPS = PHILIPS_SAMPLE
needs_philips = pytest.mark.skipif(not PHILIPS.exists(), reason=f"the real Philips export is missing at {PHILIPS}")
FS = 500
PATIENT_ID = "MRN-4711-SECRET"
EIGHT = ("I", "II", "V1", "V2", "V3", "V4", "V5", "V6")


def counts(resolution_uv: float, leads: tuple[str, ...] = STANDARD_LEADS, seconds: float = 10.0) -> np.ndarray:
    """Integer samples of a realistic ECG at ``resolution_uv`` µV per count: ``(leads, T)``."""
    record = sample_ecg(fs=FS, duration_s=seconds, seed=3)
    mv = np.stack([record.lead(name) for name in leads]).astype(np.float64)
    return np.rint(mv * 1000.0 / resolution_uv).astype(np.int64)


# ---------------------------------------------------------------- GE MUSE XML (restecg.dtd)
GE_UV = 4.88


def ge_muse_bytes(raw: np.ndarray | None = None) -> bytes:
    """A MUSE resting-ECG export: 8 stored rhythm leads, int16 LE Base64, 4.88 µV/count, and a median beat."""
    raw = counts(GE_UV, EIGHT) if raw is None else raw
    def lead_xml(name: str, row: np.ndarray) -> str:
        data = row.astype("<i2").tobytes()
        return (f"<LeadData><LeadByteCountTotal>{len(data)}</LeadByteCountTotal><LeadSampleSize>2</LeadSampleSize>"
                f"<LeadAmplitudeUnitsPerBit>{GE_UV}</LeadAmplitudeUnitsPerBit><LeadAmplitudeUnits>MICROVOLTS"
                f"</LeadAmplitudeUnits><LeadSampleCountTotal>{row.size}</LeadSampleCountTotal>"
                f"<LeadDataCRC32>{binascii.crc32(data)}</LeadDataCRC32><LeadID>{name}</LeadID>"
                f"<WaveFormData>{base64.b64encode(data).decode()}</WaveFormData></LeadData>")
    median = "".join(lead_xml(name, np.full(600, 7)) for name in EIGHT)  # must never be read as the rhythm
    rhythm = "".join(lead_xml(name, row) for name, row in zip(EIGHT, raw, strict=True))
    return (
        '<?xml version="1.0" encoding="ISO-8859-1"?>\n<!-- MUSE export -->\n<RestingECG>'
        "<MuseInfo><MuseVersion>9.0.9.18167</MuseVersion></MuseInfo>"
        f"<PatientDemographics><PatientID>{PATIENT_ID}</PatientID><PatientLastName>Doe</PatientLastName>"
        "<PatientFirstName>Jane</PatientFirstName><DateofBirth>03-04-1961</DateofBirth><Gender>FEMALE</Gender>"
        "</PatientDemographics><TestDemographics><DataType>RESTING</DataType><AcquisitionDevice>MAC55"
        "</AcquisitionDevice><AcquisitionDate>05-06-2021</AcquisitionDate><AcquisitionTime>10:11:12"
        "</AcquisitionTime></TestDemographics>"
        "<Waveform><WaveformType>Median</WaveformType><SampleBase>500</SampleBase><SampleExponent>0</SampleExponent>"
        f"<NumberofLeads>8</NumberofLeads>{median}</Waveform>"
        "<Waveform><WaveformType>Rhythm</WaveformType><SampleBase>500</SampleBase><SampleExponent>0</SampleExponent>"
        "<HighPassFilter>5</HighPassFilter><LowPassFilter>150</LowPassFilter>"
        f"<NumberofLeads>8</NumberofLeads>{rhythm}</Waveform></RestingECG>"
    ).encode("latin-1")


# ---------------------------------------------------------------- HL7 aECG (PORT_MT020001)
AECG_UV = 2.5


def aecg_bytes(raw: np.ndarray | None = None) -> bytes:
    """An FDA-style aECG: GLIST time base (0.002 s), 12 SLIST_PQ leads, value = origin + scale × digit (µV)."""
    raw = counts(AECG_UV) if raw is None else raw
    sequences = "".join(
        f'<component><sequence><code code="MDC_ECG_LEAD_{n.upper()}" '
        f'codeSystem="2.16.840.1.113883.6.24"/><value xsi:type="SLIST_PQ"><origin value="0" unit="uV"/>'
        f'<scale value="{AECG_UV}" unit="uV"/><digits>{" ".join(map(str, row))}</digits></value></sequence></component>'
        for n, row in zip(STANDARD_LEADS, raw, strict=True)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<AnnotatedECG xmlns="urn:hl7-org:v3" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        '<id root="61d1a24f-b47e-41aa-ae95-f8ac302f4eeb"/><code code="93000" codeSystem="2.16.840.1.113883.6.12"/>'
        '<effectiveTime><low value="20210506101112"/><high value="20210506101122"/></effectiveTime>'
        "<componentOf><timepointEvent><componentOf><subjectAssignment><subject><trialSubject>"
        f'<id extension="{PATIENT_ID}"/><subjectDemographicPerson><name>Jane Doe</name>'
        '<administrativeGenderCode code="F" codeSystem="2.16.840.1.113883.5.1"/><birthTime value="19610304"/>'
        "</subjectDemographicPerson></trialSubject></subject></subjectAssignment></componentOf></timepointEvent>"
        "</componentOf><component><series>"
        '<code code="RHYTHM" codeSystem="2.16.840.1.113883.5.4"/>'
        '<effectiveTime><low value="20210506101112"/><high value="20210506101122"/></effectiveTime>'
        "<component><sequenceSet>"
        '<component><sequence><code code="TIME_ABSOLUTE" codeSystem="2.16.840.1.113883.5.4"/>'
        '<value xsi:type="GLIST_TS"><head value="20210506101112.000"/><increment value="0.002" unit="s"/></value>'
        f"</sequence></component>{sequences}</sequenceSet></component></series></component></AnnotatedECG>"
    ).encode()


# ---------------------------------------------------------------- SCP-ECG (EN 1064), uncompressed
SCP_NV = 5000  # amplitude value multiplier: 5 µV per count
_SCP_CODES = {"I": 1, "II": 2, "V1": 3, "V2": 4, "V3": 5, "V4": 6, "V5": 7, "V6": 8,
              "III": 61, "aVR": 62, "aVL": 63, "aVF": 64}


def _scp_section(sid: int, body: bytes, version: int = 20) -> bytes:
    body = body + b"\0" * (len(body) % 2)
    rest = struct.pack("<HI", sid, 16 + len(body)) + bytes([version, version]) + b"\0" * 6 + body
    return struct.pack("<H", binascii.crc_hqx(rest, 0xFFFF)) + rest


def scp_bytes(raw: np.ndarray | None = None, version: int = 20) -> bytes:
    """An SCP-ECG 2.0 record: sections 0 (pointers), 1 (patient), 3 (12 leads) and 6 (16-bit amplitudes)."""
    raw = counts(SCP_NV / 1000.0) if raw is None else raw
    n = raw.shape[1]
    tags = [(2, PATIENT_ID.encode() + b"\0"), (0, b"Doe\0"), (1, b"Jane\0"), (8, bytes([2])),
            (25, struct.pack("<HBB", 2021, 5, 6)), (26, bytes([10, 11, 12])), (255, b"")]
    sec1 = b"".join(bytes([t]) + struct.pack("<H", len(v)) + v for t, v in tags)
    sec3 = bytes([12, 0b0000_0100 | (12 << 3)]) + b"".join(
        struct.pack("<IIB", 1, n, _SCP_CODES[name]) for name in STANDARD_LEADS)
    data = [row.astype("<i2").tobytes() for row in raw]
    sec6 = struct.pack("<HHBB", SCP_NV, 1_000_000 // FS, 0, 0) + b"".join(struct.pack("<H", len(d)) for d in data)
    sec6 += b"".join(data)
    bodies = {1: sec1, 3: sec3, 6: sec6}
    sections = {sid: _scp_section(sid, body, version) for sid, body in bodies.items()}
    ids = list(range(12))
    sec0_len = 16 + 10 * len(ids)
    offset, pointers, layout = 6 + sec0_len + 1, b"", b""
    for sid in ids:
        if sid == 0:
            pointers += struct.pack("<HII", 0, sec0_len, 7)
        elif sid in sections:
            pointers += struct.pack("<HII", sid, len(sections[sid]), offset)
            offset += len(sections[sid])
            layout += sections[sid]
        else:
            pointers += struct.pack("<HII", sid, 0, 0)
    sec0 = _scp_section(0, pointers, version)
    record = sec0 + layout
    body = struct.pack("<I", 6 + len(record)) + record
    return struct.pack("<H", binascii.crc_hqx(body, 0xFFFF)) + body


# ---------------------------------------------------------------- Mortara ELI XML
MORTARA_UNITS_PER_MV = 160  # 6.25 µV per count


def mortara_bytes(raw: np.ndarray | None = None) -> bytes:
    """An ELI 280 export: ``<ECG>`` root, 12 ``<CHANNEL>`` elements of Base64 int16 LE at UNITS_PER_MV."""
    raw = counts(1000.0 / MORTARA_UNITS_PER_MV) if raw is None else raw
    channels = "".join(
        f'<CHANNEL OFFSET="0" BITS="16" FORMAT="SIGNED" UNITS_PER_MV="{MORTARA_UNITS_PER_MV}" '
        f'DURATION="{row.size}" SAMPLE_FREQ="{FS}" ENCODING="BASE64" NAME="{name}" '
        f'DATA="{base64.b64encode(row.astype("<i2").tobytes()).decode()}"/>'
        for name, row in zip(STANDARD_LEADS, raw, strict=True)
    )
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ECG ACQUISITION_TIME="20210506101112" VENT_RATE="68" NUM_QRS="11">'
        '<SOURCE TYPE="ECG" MANUFACTURER="Mortara Instrument, Inc." MODEL="ELI280" HIGH_PASS="0.05" '
        'LOW_PASS="150"/>'
        f'<SUBJECT LAST_NAME="Doe" FIRST_NAME="Jane" ID="{PATIENT_ID}" GENDER="FEMALE" DOB="19610304"/>'
        f"{channels}</ECG>"
    ).encode()


# ---------------------------------------------------------------- EDF+ (Kemp & Olivan 2003)
EDF_UV = 1.0


def edf_bytes(raw: np.ndarray | None = None, *, seconds_per_record: int = 1, version: bytes = b"0       ") -> bytes:
    """An EDF+C file: 12 ``ECG <lead>`` signals (digital = physical in µV) and an EDF Annotations signal."""
    raw = counts(EDF_UV) if raw is None else raw
    n_records = raw.shape[1] // (FS * seconds_per_record)
    spr = FS * seconds_per_record
    labels = [f"ECG {name}" for name in STANDARD_LEADS] + ["EDF Annotations"]
    ns = len(labels)
    def field(values: list[str], width: int) -> bytes:
        return b"".join(v.encode("ascii").ljust(width)[:width] for v in values)
    header = (version + f"{PATIENT_ID} F 04-MAR-1961 Jane_Doe".encode().ljust(80)
              + b"Startdate 06-MAY-2021 X X LASAN_test".ljust(80) + b"06.05.21" + b"10.11.12"
              + str(256 * (ns + 1)).encode().ljust(8) + b"EDF+C".ljust(44)
              + str(n_records).encode().ljust(8) + str(seconds_per_record).encode().ljust(8) + str(ns).encode().ljust(4))
    header += field(labels, 16) + field(["AgAgCl electrode"] * 12 + [""], 80) + field(["uV"] * 12 + [""], 8)
    header += field(["-32768"] * 12 + ["-1"], 8) + field(["32767"] * 12 + ["1"], 8)
    header += field(["-32768"] * 12 + ["-32768"], 8) + field(["32767"] * 12 + ["32767"], 8)
    header += field(["HP:0.05Hz LP:150Hz"] * 12 + [""], 80) + field([str(spr)] * 12 + ["30"], 8)
    header += field([""] * ns, 32)
    body = b""
    for r in range(n_records):
        for row in raw:
            body += row[r * spr:(r + 1) * spr].astype("<i2").tobytes()
        annotation = f"+{r * seconds_per_record}\x14\x14\0".encode().ljust(60, b"\0")
        body += annotation
    return header + body


BUILDERS = {"ge-muse": ge_muse_bytes, "hl7-aecg": aecg_bytes, "scp-ecg": scp_bytes, "mortara": mortara_bytes,
            "edf": edf_bytes}
# What each file holds in mV, computed from the counts written (not by any reader).
EXPECTED_MV = {
    "ge-muse": lambda: counts(GE_UV, EIGHT) * GE_UV / 1000.0,
    "hl7-aecg": lambda: counts(AECG_UV) * AECG_UV / 1000.0,
    "scp-ecg": lambda: counts(SCP_NV / 1000.0) * SCP_NV / 1e6,
    "mortara": lambda: counts(1000.0 / MORTARA_UNITS_PER_MV) / MORTARA_UNITS_PER_MV,
    "edf": lambda: counts(EDF_UV) * EDF_UV / 1000.0,
}
STORED_LEADS = {"ge-muse": EIGHT}
SUFFIX = {"ge-muse": ".xml", "hl7-aecg": ".xml", "scp-ecg": ".scp", "mortara": ".xml", "edf": ".edf",
          "philips-sierra": ".XML", "fhir": ".json"}


def test_every_vendor_format_has_a_builder_or_the_real_file() -> None:
    assert set(VENDOR_FORMATS) == set(BUILDERS) | {"philips-sierra"}


@pytest.mark.parametrize("fmt", sorted(BUILDERS))
def test_reads_known_values_in_mv_with_canonical_leads(fmt: str, tmp_path: Path) -> None:
    path = tmp_path / f"ecg{SUFFIX[fmt]}"
    path.write_bytes(BUILDERS[fmt]())
    renamed = tmp_path / "export.dat.bin"  # detection is by content, not by the name
    renamed.write_bytes(path.read_bytes())
    assert detect_format(path) == fmt == detect_format(renamed.read_bytes())
    record = read_ecg(path)
    assert record.acquisition.source_format == fmt
    assert record.fs == FS and record.signal.dtype == np.float32
    assert record.leads == STANDARD_LEADS
    stored = STORED_LEADS.get(fmt, STANDARD_LEADS)
    expected = EXPECTED_MV[fmt]()
    got = np.stack([record.lead(name) for name in stored])
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert record.n_samples == expected.shape[1]
    # The patient is in the identity part only, never in what a log line shows.
    assert record.patient.patient_id == PATIENT_ID
    assert PATIENT_ID not in repr(record) and "Doe" not in repr(record) and PATIENT_ID not in str(record.acquisition)


def test_ge_muse_reads_the_rhythm_and_derives_and_flags_the_other_limb_leads(tmp_path: Path) -> None:
    record = read_ecg(ge_muse_bytes())
    assert set(record.derived_leads) == {"III", "aVR", "aVL", "aVF"}
    lead_i, lead_ii = (counts(GE_UV, EIGHT)[k] * GE_UV / 1000.0 for k in (0, 1))
    np.testing.assert_allclose(record.lead("III"), lead_ii - lead_i, atol=1e-5)
    np.testing.assert_allclose(record.lead("aVR"), -(lead_i + lead_ii) / 2, atol=1e-5)
    assert record.n_samples == 5000  # the 10 s rhythm strip, not the 600-sample median beat
    assert record.acquisition.acquired_at == "2021-05-06T10:11:12"
    from lasan.quality import check_quality

    flagged = {f.lead for f in check_quality(record) if f.code == "derived_lead"}
    assert flagged == {"III", "aVR", "aVL", "aVF"}


def _lsb_check(record, sierra_leads) -> float:
    worst = 0.0
    for lead in sierra_leads:
        mv = np.asarray(lead.samples, dtype=np.float64) * 5e-3  # sierraecg gives 5 µV counts
        worst = max(worst, float(np.abs(record.lead(lead.label) - mv).max()))
    return worst


@needs_philips
def test_real_philips_sierra_1_03_export_equals_an_independent_decoder() -> None:
    sierraecg = pytest.importorskip("sierraecg", reason="sierraecg (dev extra) is the independent XLI decoder")
    assert detect_format(PHILIPS) == "philips-sierra"
    record = read_ecg(PHILIPS)
    assert record.leads == STANDARD_LEADS and record.fs == 500.0
    assert record.n_samples == 5500 and record.duration_s == pytest.approx(11.0)
    assert record.acquisition.notes[0].startswith("Philips Sierra XML 1.03")
    reference = sierraecg.read_file(str(PHILIPS))
    assert [lead.label for lead in reference.leads] == list(STANDARD_LEADS)
    assert _lsb_check(record, reference.leads) <= 5e-3 + 1e-6  # within 1 LSB (5 µV)
    assert record.patient.patient_id and record.patient.patient_id not in repr(record)


def _device_measurements(text: str) -> dict[str, dict[str, int]]:
    """The cart's own per-lead QRS measurements (µV) from the export's <leadmeasurement> elements."""
    out = {}
    for match in re.finditer(r'<leadmeasurement leadname="(\w+)".*?</leadmeasurement>', text, re.DOTALL):
        out[match.group(1)] = {tag: int(re.search(rf"<{tag}>(-?\d+)</{tag}>", match.group(0)).group(1))
                               for tag in ("ramp", "qamp", "samp")}
    return out


@needs_philips
def test_real_philips_export_agrees_with_the_carts_own_measurements() -> None:
    """An oracle independent of every XLI decoder (ecgdatakit's codec follows sierraecg's): the
    HeartStart MRx measured each lead's dominant QRS deflection and the rate when it recorded the
    ECG; the waveform we read must show them. A wrong unit (2.5 or 10 µV/count), an inverted or
    mis-decoded limb lead, or leads swapped with one of another amplitude (all but I/aVL, aVF/V2 and
    V3/V4 differ by more) break this by far more than the 10 % allowed."""
    from scipy.signal import find_peaks

    text = PHILIPS.read_text(encoding="utf-8")
    device = _device_measurements(text)
    assert set(device) == set(STANDARD_LEADS)
    record = read_ecg(PHILIPS)
    fs = record.fs
    uv = record.signal.astype(np.float64) * 1000.0  # (12, T)
    slope = np.abs(np.diff(uv, axis=1)).sum(axis=0)
    beats, _ = find_peaks(slope, height=0.5 * np.percentile(slope, 99), distance=int(0.4 * fs))
    rate = 60.0 * fs / np.median(np.diff(beats))
    assert rate == pytest.approx(float(re.search(r"<meanventrate>(\d+)<", text).group(1)), abs=2.0)
    for k, lead in enumerate(record.leads):
        m = device[lead]
        negative = min(m["qamp"], m["samp"])
        dominant = m["ramp"] if m["ramp"] >= -negative else negative  # signed, from the isoelectric line
        ours = []
        for beat in beats:
            baseline = np.median(uv[k, beat - int(0.08 * fs):beat - int(0.05 * fs)])  # PR segment
            qrs = uv[k, beat - int(0.03 * fs):beat + int(0.03 * fs)] - baseline
            ours.append(qrs[np.argmax(np.abs(qrs))])
        assert np.median(ours) / dominant == pytest.approx(1.0, abs=0.1), (lead, dominant, np.median(ours))


@needs_philips
def test_real_philips_export_holds_10_5_s_of_ecg_then_the_carts_1_mv_calibration_pulse() -> None:
    """What the 11 s really hold: 5264 samples of ECG, a flat line, the cart's 1 mV / 200 ms
    calibration pulse on every lead (the device's own amplitude reference: 200 counts of 5 µV),
    and a flat end. In the ECG part the limb leads obey Einthoven and Goldberger within rounding
    (the XLI codec stores III and aVR/aVL/aVF as residuals, so a decoding slip shows here)."""
    record = read_ecg(PHILIPS)
    uv = record.signal.astype(np.float64) * 1000.0
    pulse = np.all(np.abs(uv - 1000.0) < 0.01, axis=0)  # 1.000 mV on all 12 leads at once
    assert np.flatnonzero(pulse).tolist() == list(range(5350, 5450))
    flat = np.all(np.abs(uv) < 0.01, axis=0)
    assert flat[5264:5350].all() and flat[5450:].all() and not flat[5000:5264].all()
    ecg = {lead: uv[k, :5264] for k, lead in enumerate(record.leads)}
    lsb = 5.0 + 1e-3  # float32 mV
    assert np.abs(ecg["III"] - (ecg["II"] - ecg["I"])).max() <= 2 * lsb
    assert np.abs(ecg["aVR"] + (ecg["I"] + ecg["II"]) / 2).max() <= 2 * lsb
    assert np.abs(ecg["aVL"] - (ecg["I"] - ecg["II"] / 2)).max() <= 2 * lsb
    assert np.abs(ecg["aVF"] - (ecg["II"] - ecg["I"] / 2)).max() <= 2 * lsb
    assert not record.derived_leads  # all 12 are the cart's, none derived by LASAN


@needs_philips
@pytest.mark.parametrize("variant", ["utf-16", "utf-16-le-no-bom", "1.04", "1.04.01", "PhilipsECG 1.04.01"])
def test_philips_utf16_and_later_versions_read_the_same(variant: str) -> None:
    text = PHILIPS.read_bytes().decode("utf-8")
    if "1.04" in variant:
        # Same XLI payload under the later schema's version label (1.04 changed metadata, not the codec);
        # PageWriter TC / IntelliSpace exports name the document type PhilipsECG.
        version = variant.split()[-1]
        data = text.replace("<documentversion>1.03</documentversion>", f"<documentversion>{version}</documentversion>")
        if variant.startswith("PhilipsECG"):
            data = data.replace("<documenttype>SierraECG</documenttype>", "<documenttype>PhilipsECG</documenttype>")
        assert data.count(version) >= 1 and data != text
        raw = data.encode("utf-8")
    elif variant == "utf-16":
        raw = text.replace('encoding="utf-8"', 'encoding="utf-16"').replace('encoding="UTF-8"', 'encoding="UTF-16"')
        raw = raw.encode("utf-16")  # with BOM, as PageWriter TC exports
    else:
        raw = text.replace('encoding="utf-8"', 'encoding="utf-16"').replace('encoding="UTF-8"', 'encoding="UTF-16"')
        raw = raw.encode("utf-16-le")
    assert detect_format(raw) == "philips-sierra"
    original, record = read_ecg(PHILIPS), read_ecg(raw)
    assert record.leads == original.leads and record.fs == original.fs
    np.testing.assert_array_equal(record.signal, original.signal)


# ---------------------------------------------------------------- refusals
def _corrupt(fmt: str, data: bytes) -> bytes:
    if fmt in ("scp-ecg", "edf"):
        return data[:300] + bytes(range(256)) * 4  # a valid-looking start, then garbage
    return data[: len(data) // 3] + b"<<<\x00garbage"


def _source(fmt: str) -> bytes:
    return PHILIPS.read_bytes() if fmt == "philips-sierra" else BUILDERS[fmt]()


VENDOR_PARAMS = [pytest.param(f, marks=needs_philips) if f == "philips-sierra" else f for f in VENDOR_FORMATS]


@pytest.mark.parametrize("fmt", VENDOR_PARAMS)
@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_truncated_or_corrupt_files_are_refused_with_a_typed_error_naming_file_and_problem(
    fmt: str, damage: str, tmp_path: Path
) -> None:
    data = _source(fmt)
    bad = data[: int(len(data) * 0.6)] if damage == "truncated" else _corrupt(fmt, data)
    path = tmp_path / f"broken{SUFFIX[fmt]}"
    path.write_bytes(bad)
    with pytest.raises(MalformedECGError) as info:
        read_ecg(path)
    message = str(info.value)
    assert str(path) in message and ("truncated" in message or "corrupt" in message)
    assert PATIENT_ID not in message


def _median_only_muse() -> bytes:
    text = ge_muse_bytes().decode("latin-1")
    cut = text.index("<Waveform><WaveformType>Rhythm")
    return (text[:cut] + text[text.index("</Waveform>", cut) + len("</Waveform>"):]).encode("latin-1")


# One version or variant per format that its reader does not read, each refused by name.
WRONG_VERSION = {
    "philips-sierra": (lambda: PHILIPS.read_bytes().replace(b">1.03<", b">9.99<"), UnsupportedFormatError, "9.99"),
    "scp-ecg": (lambda: scp_bytes(version=99), UnsupportedFormatError, "version 9.9"),
    "ge-muse": (_median_only_muse, UnsupportedFormatError, "no rhythm waveform"),
    "hl7-aecg": (lambda: aecg_bytes().replace(b'xmlns="urn:hl7-org:v3"', b'xmlns="urn:hl7-org:v2draft"'),
                 UnsupportedFormatError, "namespace"),
    "mortara": (lambda: mortara_bytes().replace(b'BITS="16"', b'BITS="8"'), UnsupportedFormatError, "BITS=8"),
    "edf": (lambda: edf_bytes(version=b"1       "), MalformedECGError, "version"),
}


@pytest.mark.parametrize("fmt", VENDOR_PARAMS)
def test_wrong_versions_and_variants_are_refused_naming_file_and_problem(fmt: str, tmp_path: Path) -> None:
    make, error, problem = WRONG_VERSION[fmt]
    path = tmp_path / f"v{SUFFIX[fmt]}"
    path.write_bytes(make())
    with pytest.raises(ECGFormatError) as info:
        read_ecg(path)
    assert type(info.value) is error, info.value
    assert str(path) in str(info.value) and problem in str(info.value), info.value


# The classic billion-laughs bomb (10 levels: 10**9 'lol's), an external entity reading a local
# file, and an external DTD fetched over the network.
_LAUGHS = "".join(f'<!ENTITY l{k} "{f"&l{k - 1};" * 10}">' for k in range(1, 10))
BOMBS = {
    "billion-laughs": (f'<!DOCTYPE r [<!ENTITY l0 "lol">{_LAUGHS}]>', "&l9;"),
    "external-entity": ('<!DOCTYPE r [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>', "&xxe;"),
    "external-dtd": ('<!DOCTYPE r SYSTEM "http://127.0.0.1:9/evil.dtd">', ""),
}
XML_FORMATS = ["ge-muse", pytest.param("philips-sierra", marks=needs_philips), "hl7-aecg", "mortara"]


def _with_doctype(data: bytes, bomb: str, encoding: str) -> bytes:
    latin = b'encoding="ISO-8859-1"' in data[:60]
    text = data.decode("latin-1" if latin else "utf-8")
    doctype, use = BOMBS[bomb]
    end = text.index("?>") + 2
    # The entity is used in the first element text, so a parser that expanded it would.
    first_close = text.index("</", end)
    text = text[:end] + doctype + text[end:first_close] + use + text[first_close:]
    if encoding == "utf-16":
        for declared in ('encoding="UTF-8"', 'encoding="utf-8"', 'encoding="ISO-8859-1"'):
            text = text.replace(declared, 'encoding="UTF-16"', 1)
        return text.encode("utf-16")
    return text.encode("latin-1" if latin else "utf-8")


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt", XML_FORMATS)
@pytest.mark.parametrize("bomb", sorted(BOMBS))
@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_xml_with_entities_or_a_dtd_is_refused_before_parsing(fmt: str, bomb: str, encoding: str, tmp_path: Path) -> None:
    path = tmp_path / f"bomb{SUFFIX[fmt]}"
    path.write_bytes(_with_doctype(_source(fmt), bomb, encoding))
    assert detect_format(path) == fmt  # recognised as the export it pretends to be, then refused
    with pytest.raises(MalformedECGError, match="entit") as info:
        read_ecg(path)
    assert str(path) in str(info.value)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fmt", ["ge-muse", "hl7-aecg", "mortara"])
@pytest.mark.parametrize("bomb", ["billion-laughs", "external-entity"])
def test_the_library_parser_refuses_entities_too(fmt: str, bomb: str) -> None:
    """Defence in depth: past our DOCTYPE check, ecgdatakit's defusedxml parsing refuses them as well."""
    from lasan.formats.vendor import _parse

    with pytest.raises(MalformedECGError, match="EntitiesForbidden"):
        _parse(_with_doctype(BUILDERS[fmt](), bomb, "utf-8"), fmt, "the test file")


def test_oversized_export_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    from lasan.formats import vendor

    monkeypatch.setattr(vendor, "MAX_VENDOR_BYTES", 1000)
    with pytest.raises(MalformedECGError, match="MB"):
        read_ecg(ge_muse_bytes())


def test_long_edf_recording_is_not_a_resting_ecg(monkeypatch: pytest.MonkeyPatch) -> None:
    from lasan.formats import vendor

    monkeypatch.setattr(vendor, "MAX_EDF_SECONDS", 5.0)
    with pytest.raises(UnsupportedFormatError, match="not a resting ECG"):
        read_ecg(edf_bytes())


def test_xml_of_another_kind_is_not_an_ecg_format() -> None:
    with pytest.raises(UnsupportedFormatError):
        read_ecg(b'<?xml version="1.0"?><invoice><total>3</total></invoice>')
