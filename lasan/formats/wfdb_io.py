"""WFDB records (PhysioNet): PTB, PTB-XL and any 12-lead record ``wfdb.rdrecord`` reads.

Signal names map through :func:`lasan.leads.canonical_lead` (``i``, ``AVR``, ``v1`` ...);
channels outside the 12-lead set (Frank ``vx vy vz``) are skipped with a note. Each
channel's physical units (mV, uV, V) are converted to mV.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import BadWaveformError, MalformedECGError, MissingLeadsError
from ..leads import STANDARD_LEADS, canonical_lead
from ..record import Acquisition, ECGRecord

__all__ = ["read_wfdb", "write_wfdb", "wfdb_record_base"]

_UNITS_TO_MV = {"mv": 1.0, "uv": 1e-3, "µv": 1e-3, "microvolt": 1e-3, "millivolt": 1.0, "v": 1e3, "volt": 1e3}
_RECORD_NAME = re.compile(r"^[-\w]+$")
_INT16_MAX = 32767


def wfdb_record_base(path: str | os.PathLike[str]) -> Path:
    """The record base path (no extension) for a ``.hea``/``.dat`` path or a base path."""
    path = Path(path)
    return path.with_suffix("") if path.suffix.lower() in (".hea", ".dat", ".mat") else path


def read_wfdb(path: str | os.PathLike[str]) -> ECGRecord:
    """Read a WFDB record (``.hea`` path or record base path) into an ECG record in mV.

    Raises:
        MalformedECGError: header or signal file missing, unreadable or inconsistent.
        BadWaveformError: a 12-lead channel has units that are not a voltage.
        MissingLeadsError: no channel is one of the 12 standard leads.
    """
    import wfdb

    base = wfdb_record_base(path)
    if not base.with_suffix(".hea").exists():
        raise MalformedECGError(f"WFDB header {base.with_suffix('.hea')} does not exist")
    try:
        rec = wfdb.rdrecord(str(base))
    except Exception as exc:  # wfdb raises ValueError, OSError, struct errors... on broken input
        raise MalformedECGError(
            f"WFDB record {base} could not be read ({type(exc).__name__}: {exc}); check that the "
            ".hea header and its signal file(s) are complete"
        ) from exc
    if rec.p_signal is None or rec.fs is None:
        raise MalformedECGError(f"WFDB record {base} has no signal data or no sampling rate")
    rows: list[np.ndarray] = []
    leads: list[str] = []
    units_seen: set[str] = set()
    notes: list[str] = []
    for index, name in enumerate(rec.sig_name or []):
        lead = canonical_lead(name)
        if lead is None:
            notes.append(f"channel {name!r} is not one of the 12 standard leads; ignored")
            continue
        if lead in leads:
            notes.append(f"channel {name!r} repeats lead {lead}; the first one is used")
            continue
        unit = str((rec.units or [""] * (index + 1))[index] or "").strip()
        factor = _UNITS_TO_MV.get(unit.lower())
        if factor is None:
            raise BadWaveformError(
                f"WFDB record {base}: lead {lead} ({name}) is in units {unit or '(none)'!r}; "
                "LASAN converts only mV, uV and V"
            )
        rows.append(np.asarray(rec.p_signal[:, index], dtype=np.float64) * factor)
        leads.append(lead)
        units_seen.add("uV" if factor == 1e-3 else "mV" if factor == 1.0 else "V")
    if not leads:
        raise MissingLeadsError(STANDARD_LEADS, [])
    acquisition = Acquisition(
        source_format="wfdb",
        acquired_at=_base_datetime(rec),
        original_units="/".join(sorted(units_seen)),
        notes=tuple(notes),
    )
    record = ECGRecord(np.stack(rows).astype(np.float32), float(rec.fs), tuple(leads), acquisition)
    return record.in_standard_order().with_derived_leads()


def write_wfdb(record: ECGRecord, path: str | os.PathLike[str], *, lower_case_names: bool = True) -> Path:
    """Write ``record`` as a WFDB record (format 16, 1 uV per count, PTB-XL style names).

    Args:
        path: the record base path or its ``.hea`` path; the name must be letters,
            digits, ``_`` or ``-``.
        lower_case_names: ``i ii v1 avr`` as PTB/PTB-XL write them, else canonical names.

    Returns:
        The ``.hea`` path.

    Raises:
        BadWaveformError: NaN samples.
        MalformedECGError: a record name WFDB cannot use.
    """
    base = wfdb_record_base(path)
    if not _RECORD_NAME.match(base.name):
        raise MalformedECGError(f"WFDB record name {base.name!r} may contain only letters, digits, '_' and '-'")
    signal = record.signal.astype(np.float64)  # (leads, T)
    if not np.all(np.isfinite(signal)):
        raise BadWaveformError("cannot write an ECG with NaN or infinite samples to WFDB")
    peak = float(np.abs(signal).max(initial=0.0))
    gain = 1000.0 if peak * 1000.0 <= _INT16_MAX else float(np.floor(_INT16_MAX / peak))
    counts = np.rint(signal * gain).astype(np.int64)  # (leads, T)
    # Written directly rather than with wfdb.wrsamp, which validates every header field
    # through pandas (~80 ms a record); the format is the one wrsamp writes (format 16,
    # one .dat, initial value and checksum per signal) and wfdb.rdrecord reads it back.
    fs = str(int(record.fs)) if round(record.fs, 8) == float(int(record.fs)) else str(record.fs)
    lines = [f"{base.name} {len(record.leads)} {fs} {record.n_samples}"]
    for lead, row in zip(record.leads, counts, strict=True):
        name = lead.lower() if lower_case_names else lead
        lines.append(f"{base.name}.dat 16 {gain}(0)/mV 16 0 {int(row[0])} {int(row.sum()) % 65536} 0 {name}")
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".dat").write_bytes(np.ascontiguousarray(counts.T).astype("<i2").tobytes())
    base.with_suffix(".hea").write_text("\n".join(lines) + "\n", encoding="ascii")
    return base.with_suffix(".hea")


def _base_datetime(rec) -> str | None:
    date, time = getattr(rec, "base_date", None), getattr(rec, "base_time", None)
    if date is None:
        return None
    return f"{date.isoformat()}T{time.isoformat()}" if time is not None else date.isoformat()
