"""Signal-quality findings for an ECG record.

Checks return structured findings; the caller decides which are fatal (``lasan
inspect`` reports them all, scoring refuses only what preprocessing cannot handle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dsp import bandpass
from .preprocessing import InputSpec
from .record import ECGRecord

__all__ = ["QualityFinding", "check_quality"]

FLAT_PEAK_TO_PEAK_MV = 0.02  # below this a lead carries no cardiac signal (lead-off)
SATURATION_FRACTION = 0.02  # share of samples pinned at the lead's extreme value
IMPLAUSIBLE_AMPLITUDE_MV = 15.0  # beyond any surface-ECG voltage: wrong units or gain
REVERSAL_P_MV = 0.03  # an inverted P in lead I must be at least this deep to count


@dataclass(frozen=True)
class QualityFinding:
    """One quality problem. ``severity`` is "error" (cannot be scored) or "warning"."""

    code: str  # missing_lead | derived_lead | flat_lead | saturation | nan | too_short | implausible_amplitude
    #          | limb_lead_reversal
    severity: str
    message: str
    lead: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "severity": self.severity, "lead": self.lead, "message": self.message}


def check_quality(record: ECGRecord, spec: InputSpec = InputSpec()) -> list[QualityFinding]:
    """All quality findings for ``record`` against the model input ``spec``."""
    findings: list[QualityFinding] = []
    for lead in spec.leads:
        if lead not in record.leads:
            findings.append(QualityFinding("missing_lead", "error", f"lead {lead} is missing", lead))
    for lead in record.derived_leads:
        findings.append(
            QualityFinding("derived_lead", "warning", f"lead {lead} was derived from other limb leads", lead)
        )
    if record.duration_s < spec.min_duration_s:
        findings.append(
            QualityFinding(
                "too_short", "error",
                f"{record.duration_s:.2f} s recorded; the model needs at least {spec.min_duration_s:g} s",
            )
        )
    elif record.duration_s < spec.duration_s:
        findings.append(
            QualityFinding(
                "too_short", "warning",
                f"{record.duration_s:.2f} s recorded; the model window is {spec.duration_s:g} s (zero-padded)",
            )
        )
    for lead, row in zip(record.leads, record.signal, strict=True):
        finite = np.isfinite(row)
        if not finite.all():
            findings.append(
                QualityFinding("nan", "error", f"{int((~finite).sum())} non-finite samples in lead {lead}", lead)
            )
            row = row[finite]
            if row.size == 0:
                continue
        peak_to_peak = float(row.max() - row.min())
        if peak_to_peak < FLAT_PEAK_TO_PEAK_MV:
            findings.append(
                QualityFinding("flat_lead", "warning", f"lead {lead} is flat ({peak_to_peak:.3f} mV peak to peak)", lead)
            )
            continue
        pinned = max(np.mean(row == row.max()), np.mean(row == row.min()))
        if pinned > SATURATION_FRACTION:
            findings.append(
                QualityFinding(
                    "saturation", "warning",
                    f"lead {lead} sits at its extreme value in {100 * pinned:.1f}% of samples (clipped amplifier?)",
                    lead,
                )
            )
        if np.abs(row).max() > IMPLAUSIBLE_AMPLITUDE_MV:
            findings.append(
                QualityFinding(
                    "implausible_amplitude", "warning",
                    f"lead {lead} reaches {np.abs(row).max():.1f} mV; check units and gain", lead,
                )
            )
    reversal = _limb_lead_reversal(record)
    if reversal is not None:
        findings.append(reversal)
    return findings


def _limb_lead_reversal(record: ECGRecord) -> QualityFinding | None:
    """A warning when lead I looks recorded with the arm electrodes swapped (LA <-> RA).

    Swapping LA and RA inverts lead I, exchanges II and III and aVR and aVL, and leaves
    aVF alone. Its signature is lead I with both a net-negative QRS *and* an inverted
    P wave (Batchvarov et al., Europace 2007; Rudiger et al. 2007): right-axis deviation
    makes the QRS in I negative but keeps the sinus P upright. Dextrocardia looks the
    same, so the message names both. Checked on the median beat of the 0.5-40 Hz
    filtered signal; silent when lead I is missing, non-finite, or fewer than 4 beats
    are found. Vertical hearts (QRS axis near +90 deg) can be missed: their reversed
    lead I still has a small positive QRS.
    """
    if "I" not in record.leads or record.duration_s < 3.0:
        return None
    x = np.asarray(record.signal, dtype=np.float64)
    if not np.isfinite(x).all():
        return None
    fs = record.fs
    x = bandpass(x, fs, 0.5, 40.0)
    energy = np.convolve(np.abs(np.diff(x, axis=1)).sum(axis=0), np.ones(max(int(0.02 * fs), 1)), mode="same")
    above = energy > 0.35 * np.quantile(energy, 0.995)
    starts = np.nonzero(np.diff(above.astype(np.int8), prepend=0) == 1)[0]
    pre, post = int(0.32 * fs), int(0.1 * fs)
    peaks: list[int] = []
    for start in starts:
        peak = int(start + np.argmax(energy[start : start + int(0.1 * fs)]))
        if (not peaks or peak - peaks[-1] > 0.25 * fs) and pre <= peak < x.shape[1] - post:
            peaks.append(peak)
    if len(peaks) < 4:
        return None
    lead_i = np.median(np.stack([x[record.leads.index("I"), p - pre : p + post] for p in peaks]), axis=0)
    lead_i = lead_i - np.median(lead_i[: pre - int(0.05 * fs)])  # mostly T-P and PR segments: the isoelectric level
    qrs = lead_i[pre - int(0.05 * fs) : pre + int(0.06 * fs)]
    p_wave = lead_i[pre - int(0.26 * fs) : pre - int(0.07 * fs)]
    p_extreme = float(p_wave[np.argmax(np.abs(p_wave))])
    if qrs.sum() < 0 and p_extreme <= -REVERSAL_P_MV and qrs.max() < -qrs.min():
        return QualityFinding(
            "limb_lead_reversal", "warning",
            "lead I has an inverted P wave and a negative QRS: the left- and right-arm electrodes look "
            "swapped (leads I, II/III and aVR/aVL are then wrong); check the electrodes and repeat the ECG, "
            "or, if they were placed correctly, consider dextrocardia",
            "I",
        )
    return None
