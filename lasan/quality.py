"""Signal-quality findings for an ECG record.

Checks return structured findings; the caller decides which are fatal (``lasan
inspect`` reports them all, scoring refuses only what preprocessing cannot handle).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .preprocessing import InputSpec
from .record import ECGRecord

__all__ = ["QualityFinding", "check_quality"]

FLAT_PEAK_TO_PEAK_MV = 0.02  # below this a lead carries no cardiac signal (lead-off)
SATURATION_FRACTION = 0.02  # share of samples pinned at the lead's extreme value
IMPLAUSIBLE_AMPLITUDE_MV = 15.0  # beyond any surface-ECG voltage: wrong units or gain


@dataclass(frozen=True)
class QualityFinding:
    """One quality problem. ``severity`` is "error" (cannot be scored) or "warning"."""

    code: str  # missing_lead | derived_lead | flat_lead | saturation | nan | too_short | implausible_amplitude
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
    return findings
