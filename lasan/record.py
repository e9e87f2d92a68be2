"""The ECG record: what every reader produces and every consumer takes.

A signal always travels with its sampling rate and lead names. Patient identifiers
live in :class:`PatientIdentity`, whose ``repr`` hides them, so that logging a record
(or an exception that carries one) cannot leak a name, MRN or birth date.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .errors import BadWaveformError
from .leads import STANDARD_LEADS, derive_missing_leads

__all__ = ["Acquisition", "PatientIdentity", "ECGRecord"]


@dataclass(frozen=True)
class Acquisition:
    """Where and how the ECG was recorded. Nothing here identifies the patient."""

    source_format: str  # "dicom" | "hl7-na" | "hl7-ed" | "wfdb" | "synthetic"
    manufacturer: str | None = None
    device: str | None = None
    acquired_at: str | None = None  # ISO 8601 when known
    original_units: str = "mV"  # units in the source before conversion to mV
    sop_class: str | None = None  # DICOM SOP Class name, when DICOM
    filter_low_hz: float | None = None
    filter_high_hz: float | None = None
    notes: tuple[str, ...] = ()
    # DICOM inputs: the source object's UIDs, so results (SR, encapsulated PDF) can reference it.
    study_uid: str | None = None
    series_uid: str | None = None
    sop_instance_uid: str | None = None


@dataclass(frozen=True)
class PatientIdentity:
    """Protected health information, kept apart from the waveform.

    ``repr`` and ``str`` never show the values: a record in a log line or a traceback
    says only which identifiers are present.
    """

    patient_id: str | None = field(default=None, repr=False)
    name: str | None = field(default=None, repr=False)
    birth_date: str | None = field(default=None, repr=False)
    sex: str | None = field(default=None, repr=False)
    accession_number: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        present = [k for k in ("patient_id", "name", "birth_date", "sex", "accession_number") if getattr(self, k)]
        return f"PatientIdentity(<redacted: {', '.join(present) or 'empty'}>)"

    __str__ = __repr__


@dataclass(frozen=True, repr=False)
class ECGRecord:
    """A resting ECG in millivolts.

    Attributes:
        signal: float32 ``(leads, samples)`` in mV.
        fs: sampling rate in Hz.
        leads: canonical lead names (see :mod:`lasan.leads`), one per row.
        acquisition: device and source metadata.
        patient: identifiers, held apart (redacted ``repr``).
        derived_leads: leads computed from others (Einthoven/Goldberger), not recorded.

    Raises:
        BadWaveformError: on construction, if shapes, rate or lead names disagree.
    """

    signal: np.ndarray
    fs: float
    leads: tuple[str, ...]
    acquisition: Acquisition
    patient: PatientIdentity = field(default_factory=PatientIdentity)
    derived_leads: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        sig = np.asarray(self.signal)
        if sig.ndim != 2:
            raise BadWaveformError(f"an ECG signal must be 2-D (leads, samples); got shape {sig.shape}")
        if sig.shape[0] != len(self.leads):
            raise BadWaveformError(f"{sig.shape[0]} waveform rows but {len(self.leads)} lead names")
        if len(set(self.leads)) != len(self.leads):
            raise BadWaveformError(f"duplicate lead names in {self.leads}")
        unknown = [name for name in self.leads if name not in STANDARD_LEADS]
        if unknown:
            raise BadWaveformError(f"non-canonical lead names {unknown}; map them with lasan.leads.canonical_lead")
        if not (np.isfinite(self.fs) and self.fs > 0):
            raise BadWaveformError(f"sampling rate must be a positive number of Hz, got {self.fs!r}")
        if sig.dtype != np.float32 or not sig.flags.c_contiguous:
            sig = np.ascontiguousarray(sig, dtype=np.float32)
        sig.setflags(write=False)
        object.__setattr__(self, "signal", sig)
        object.__setattr__(self, "fs", float(self.fs))
        object.__setattr__(self, "leads", tuple(self.leads))

    @property
    def n_samples(self) -> int:
        return int(self.signal.shape[1])

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def lead(self, name: str) -> np.ndarray:
        """One lead's samples (mV). Raises KeyError for a lead the record lacks."""
        return self.signal[self.leads.index(name)]

    def with_derived_leads(self) -> ECGRecord:
        """A copy with missing-but-derivable limb leads added (and flagged)."""
        signal, leads, derived = derive_missing_leads(self.signal, self.leads)
        if not derived:
            return self
        return replace(self, signal=signal, leads=leads, derived_leads=self.derived_leads + derived)

    def in_standard_order(self) -> ECGRecord:
        """A copy whose rows follow :data:`lasan.leads.STANDARD_LEADS` order."""
        order = [name for name in STANDARD_LEADS if name in self.leads]
        if tuple(order) == self.leads:
            return self
        return replace(self, signal=self.signal[[self.leads.index(n) for n in order]], leads=tuple(order))

    def __repr__(self) -> str:
        return (
            f"ECGRecord({self.acquisition.source_format}, {len(self.leads)} leads "
            f"{','.join(self.leads)}, {self.fs:g} Hz, {self.duration_s:.2f} s, patient={self.patient!r})"
        )
