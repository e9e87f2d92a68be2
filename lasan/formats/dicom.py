"""DICOM ECG waveforms (PS3.3 A.34): 12-lead ECG and General ECG Waveform Storage.

Reading picks the rhythm multiplex group (never the median beat), scales every
channel by its own sensitivity, correction factor and baseline, converts the
sensitivity units to mV, and names each channel from its Channel Source Sequence
code (SCPECG ``5.6.3-9-N`` or MDC ``2:N``, then the code meaning), never from its
position. Writing produces a 12-lead ECG Waveform Storage file (int16 samples,
sensitivity in uV, SCPECG channel codes) that ``dcmdump`` accepts.
"""

from __future__ import annotations

import io
import os
import re
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BadWaveformError, LasanError, MalformedECGError, MissingLeadsError, UnsupportedFormatError
from ..leads import DICOM_CODE_MEANINGS, SCPECG_CODES, STANDARD_LEADS, canonical_lead
from ..record import Acquisition, ECGRecord, PatientIdentity

__all__ = [
    "read_dicom_dataset",
    "TWELVE_LEAD_ECG_SOP_CLASS",
    "GENERAL_ECG_SOP_CLASS",
    "ECG_SOP_CLASSES",
    "read_dicom",
    "dataset_to_record",
    "record_to_dataset",
    "dicom_bytes",
    "write_dicom",
    "with_source",
    "vr_text",
    "vr_date",
    "vr_sex",
]

TWELVE_LEAD_ECG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.1"
GENERAL_ECG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.9.1.2"
ECG_SOP_CLASSES = {
    TWELVE_LEAD_ECG_SOP_CLASS: "12-lead ECG Waveform Storage",
    GENERAL_ECG_SOP_CLASS: "General ECG Waveform Storage",
}
# Sensitivity units (UCUM code or code meaning) -> factor to mV.
_UNITS_TO_MV = {
    "uv": 1e-3, "µv": 1e-3, "microvolt": 1e-3,
    "mv": 1.0, "millivolt": 1.0,
    "v": 1e3, "volt": 1e3,
    "nv": 1e-6, "nanovolt": 1e-6,
}
# (bits allocated, interpretation) -> numpy dtype of one sample (little endian).
_SAMPLE_DTYPES = {
    (8, "SB"): "i1", (8, "UB"): "u1",
    (16, "SS"): "<i2", (16, "US"): "<u2",
    (32, "SL"): "<i4", (32, "UL"): "<u4",
}
# PS3.3 A.34.3.4: the 12-lead IOD allows 200-1000 Hz and at most 16384 samples per group.
_TWELVE_LEAD_FS = (200.0, 1000.0)
_TWELVE_LEAD_MAX_SAMPLES = 16384
_INT16_MAX = 32767


def read_dicom(source: str | os.PathLike[str] | bytes) -> ECGRecord:
    """Read a DICOM ECG file (path or the file's bytes) into an ECG record in mV.

    Raises:
        MalformedECGError: not a DICOM file, truncated, or waveform data inconsistent.
        UnsupportedFormatError: a DICOM object that is not an ECG waveform (SOP class named).
        BadWaveformError: sample encoding or units that cannot be converted to mV.
        MissingLeadsError: no channel is one of the 12 standard leads.
    """
    what = "the DICOM data" if isinstance(source, bytes) else f"DICOM file {os.fspath(source)}"
    return dataset_to_record(read_dicom_dataset(source), what=what)


def read_dicom_dataset(source: str | os.PathLike[str] | bytes):
    """The pydicom ``Dataset`` of a DICOM file (path or bytes), for callers that need more than the record.

    Raises:
        MalformedECGError: not a DICOM file, missing, truncated or corrupt.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    what = "the DICOM data" if isinstance(source, bytes) else f"DICOM file {os.fspath(source)}"
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else os.fspath(source)
        return pydicom.dcmread(fp)
    except InvalidDicomError as exc:
        raise MalformedECGError(f"{what} is not a DICOM file (no DICM preamble): {exc}") from exc
    except FileNotFoundError as exc:
        raise MalformedECGError(f"{what} does not exist") from exc
    except Exception as exc:  # pydicom raises many types on broken input (EOFError, struct.error, ...)
        raise MalformedECGError(
            f"{what} is truncated or corrupt ({type(exc).__name__}: {exc}); ask the sender to resend it"
        ) from exc


def dataset_to_record(ds, *, what: str = "the DICOM object") -> ECGRecord:
    """Convert a pydicom ``Dataset`` of an ECG SOP class into an ECG record.

    This is the reader's error boundary: pydicom decodes a value only when it is first read,
    after ``dcmread`` returned, so a corrupt value surfaces here as NotImplementedError (an
    unknown VR), BytesLengthException, TypeError or ValueError. Every value used is read
    inside it, and what escapes is a :class:`MalformedECGError` naming the cause.

    Raises:
        Same as :func:`read_dicom`.
    """
    try:
        return _dataset_to_record(ds, what=what)
    except LasanError:
        raise
    except Exception as exc:  # noqa: BLE001 - the boundary: any decoding failure is a corrupt file
        raise MalformedECGError(
            f"{what} has corrupt or wrongly typed DICOM attributes ({type(exc).__name__}: {_one_line(exc)}); "
            "ask the sender to resend it or check the device's DICOM export"
        ) from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= 160 else text[:157] + "..."


def _dataset_to_record(ds, *, what: str) -> ECGRecord:
    sop = str(ds.get("SOPClassUID", "") or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if not sop and len(ds) == 0:
        raise MalformedECGError(f"{what} holds no data elements after its header: it is truncated or empty")
    if sop not in ECG_SOP_CLASSES:
        raise UnsupportedFormatError(
            f"{what} is a {_sop_name(sop)} object (SOP class {sop or 'missing'}), not an ECG; LASAN reads "
            "12-lead ECG Waveform Storage and General ECG Waveform Storage"
        )
    if "WaveformSequence" not in ds:
        raise MalformedECGError(
            f"{what} is an ECG object without a Waveform Sequence: the file is truncated or incomplete"
        )
    try:
        groups = list(ds.WaveformSequence)
    except Exception as exc:
        raise MalformedECGError(f"{what} has an unreadable Waveform Sequence ({exc})") from exc
    if not groups:
        raise MalformedECGError(f"{what} has an empty Waveform Sequence: no waveform to read")
    group = _rhythm_group(groups)
    try:
        signal, leads, units, notes = _decode_group(group, little_endian=_is_little_endian(ds), what=what)
    except (AttributeError, KeyError, TypeError, ValueError) as exc:
        raise MalformedECGError(f"{what}: the waveform attributes are incomplete or invalid ({exc})") from exc
    channel0 = group.ChannelDefinitionSequence[0]
    acquisition = Acquisition(
        source_format="dicom",
        manufacturer=_text(ds.get("Manufacturer")),
        device=_text(ds.get("ManufacturerModelName")),
        acquired_at=_acquired_at(ds),
        original_units=units,
        sop_class=ECG_SOP_CLASSES[sop],
        filter_low_hz=_float_or_none(channel0.get("FilterLowFrequency")),
        filter_high_hz=_float_or_none(channel0.get("FilterHighFrequency")),
        notes=tuple(notes),
        study_uid=_text(ds.get("StudyInstanceUID")),
        series_uid=_text(ds.get("SeriesInstanceUID")),
        sop_instance_uid=_text(ds.get("SOPInstanceUID")),
    )
    patient = PatientIdentity(
        patient_id=_text(ds.get("PatientID")),
        name=_text(ds.get("PatientName")),
        birth_date=_text(ds.get("PatientBirthDate")),
        sex=_text(ds.get("PatientSex")),
        accession_number=_text(ds.get("AccessionNumber")),
    )
    record = ECGRecord(signal, float(group.SamplingFrequency), tuple(leads), acquisition, patient)
    return record.in_standard_order().with_derived_leads()


def _rhythm_group(groups: list) -> Any:
    """The multiplex group labelled RHYTHM, else the longest one (median beats are short)."""
    for group in groups:
        if str(group.get("MultiplexGroupLabel", "")).strip().upper() == "RHYTHM":
            return group

    def duration(group) -> float:
        fs = _float_or_none(group.get("SamplingFrequency")) or 1.0
        return float(group.get("NumberOfWaveformSamples", 0) or 0) / fs

    return max(groups, key=duration)


def _decode_group(group, *, little_endian: bool, what: str) -> tuple[np.ndarray, list[str], str, list[str]]:
    n_channels = int(group.NumberOfWaveformChannels)
    n_samples = int(group.NumberOfWaveformSamples)
    if n_channels < 1 or n_samples < 1:
        raise MalformedECGError(
            f"{what}: the rhythm waveform declares {n_channels} channels and {n_samples} samples; both must be at least 1"
        )
    bits = int(group.WaveformBitsAllocated)
    interpretation = str(group.WaveformSampleInterpretation).strip()
    dtype = _SAMPLE_DTYPES.get((bits, interpretation))
    if dtype is None:
        raise BadWaveformError(
            f"{what}: waveform samples are {bits}-bit '{interpretation}', which LASAN does not decode "
            "(supported: 8/16/32-bit signed or unsigned integers; not mu-law or A-law)"
        )
    np_dtype = np.dtype(dtype)
    if not little_endian:
        np_dtype = np_dtype.newbyteorder(">")
    data = group.WaveformData
    expected = n_channels * n_samples * np_dtype.itemsize
    if len(data) < expected:
        raise MalformedECGError(
            f"{what} is truncated: the rhythm waveform needs {expected} bytes "
            f"({n_channels} channels x {n_samples} samples) but holds {len(data)}"
        )
    raw = np.frombuffer(data, dtype=np_dtype, count=n_channels * n_samples).reshape(n_samples, n_channels).T
    padding = group.get("WaveformPaddingValue")
    pad_value = None if padding is None else np.frombuffer(bytes(padding), dtype=np_dtype)[:1]
    channels = list(group.ChannelDefinitionSequence)
    if len(channels) != n_channels:
        raise MalformedECGError(f"{what}: {n_channels} waveform channels but {len(channels)} channel definitions")
    rows: list[np.ndarray] = []
    leads: list[str] = []
    units_seen: list[str] = []
    notes: list[str] = []
    for index, channel in enumerate(channels):
        label = _channel_label(channel)
        lead = _channel_lead(channel)
        if lead is None:
            notes.append(f"channel {index + 1} ({label}) is not one of the 12 standard leads; ignored")
            continue
        if lead in leads:
            notes.append(f"channel {index + 1} repeats lead {lead}; the first one is used")
            continue
        unit, factor = _channel_units(channel, what=what, lead=lead)
        sensitivity = float(channel.get("ChannelSensitivity", 1.0) or 1.0)
        correction = float(channel.get("ChannelSensitivityCorrectionFactor", 1.0) or 1.0)
        baseline = float(channel.get("ChannelBaseline", 0.0) or 0.0)
        row = raw[index].astype(np.float64) * (sensitivity * correction) + baseline
        if pad_value is not None and pad_value.size:
            row[raw[index] == pad_value[0]] = np.nan  # padding marks samples that were not recorded
        rows.append(row * factor)
        leads.append(lead)
        units_seen.append(unit)
    if not leads:
        raise MissingLeadsError(STANDARD_LEADS, [])
    return np.stack(rows).astype(np.float32), leads, "/".join(sorted(set(units_seen))), notes


def _channel_label(channel) -> str:
    source = channel.get("ChannelSourceSequence")
    if source:
        item = source[0]
        return f"{item.get('CodeValue', '?')} {item.get('CodeMeaning', '')}".strip()
    return str(channel.get("ChannelLabel", "unlabelled"))


def _channel_lead(channel) -> str | None:
    """Canonical lead of a channel: code value first, then code meaning, then the label."""
    source = channel.get("ChannelSourceSequence")
    candidates: list[object] = []
    if source:
        item = source[0]
        candidates += [item.get("CodeValue"), item.get("CodeMeaning")]
    candidates.append(channel.get("ChannelLabel"))
    for candidate in candidates:
        lead = canonical_lead(str(candidate)) if candidate else None
        if lead:
            return lead
    return None


def _channel_units(channel, *, what: str, lead: str) -> tuple[str, float]:
    units = channel.get("ChannelSensitivityUnitsSequence")
    if not units:
        raise BadWaveformError(
            f"{what}: lead {lead} has no Channel Sensitivity Units, so its voltage is unknown"
        )
    item = units[0]
    for key in ("CodeValue", "CodeMeaning"):
        value = str(item.get(key, "")).strip()
        if value.lower() in _UNITS_TO_MV:
            return value if key == "CodeValue" else value.lower(), _UNITS_TO_MV[value.lower()]
    raise BadWaveformError(
        f"{what}: lead {lead} is in units '{item.get('CodeValue', '')}' ({item.get('CodeMeaning', '')}); "
        "LASAN converts only voltage units (uV, mV, V) to mV"
    )


def _is_little_endian(ds) -> bool:
    meta = getattr(ds, "file_meta", None)
    syntax = str(getattr(meta, "TransferSyntaxUID", "") or "")
    return syntax != "1.2.840.10008.1.2.2"  # Explicit VR Big Endian (retired)


def _sop_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    return f"'{name}'" if name and name != uid else "unknown"


def vr_text(value: str | None, max_bytes: int = 64) -> str:
    """Free text as an LO/SH/PN value: no backslash (the value separator) or control characters,
    at most ``max_bytes`` in UTF-8 (64 for LO and PN components, 16 for SH), never cut inside a character."""
    clean = re.sub(r"[\\\x00-\x1f]", " ", value or "").strip()
    return clean.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore").strip()


def vr_date(value: str | None) -> str:
    """A date in any common spelling (``19610203``, ``1961-02-03``, an ISO time) as DA, or empty."""
    digits = re.sub(r"[^0-9]", "", (value or "")[:10])
    return digits[:8] if len(digits) >= 8 else ""


def vr_sex(value: str | None) -> str:
    """M, F or O (DICOM's defined terms) from ``M``/``male``/``F``/``female``/``O``/``other``; else empty."""
    first = (value or "").strip().upper()[:1]
    return first if first in ("M", "F", "O") else ""


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _float_or_none(value) -> float | None:
    try:
        return None if value is None or value == "" else float(value)
    except (TypeError, ValueError):
        return None


def _acquired_at(ds) -> str | None:
    raw = _text(ds.get("AcquisitionDateTime"))
    if not raw:
        date, time = _text(ds.get("ContentDate")), _text(ds.get("ContentTime"))
        raw = f"{date}{time or ''}" if date else None
    if not raw or len(raw) < 8 or not (raw[:8].isascii() and raw[:8].isdigit()):
        return None
    iso = f"{raw[0:4]}-{raw[4:6]}-{raw[6:8]}"
    clock = raw[8:14]
    if len(clock) >= 4 and clock.isascii() and clock.isdigit():
        iso += f"T{clock[0:2]}:{clock[2:4]}" + (f":{clock[4:6]}" if len(clock) == 6 else "")
    return iso


# ---------------------------------------------------------------------------- writing


def record_to_dataset(record: ECGRecord, *, sop_class: str | None = None, uid_key: str | None = None):
    """A pydicom ``FileDataset`` holding ``record`` as a DICOM ECG.

    The SOP class is 12-lead ECG Waveform Storage when the record fits that IOD
    (200-1000 Hz, at most 16384 samples), else General ECG Waveform Storage. Samples are
    int16 at 1 uV per count unless the amplitude needs a coarser sensitivity.

    UIDs are fresh random UIDs (right for real exports) unless ``uid_key`` is given:
    then they are hashed from it, so that e.g. a seeded synthetic cohort is byte-identical.

    Raises:
        BadWaveformError: the record has NaN samples (int16 has no NaN).
    """
    from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

    signal = np.asarray(record.signal, dtype=np.float64)
    if not np.all(np.isfinite(signal)):
        raise BadWaveformError("cannot write an ECG with NaN or infinite samples to DICOM")
    fits_twelve_lead = (
        _TWELVE_LEAD_FS[0] <= record.fs <= _TWELVE_LEAD_FS[1] and record.n_samples <= _TWELVE_LEAD_MAX_SAMPLES
    )
    sop = sop_class or (TWELVE_LEAD_ECG_SOP_CLASS if fits_twelve_lead else GENERAL_ECG_SOP_CLASS)
    peak_uv = float(np.abs(signal).max(initial=0.0)) * 1000.0
    sensitivity = 1.0 if peak_uv <= _INT16_MAX else float(np.ceil(peak_uv / _INT16_MAX * 100.0) / 100.0)
    counts = np.rint(signal * 1000.0 / sensitivity).astype("<i2")  # (leads, T)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop)
    def new_uid(kind: str) -> UID:
        return generate_uid(entropy_srcs=["lasan", uid_key, kind]) if uid_key is not None else generate_uid()

    meta.MediaStorageSOPInstanceUID = new_uid("sop")
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)  # type: ignore[arg-type]  # in memory: no file name
    now = datetime.now(timezone.utc)
    acquired = (record.acquisition.acquired_at or "").replace("-", "").replace(":", "").replace("T", "")
    date = acquired[:8] if len(acquired) >= 8 else now.strftime("%Y%m%d")
    time = acquired[8:14] if len(acquired) >= 12 else now.strftime("%H%M%S")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = sop
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = new_uid("study")
    ds.SeriesInstanceUID = new_uid("series")
    ds.Modality = "ECG"
    ds.StudyDate = ds.ContentDate = date
    ds.StudyTime = ds.ContentTime = time
    ds.AcquisitionDateTime = date + time
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ReferringPhysicianName = ""
    # Identities from HL7 / vendor XML are free text ("1961-02-03", "female", long names):
    # written in each attribute's VR, or the object fails validation (dciodvfy).
    ds.AccessionNumber = vr_text(record.patient.accession_number, 16)
    ds.PatientName = vr_text(record.patient.name)
    ds.PatientID = vr_text(record.patient.patient_id)
    ds.PatientBirthDate = vr_date(record.patient.birth_date)
    ds.PatientSex = vr_sex(record.patient.sex)
    ds.Manufacturer = vr_text(record.acquisition.manufacturer) or "LASAN"
    ds.ManufacturerModelName = vr_text(record.acquisition.device)
    ds.AcquisitionContextSequence = []

    channels = []
    for lead in record.leads:
        channel = Dataset()
        source = Dataset()
        source.CodeValue = SCPECG_CODES[lead]
        source.CodingSchemeDesignator = "SCPECG"
        source.CodingSchemeVersion = "1.3"
        source.CodeMeaning = DICOM_CODE_MEANINGS[lead]
        channel.ChannelSourceSequence = [source]
        channel.ChannelSensitivity = f"{sensitivity:g}"
        units = Dataset()
        units.CodeValue = "uV"
        units.CodingSchemeDesignator = "UCUM"
        units.CodingSchemeVersion = "1.4"
        units.CodeMeaning = "microvolt"
        channel.ChannelSensitivityUnitsSequence = [units]
        channel.ChannelSensitivityCorrectionFactor = "1"
        channel.ChannelBaseline = "0"
        channel.ChannelSampleSkew = "0"
        channel.WaveformBitsStored = 16
        if record.acquisition.filter_low_hz is not None:
            channel.FilterLowFrequency = f"{record.acquisition.filter_low_hz:g}"
        if record.acquisition.filter_high_hz is not None:
            channel.FilterHighFrequency = f"{record.acquisition.filter_high_hz:g}"
        channels.append(channel)

    group = Dataset()
    # No MultiplexGroupTimeOffset: PS3.3 C.10.9 makes it Type 1C, required only when
    # AcquisitionDateTime is absent and not allowed otherwise (dciodvfy flags it); we always
    # write AcquisitionDateTime, which is the group's time reference.
    group.WaveformOriginality = "ORIGINAL"
    group.NumberOfWaveformChannels = len(record.leads)
    group.NumberOfWaveformSamples = record.n_samples
    group.SamplingFrequency = f"{record.fs:g}"
    group.MultiplexGroupLabel = "RHYTHM"
    group.ChannelDefinitionSequence = channels
    group.WaveformBitsAllocated = 16
    group.WaveformSampleInterpretation = "SS"
    group.WaveformData = np.ascontiguousarray(counts.T).tobytes()  # interleaved: sample-major
    ds.WaveformSequence = [group]
    return ds


def dicom_bytes(record: ECGRecord, *, sop_class: str | None = None, uid_key: str | None = None) -> bytes:
    """The bytes of a DICOM Part 10 file holding ``record`` (see :func:`record_to_dataset`)."""
    buffer = io.BytesIO()
    record_to_dataset(record, sop_class=sop_class, uid_key=uid_key).save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dicom(
    record: ECGRecord, path: str | os.PathLike[str], *, sop_class: str | None = None, uid_key: str | None = None
) -> Path:
    """Write ``record`` as a DICOM ECG file and return its path.

    Raises:
        BadWaveformError: see :func:`record_to_dataset`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_bytes(record, sop_class=sop_class, uid_key=uid_key))
    return path


def with_source(record: ECGRecord, source_format: str) -> ECGRecord:
    """``record`` relabelled as coming from ``source_format`` (for DICOM wrapped in HL7)."""
    return replace(record, acquisition=replace(record.acquisition, source_format=source_format))
