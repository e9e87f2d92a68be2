"""The model-input contract: an ECG becomes a ``(8, 2500)`` float32 array here, and only here.

Training, evaluation, the Triton ``preprocess`` model, the client and the tests all
call :func:`preprocess_array` (or :func:`preprocess`, its record wrapper). ``lasan build``
copies this module and the other numpy-only modules it imports (:data:`KERNEL_MODULES`)
into the preprocess model's version folder, so the served pipeline runs this same code.

Choices (all fields of :class:`InputSpec`, stored in every checkpoint):

* Leads I, II, V1-V6 in that order (III and the augmented leads are linear
  combinations of I and II).
* 500 Hz, 2,500 samples = 5 s, per a secondary summary of the paper (the primary one
  gives only "2,500 samples").
* Band-pass 0.5-45 Hz, zero-phase, on the whole record before windowing. 0.5 Hz
  removes respiratory baseline wander (AHA/ACCF/HRS 2007 accept 0.5-0.67 Hz high-pass
  when ST measurement is not the goal); 45 Hz removes 50 and 60 Hz mains without a
  notch while keeping QRS, epsilon-wave and T-wave morphology that the classifier needs.
* The centre 5 s of the record: carts start and stop recording mid-artefact (electrode
  settling, lead-off at the end), and filtering edge effects sit at the record ends.
  Shorter records are zero-padded at the end after normalisation (zero = lead mean).
* Per-lead z-score over the window, ``(x - mean) / (std + eps)`` with ``eps`` in mV, so
  a flat lead becomes zeros instead of amplified quantisation noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from .dsp import bandpass, resample
from .errors import BadWaveformError, ConfigError, MissingLeadsError
from .leads import MODEL_LEADS, STANDARD_LEADS, derive_missing_leads

if TYPE_CHECKING:  # the record module is not part of the Triton kernel
    from .record import ECGRecord

__all__ = ["InputSpec", "KERNEL_MODULES", "check_input", "preprocess", "preprocess_array", "leads_for_rows"]

# Modules copied into the Triton preprocess model; each imports only numpy and these.
KERNEL_MODULES: tuple[str, ...] = ("errors", "leads", "dsp", "preprocessing")

# Sampling rates accepted from the wire: below 100 Hz a 12-lead ECG loses its QRS,
# above 20 kHz it is not a resting ECG (pacemaker-detection channels are not supported).
MIN_FS_HZ = 100.0
MAX_FS_HZ = 20000.0


@dataclass(frozen=True)
class InputSpec:
    """What the model expects as input; stored in checkpoints and Triton configs."""

    fs: float = 500.0  # Hz after resampling
    n_samples: int = 2500  # window length at ``fs`` (5 s)
    leads: tuple[str, ...] = MODEL_LEADS
    highpass_hz: float | None = 0.5
    lowpass_hz: float | None = 45.0
    window: str = "center"  # "center" or "start": which part of a longer record
    zscore_eps_mv: float = 1e-3
    min_duration_s: float = 2.0  # shorter records are refused, not padded into noise

    def __post_init__(self) -> None:
        if self.window not in ("center", "start"):
            raise ConfigError(f"InputSpec.window must be 'center' or 'start', got {self.window!r}")
        if self.fs <= 0 or self.n_samples <= 0:
            raise ConfigError("InputSpec.fs and InputSpec.n_samples must be positive")
        unknown = [lead for lead in self.leads if lead not in STANDARD_LEADS]
        if unknown:
            raise ConfigError(f"InputSpec.leads has unknown lead names {unknown}")
        object.__setattr__(self, "leads", tuple(self.leads))

    @property
    def duration_s(self) -> float:
        return self.n_samples / self.fs

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["leads"] = list(self.leads)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InputSpec:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown InputSpec field(s) {sorted(unknown)}")
        return cls(**{**data, "leads": tuple(data.get("leads", MODEL_LEADS))})


def leads_for_rows(n_rows: int) -> tuple[str, ...]:
    """Canonical lead order of a bare array: 8 rows = model leads, 12 = standard 12-lead."""
    if n_rows == len(MODEL_LEADS):
        return MODEL_LEADS
    if n_rows == len(STANDARD_LEADS):
        return STANDARD_LEADS
    raise BadWaveformError(
        f"an ECG array must have 8 leads (I, II, V1-V6) or 12 leads (standard order), got {n_rows}"
    )


def preprocess_array(
    signal: np.ndarray,
    fs: float,
    leads: tuple[str, ...] | None = None,
    spec: InputSpec = InputSpec(),
) -> np.ndarray:
    """Turn one ECG ``(leads, samples)`` in mV into model input ``(len(spec.leads), spec.n_samples)``.

    Args:
        signal: samples in mV, one row per lead.
        fs: sampling rate in Hz.
        leads: canonical names of the rows; None means 8 or 12 leads in canonical order.
        spec: the model's input contract.

    Raises:
        BadWaveformError: wrong shape, non-finite samples, implausible rate, too short.
        MissingLeadsError: a lead in ``spec.leads`` is absent and not derivable.
    """
    signal, leads, fs = check_input(signal, fs, leads, spec)
    x = signal[[leads.index(lead) for lead in spec.leads]].astype(np.float64)  # (8, T)
    x = x - np.median(x, axis=1, keepdims=True)  # large DC offsets would ring at the edges
    x = resample(x, fs, spec.fs)
    x = bandpass(x, spec.fs, spec.highpass_hz, spec.lowpass_hz)
    x = _window(x, spec)
    mean = x.mean(axis=1, keepdims=True)
    std = x.std(axis=1, keepdims=True)
    x = (x - mean) / (std + spec.zscore_eps_mv)
    if x.shape[1] < spec.n_samples:
        x = np.pad(x, ((0, 0), (0, spec.n_samples - x.shape[1])))
    return x.astype(np.float32)


def check_input(
    signal: np.ndarray,
    fs: float,
    leads: tuple[str, ...] | None = None,
    spec: InputSpec = InputSpec(),
) -> tuple[np.ndarray, tuple[str, ...], float]:
    """The model's input contract, on its own: what :func:`preprocess_array` refuses, so that the
    intake refuses the same ECGs before it answers AA (the served preprocess model runs this code).

    Returns:
        ``(signal, leads, fs)``, with the model leads that were missing derived.

    Raises:
        BadWaveformError: wrong shape, non-finite samples, rate outside 100-20000 Hz, too short.
        MissingLeadsError: a lead in ``spec.leads`` is absent and not derivable.
    """
    signal = np.asarray(signal)
    if signal.ndim != 2:
        raise BadWaveformError(f"an ECG must be a 2-D array (leads, samples), got shape {signal.shape}")
    if leads is None:
        leads = leads_for_rows(signal.shape[0])
    elif len(leads) != signal.shape[0]:
        raise BadWaveformError(f"{signal.shape[0]} waveform rows but {len(leads)} lead names")
    fs = float(fs)
    if not (np.isfinite(fs) and MIN_FS_HZ <= fs <= MAX_FS_HZ):
        raise BadWaveformError(
            f"sampling rate {fs:g} Hz is outside the supported {MIN_FS_HZ:g}-{MAX_FS_HZ:g} Hz range"
        )
    if not np.all(np.isfinite(signal)):
        bad = sorted({leads[i] for i in np.nonzero(~np.isfinite(signal))[0]})
        raise BadWaveformError(f"lead(s) {', '.join(bad)} contain NaN or infinite samples")
    duration = signal.shape[1] / fs
    if duration < spec.min_duration_s:
        raise BadWaveformError(
            f"the ECG is {duration:.2f} s long; at least {spec.min_duration_s:g} s are needed"
        )
    missing = [lead for lead in spec.leads if lead not in leads]
    if missing:
        signal, leads, _ = derive_missing_leads(signal, tuple(leads))
        missing = [lead for lead in spec.leads if lead not in leads]
        if missing:
            raise MissingLeadsError(missing, leads)
    return signal, tuple(leads), fs


def _window(x: np.ndarray, spec: InputSpec) -> np.ndarray:
    n = x.shape[1]
    if n <= spec.n_samples:
        return x
    start = (n - spec.n_samples) // 2 if spec.window == "center" else 0
    return x[:, start : start + spec.n_samples]


def preprocess(record: ECGRecord, spec: InputSpec = InputSpec()) -> np.ndarray:
    """:func:`preprocess_array` for an :class:`~lasan.record.ECGRecord`."""
    return preprocess_array(record.signal, record.fs, record.leads, spec)
