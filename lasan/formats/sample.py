"""A deterministic, physiologically shaped 12-lead test ECG.

Tests, benchmarks and the demo need an ECG whose leads obey Einthoven's and
Goldberger's laws exactly (so derivation can be checked) and whose waveform looks
like a resting ECG (P, QRS, T at plausible amplitudes and axes). A heart vector
``(x, y, z)`` is built from Gaussian waves per beat and projected onto each lead's
direction; that is the dipole model behind the 12-lead system.

This is not the cohort generator (``lasan.train.synth``): it has no disease model.
"""

from __future__ import annotations

import numpy as np

from ..leads import STANDARD_LEADS
from ..record import Acquisition, ECGRecord, PatientIdentity

__all__ = ["sample_ecg"]

# (centre s after R, width s, amplitude mV along x, y, z) of each wave of one beat.
_WAVES: tuple[tuple[float, float, float, float, float], ...] = (
    (-0.16, 0.025, 0.08, 0.12, 0.03),  # P
    (-0.025, 0.008, -0.05, -0.08, 0.15),  # Q
    (0.0, 0.011, 0.9, 1.1, -0.6),  # R
    (0.028, 0.010, -0.2, -0.25, 0.7),  # S
    (0.28, 0.06, 0.2, 0.3, -0.15),  # T
)
# Horizontal-plane angle (degrees from the patient's left, towards anterior) of V1..V6.
_PRECORDIAL_ANGLE = (115.0, 95.0, 75.0, 55.0, 30.0, 0.0)


def sample_ecg(
    fs: float = 500.0,
    duration_s: float = 10.0,
    *,
    heart_rate_bpm: float = 68.0,
    noise_mv: float = 0.01,
    seed: int = 0,
    leads: tuple[str, ...] = STANDARD_LEADS,
) -> ECGRecord:
    """A reproducible resting ECG in mV.

    Args:
        fs: sampling rate in Hz.
        duration_s: record length in seconds.
        heart_rate_bpm: mean heart rate; RR intervals vary by a few percent.
        noise_mv: standard deviation of white noise added to the heart vector.
        seed: seeds the RR variability and noise, so equal arguments give equal records.
        leads: canonical leads to keep, in the order given.

    Returns:
        An :class:`~lasan.record.ECGRecord` with source format ``"synthetic"`` and a
        made-up patient identity (useful to check that identifiers never leak).
    """
    rng = np.random.default_rng(seed)
    n = int(round(fs * duration_s))
    t = np.arange(n) / fs
    rr = 60.0 / heart_rate_bpm
    beats = [0.35 + 0.1 * rng.random()]
    while beats[-1] < duration_s + 1.0:
        beats.append(beats[-1] + rr * (1.0 + 0.03 * rng.standard_normal()))
    vec = np.zeros((3, n))
    for r_time in beats:
        for centre, width, *amp in _WAVES:
            # QT shortens with faster rhythm (Bazett): scale the T wave's position.
            shift = centre * np.sqrt(rr) if centre > 0.1 else centre
            bump = np.exp(-0.5 * ((t - r_time - shift) / width) ** 2)
            vec += np.asarray(amp)[:, None] * bump[None, :]
    vec += noise_mv * rng.standard_normal(vec.shape)
    vec[1] += 0.05 * np.sin(2 * np.pi * 0.25 * t)  # respiratory baseline wander
    x, y, z = vec
    lead_i = x
    lead_ii = 0.5 * x + np.sqrt(3) / 2 * y  # frontal-plane axis at +60 degrees
    rows = {
        "I": lead_i,
        "II": lead_ii,
        "III": lead_ii - lead_i,
        "aVR": -(lead_i + lead_ii) / 2,
        "aVL": lead_i - lead_ii / 2,
        "aVF": lead_ii - lead_i / 2,
    }
    for k, angle in enumerate(np.deg2rad(_PRECORDIAL_ANGLE), start=1):
        rows[f"V{k}"] = np.cos(angle) * x + np.sin(angle) * z + 0.15 * y
    return ECGRecord(
        signal=np.stack([rows[name] for name in leads]).astype(np.float32),
        fs=fs,
        leads=tuple(leads),
        acquisition=Acquisition(source_format="synthetic", manufacturer="LASAN", device="sample_ecg"),
        patient=PatientIdentity(patient_id="TEST-0001", name="Testperson^Anna", birth_date="19700101", sex="F"),
    )
