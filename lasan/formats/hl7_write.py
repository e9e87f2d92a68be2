"""Build HL7 v2 ORU^R01 messages that carry an ECG (the reader in :mod:`.hl7` reads them back).

Two styles:

* ``"na"`` (IHE PCD-style): one NM OBX ``67981^MDC_ATTR_SAMP_RATE^MDC`` with the rate in
  ``264608^MDC_DIM_PER_SEC^MDC``, then one NA OBX per lead coded with its MDC code.
  Samples are integers in microvolts (``266419^MDC_DIM_MICRO_VOLT^MDC``): 1 uV is finer
  than any ECG amplifier's noise, and integers keep the message small. ``na_units="mV"``
  writes millivolts with 4 decimals (0.1 uV) instead.
* ``"ed"``: one ED OBX ``^application^DICOM^Base64^<data>`` holding the record as a
  DICOM 12-lead ECG (:func:`lasan.formats.dicom.dicom_bytes`).
"""

from __future__ import annotations

import base64
from datetime import datetime, timezone

import numpy as np

from ..errors import BadWaveformError, ConfigError
from ..leads import mdc_code
from ..record import ECGRecord
from .hl7 import CHARSETS, escape

__all__ = ["build_oru", "ECG_SERVICE_CODE"]

ECG_SERVICE_CODE = "11524-6^EKG study^LN"  # LOINC for OBR-4 / the ED OBX-3
_DELIMS = "|^~\\&"
_RATE_CODE = "67981^MDC_ATTR_SAMP_RATE^MDC"
_RATE_UNITS = "264608^MDC_DIM_PER_SEC^MDC"
_NA_UNITS = {"uV": "266419^MDC_DIM_MICRO_VOLT^MDC", "mV": "266418^MDC_DIM_MILLI_VOLT^MDC"}


def build_oru(
    record: ECGRecord,
    *,
    style: str = "na",
    control_id: str,
    sending_application: str = "LASAN",
    sending_facility: str = "",
    receiving_application: str = "",
    receiving_facility: str = "",
    message_datetime: datetime | None = None,
    processing_id: str = "P",
    version: str = "2.6",
    charset: str = "UNICODE UTF-8",
    placer_order_number: str = "",
    filler_order_number: str = "",
    include_patient: bool = True,
    na_units: str = "uV",
    uid_key: str | None = None,
) -> bytes:
    """An ORU^R01 message (segments ended by CR, no MLLP framing) carrying ``record``.

    Args:
        record: the ECG.
        style: ``"na"`` (one NA OBX per lead) or ``"ed"`` (base64 DICOM).
        control_id: MSH-10.
        message_datetime: MSH-7; now (UTC) when None.
        charset: MSH-18; the message is encoded with it.
        include_patient: write PID-3/5/7/8 from ``record.patient``.
        na_units: ``"uV"`` (integers) or ``"mV"`` (4 decimals) for NA samples.
        uid_key: ED style only: derive the embedded DICOM's UIDs from this key
            (deterministic output) instead of fresh random UIDs.

    Raises:
        ConfigError: unknown style, units or charset.
        BadWaveformError: NaN samples (HL7 NA and DICOM cannot carry them here).
    """
    if style not in ("na", "ed"):
        raise ConfigError(f"HL7 ECG style must be 'na' or 'ed', got {style!r}")
    if na_units not in _NA_UNITS:
        raise ConfigError(f"na_units must be 'uV' or 'mV', got {na_units!r}")
    codec = CHARSETS.get(charset.upper())
    if codec is None:
        raise ConfigError(f"unknown HL7 character set {charset!r}; use one of {sorted(CHARSETS)}")
    if not np.all(np.isfinite(record.signal)):
        raise BadWaveformError("cannot write an ECG with NaN or infinite samples to HL7")
    when = (message_datetime or datetime.now(timezone.utc)).strftime("%Y%m%d%H%M%S")
    observed = _hl7_time(record.acquisition.acquired_at) or when
    msh = [
        "MSH", _DELIMS[1:], _e(sending_application), _e(sending_facility), _e(receiving_application),
        _e(receiving_facility), when, "", "ORU^R01^ORU_R01", _e(control_id), processing_id, version,
        "", "", "AL", "NE", "", charset,
    ]
    segments = ["|".join(msh)]
    patient = record.patient
    if include_patient:
        segments.append(
            "|".join([
                "PID", "1", "", f"{_e(patient.patient_id or '')}^^^^MR" if patient.patient_id else "", "",
                "^".join(_e(part) for part in (patient.name or "").split("^")), "",
                _e(patient.birth_date or ""), _e(patient.sex or ""),
            ])
        )
    else:
        segments.append("PID|1")
    segments.append(
        f"OBR|1|{_e(placer_order_number)}|{_e(filler_order_number)}|{ECG_SERVICE_CODE}|||{observed}"
    )
    if style == "na":
        segments += _na_segments(record, na_units, observed)
    else:
        from .dicom import dicom_bytes

        data = base64.b64encode(dicom_bytes(record, uid_key=uid_key)).decode("ascii")
        segments.append(f"OBX|1|ED|{ECG_SERVICE_CODE}|1|^application^DICOM^Base64^{data}||||||F|||{observed}")
    return ("\r".join(segments) + "\r").encode(codec)


def _na_segments(record: ECGRecord, units: str, observed: str) -> list[str]:
    lines = [f"OBX|1|NM|{_RATE_CODE}|1.0.0.1|{record.fs:g}|{_RATE_UNITS}|||||F|||{observed}"]
    if units == "uV":
        counts = np.rint(record.signal.astype(np.float64) * 1000.0).astype(np.int64)
        values = ["^".join(map(str, row.tolist())) for row in counts]
    else:
        values = ["^".join(np.char.mod("%.4f", row.astype(np.float64)).tolist()) for row in record.signal]
    for k, (lead, value) in enumerate(zip(record.leads, values, strict=True), start=2):
        lines.append(f"OBX|{k}|NA|{mdc_code(lead)}|1.0.0.{k}|{value}|{_NA_UNITS[units]}|||||F|||{observed}")
    return lines


def _e(text: str) -> str:
    return escape(text, _DELIMS)


def _hl7_time(iso: str | None) -> str | None:
    if not iso:
        return None
    digits = "".join(ch for ch in iso.split("+")[0] if ch.isdigit())
    return digits[:14] if len(digits) >= 8 else None
