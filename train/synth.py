"""Synthetic ARVC / LQTS / control cohort: physiologically grounded, deliberately not trivially separable.

SYNTHETIC DATA. No real patient is behind any record; the generator exists so that
training, evaluation, the Triton build and the hospital feed run end to end on a fresh
machine. A model trained on it learns this generator, not cardiology.

Signal model (:mod:`.synth_beats`): ECGSYN-style sum-of-Gaussian P/QRS/T/U waves of a
3-D heart vector (McSharry et al. 2003) projected on I, II and V1-V6, III/aVR/aVL/aVF
computed from I and II exactly as a cart does (Einthoven/Goldberger), plus local V1-V6
terms for right-ventricular changes. RR with respiratory sinus arrhythmia (4-8 % young,
~1-2 % old; 0.18-0.33 Hz) and a 0.08-0.12 Hz component; QT follows RR with exponent
0.35-0.45 and hysteresis. Noise per electrode: baseline wander (0.08 mV typical),
EMG (8 uV RMS typical, x4 in 10 % "tense" records), 50/60 Hz mains by site (notched
at two sites), electrode-motion steps (Poisson 0.15 per record), as in the NSTDB
noise types (Moody et al. 1984).

Patients (:mod:`.synth_phenotypes`), class mix 35 % ARVC / 35 % LQTS / 30 % control:

* controls: QTc men 400 +- 20 ms, women and children 410 +- 20 ms (Rautaharju et al.,
  AHA/ACCF/HRS 2009 recommendations); terminal activation duration (TAD) 42 +- 6 ms.
* LQTS: genotypes LQT1 45 %, LQT2 40 %, LQT3 15 %; 22 % concealed (QTc 435 +- 15 ms,
  mild T changes), the rest QTc LQT1 482, LQT2 490, LQT3 498 +- 26 ms (+10 ms adult
  women), so ~30 % of genotype-positive patients have QTc < 460 ms (Moss et al. 1995;
  Zhang et al. 2000; Priori/Schwartz). T morphology (Zhang 2000): LQT1 broad-based,
  LQT2 low-amplitude notched, LQT3 late peaked after a long isoelectric ST; the
  genotype-specific component points laterally, so I, aVL, V5, V6 carry it best, while
  QT prolongation is global. Schwartz-score QTc points (>= 480: 3, 460-479: 2, 450-459
  in men: 1) are in the manifest.
* ARVC (2010 Task Force criteria, Marcus et al., Circulation 2010): stages concealed
  25 % (no or minimal ECG change: incomplete penetrance), early 30 % (TWI V1-V2, TAD
  ~54 ms), overt 33 % (TWI V1-V3, TAD ~61 ms, epsilon waves 25 %, V1-V3 QRS voltage
  x0.7-0.95), advanced 12 % (TWI to V4-V6, TAD ~70 ms, epsilon 50 %, voltage x0.5-0.8).
* benign confounders in every class: juvenile T inversion V1-V3 (80 % under 12 y, 40 %
  12-15 y, 2-6 % adults), incomplete RBBB (4-8 %, +10 % in ARVC), early repolarisation
  (12 % young men, 4 % others), lateral T flattening (10 % over 50 y).

Sites differ in sampling rate (250, 257, 500, 1000 Hz), band-pass, ADC resolution,
calibration gain, mains frequency and file format (WFDB at three sites, DICOM at one,
HL7 ORU NA/ED at one); patients have 1-4 ECGs, 15 % of them at another site.
Full tables and what the model cannot represent: docs/synthetic_cohort.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lasan.errors import ConfigError
from lasan.formats.dicom import write_dicom
from lasan.formats.hl7_write import build_oru
from lasan.formats.wfdb_io import write_wfdb
from lasan.leads import STANDARD_LEADS
from lasan.record import Acquisition, ECGRecord, PatientIdentity
from lasan.train.manifest import ManifestRow, write_manifest
from lasan.train.synth_beats import (
    CartSettings,
    Rhythm,
    acquire,
    default_geometry,
    electrode_noise,
    render_leads,
    sample_rhythm,
)
from lasan.train.synth_phenotypes import PatientProfile, Visit, beat_template, sample_profile, sample_visit

__all__ = [
    "CLASS_MIX",
    "FORMATS",
    "Site",
    "SITES",
    "schwartz_qtc_points",
    "synthesize_ecg",
    "synthesize_patient",
    "generate_cohort",
]

log = logging.getLogger(__name__)

CLASS_MIX: dict[str, float] = {"ARVC": 0.35, "LQTS": 0.35, "control": 0.30}
FORMATS: tuple[str, ...] = ("wfdb", "dicom", "hl7")
_ECGS_PER_PATIENT = (0.35, 0.30, 0.20, 0.15)  # 1..4 ECGs; mean 2.15 (the paper: 1,344 ECGs / 645 patients)
_OTHER_SITE = 0.15


@dataclass(frozen=True)
class Site:
    """One acquisition site: its cart settings, mains frequency and what it sends."""

    name: str
    weight: float  # share of patients whose home site this is
    fs: float
    filter_low_hz: float
    filter_high_hz: float
    adc_gain: float  # units per mV: 200 = 5 uV, 400 = 2.5 uV, 1000 = 1 uV resolution
    calibration: float
    mains_hz: float
    notch: bool
    format: str  # "wfdb" | "dicom" | "hl7"
    durations_s: tuple[float, ...] = (10.0,)
    duration_p: tuple[float, ...] = (1.0,)
    manufacturer: str = "LASAN synthetic"

    def cart(self) -> CartSettings:
        return CartSettings(self.fs, self.filter_low_hz, self.filter_high_hz, self.adc_gain, self.calibration)


SITES: tuple[Site, ...] = (
    Site("site-A", 0.32, 500.0, 0.05, 150.0, 200.0, 1.00, 60.0, False, "wfdb"),
    Site("site-B", 0.12, 1000.0, 0.05, 150.0, 400.0, 1.03, 60.0, False, "dicom"),
    Site("site-C", 0.24, 250.0, 0.67, 40.0, 200.0, 0.97, 50.0, True, "wfdb", (10.0, 12.0), (0.8, 0.2)),
    Site("site-D", 0.20, 257.0, 0.05, 100.0, 1000.0, 1.00, 60.0, False, "wfdb"),
    Site("site-E", 0.12, 500.0, 0.15, 100.0, 400.0, 1.02, 50.0, True, "hl7", (10.0, 8.0), (0.85, 0.15)),
)


def schwartz_qtc_points(qtc_ms: float, sex: str) -> int:
    """Schwartz-score points for QTc (Bazett): >= 480 ms 3, 460-479 2, 450-459 in men 1."""
    if qtc_ms >= 480:
        return 3
    if qtc_ms >= 460:
        return 2
    return 1 if (qtc_ms >= 450 and sex == "M") else 0


def _pick_site(rng: np.random.Generator, exclude: Site | None = None) -> Site:
    sites = [s for s in SITES if s is not exclude]
    w = np.array([s.weight for s in sites])
    return sites[int(rng.choice(len(sites), p=w / w.sum()))]


def _measured_qtc(rhythm: Rhythm, duration_s: float) -> tuple[float, float, float]:
    """(HR bpm, Bazett QTc ms, Fridericia QTc ms) of the beats inside the record."""
    inside = (rhythm.r_times >= 0) & (rhythm.r_times < duration_s)
    idx = np.nonzero(inside[:-1])[0]
    rr = float(np.mean(rhythm.rr[idx]))
    qt = float(np.mean(rhythm.qt[idx]))
    return 60.0 / rr, 1000.0 * qt / rr**0.5, 1000.0 * qt / rr ** (1.0 / 3.0)


def synthesize_ecg(
    rng: np.random.Generator,
    label: str,
    *,
    profile: PatientProfile | None = None,
    site: Site | None = None,
    duration_s: float | None = None,
    patient_id: str = "SYN-0000",
    acquired_at: str | None = None,
) -> tuple[ECGRecord, dict[str, Any]]:
    """One 12-lead ECG of a (new or given) patient, in memory.

    Args:
        rng: the only source of randomness (same state -> same record).
        label: "ARVC", "LQTS" or "control"; ignored when ``profile`` is given.
        profile: a patient from :func:`~.synth_phenotypes.sample_profile` (new one if None).
        site: acquisition site (drawn by weight if None).
        duration_s: record length (the site's usual length if None).

    Returns:
        ``(record, truth)``: the record (float32 mV, 12 leads in standard order) and the
        generator's ground truth for it: ``profile``, ``visit``, ``site``, ``hr_bpm``,
        ``qtc_bazett_ms``, ``qtc_fridericia_ms``, ``schwartz_qtc_points``, and per beat
        inside the record ``r_peaks_s`` and ``qt_s``.

    Raises:
        ConfigError: unknown label.
    """
    if profile is None:
        if label not in CLASS_MIX:
            raise ConfigError(f"unknown class label {label!r}; use one of {', '.join(CLASS_MIX)}")
        profile = sample_profile(rng, label)
    site = site or _pick_site(rng)
    if duration_s is None:
        duration_s = float(rng.choice(site.durations_s, p=site.duration_p))
    visit = sample_visit(rng, profile, site.mains_hz, site.notch)
    geometry = default_geometry(
        np.asarray(profile.electrode_angles_deg) + np.asarray(visit.angle_jitter_deg),
        profile.electrode_elevation_deg,
        profile.electrode_gains,
    )
    template = beat_template(profile, visit, geometry)
    rhythm = sample_rhythm(
        rng, duration_s, visit.hr_bpm, visit.qtc_ms / 1000.0, profile.qt_exponent, visit.rsa, visit.lf, visit.resp_hz
    )
    n = int(round(duration_s * site.fs))
    leads8 = render_leads(template, rhythm, geometry, site.fs, n)
    leads8 += electrode_noise(rng, visit.noise, site.fs, n, visit.resp_hz)
    signal = acquire(leads8, site.cart())
    record = ECGRecord(
        signal=signal,
        fs=site.fs,
        leads=STANDARD_LEADS,
        acquisition=Acquisition(
            source_format="synthetic",
            manufacturer=site.manufacturer,
            device=site.name,
            acquired_at=acquired_at,
            filter_low_hz=site.filter_low_hz,
            filter_high_hz=site.filter_high_hz,
            notes=("SYNTHETIC ECG: generated by lasan.train.synth, not a recording",),
        ),
        patient=PatientIdentity(patient_id=patient_id, sex=profile.sex),
        derived_leads=("III", "aVR", "aVL", "aVF"),
    )
    hr, qtc_b, qtc_f = _measured_qtc(rhythm, duration_s)
    inside = (rhythm.r_times >= 0) & (rhythm.r_times < duration_s)
    truth: dict[str, Any] = {
        "profile": profile,
        "visit": visit,
        "site": site.name,
        "hr_bpm": hr,
        "qtc_bazett_ms": qtc_b,
        "qtc_fridericia_ms": qtc_f,
        "schwartz_qtc_points": schwartz_qtc_points(qtc_b, profile.sex),
        "r_peaks_s": rhythm.r_times[inside],
        "qt_s": rhythm.qt[inside],
    }
    return record, truth


def synthesize_patient(
    rng: np.random.Generator,
    label: str,
    patient_id: str,
    n_ecgs: int | None = None,
    start_date: datetime | None = None,
) -> list[tuple[ECGRecord, dict[str, Any]]]:
    """All ECGs (1-4 unless ``n_ecgs``) of one new patient, mostly at one home site.

    Raises:
        ConfigError: unknown label or ``n_ecgs`` < 1.
    """
    if label not in CLASS_MIX:
        raise ConfigError(f"unknown class label {label!r}; use one of {', '.join(CLASS_MIX)}")
    profile = sample_profile(rng, label)
    if n_ecgs is None:
        n_ecgs = int(rng.choice(len(_ECGS_PER_PATIENT), p=_ECGS_PER_PATIENT)) + 1
    if n_ecgs < 1:
        raise ConfigError(f"a patient needs at least one ECG, got n_ecgs={n_ecgs}")
    home = _pick_site(rng)
    when = (start_date or datetime(2021, 1, 1, tzinfo=timezone.utc)) + timedelta(
        days=int(rng.integers(0, 900)), minutes=int(rng.integers(0, 600))
    )
    out = []
    for _ in range(n_ecgs):
        site = _pick_site(rng, exclude=home) if rng.random() < _OTHER_SITE else home
        out.append(synthesize_ecg(rng, label, profile=profile, site=site, patient_id=patient_id,
                                  acquired_at=when.strftime("%Y-%m-%dT%H:%M:%S")))
        when += timedelta(days=int(rng.integers(1, 400)), minutes=int(rng.integers(0, 300)))
    return out


def _class_labels(n_patients: int, seed: int) -> list[str]:
    counts = {k: int(round(n_patients * v)) for k, v in CLASS_MIX.items()}
    counts["control"] = n_patients - counts["ARVC"] - counts["LQTS"]
    labels = [k for k, c in counts.items() for _ in range(max(c, 0))][:n_patients]
    order = np.random.default_rng([seed, 0x5EED]).permutation(len(labels))
    return [labels[i] for i in order]


def _truth_columns(record: ECGRecord, truth: dict[str, Any]) -> dict[str, str]:
    p: PatientProfile = truth["profile"]
    v: Visit = truth["visit"]
    return {
        "synthetic": "true",  # lasan train marks checkpoints trained on these as synthetic-data models
        "fs": f"{record.fs:g}",
        "duration_s": f"{record.duration_s:g}",
        "genotype": p.genotype,
        "phenotype": p.phenotype,
        "expression": f"{p.expression:.3f}",
        "qtc_ms": f"{truth['qtc_bazett_ms']:.1f}",
        "qtc_fridericia_ms": f"{truth['qtc_fridericia_ms']:.1f}",
        "qtc_at_60bpm_ms": f"{v.qtc_ms:.1f}",
        "schwartz_qtc_points": str(truth["schwartz_qtc_points"]),
        "hr_bpm": f"{truth['hr_bpm']:.1f}",
        "tad_ms": f"{p.tad_ms:.1f}",
        "twi_extent": p.twi_extent or "none",
        "twi_depth_mv": f"{p.twi_depth_mv * v.twi_scale:.3f}" if p.twi_extent else "0",
        "epsilon": "1" if p.epsilon else "0",
        "rv_voltage": f"{p.rv_voltage:.3f}",
        "confounders": ";".join(p.confounders) or "none",
        "acquired_at": record.acquisition.acquired_at or "",
    }


def _write(record: ECGRecord, out_dir: Path, ecg_id: str, fmt: str, style: str) -> tuple[Path, str]:
    """Write one record with the lasan.formats writers; returns (path, manifest format)."""
    if fmt == "wfdb":
        return write_wfdb(record, out_dir / "wfdb" / ecg_id), "wfdb"
    # UIDs hashed from the ECG id: the cohort is byte-identical for a given seed.
    if fmt == "dicom":
        return write_dicom(record, out_dir / "dicom" / f"{ecg_id}.dcm", uid_key=ecg_id), "dicom"
    when = datetime.fromisoformat(record.acquisition.acquired_at or "2021-01-01T00:00:00")
    message = build_oru(record, style=style, control_id=ecg_id, sending_facility=record.acquisition.device or "",
                        message_datetime=when, uid_key=ecg_id)
    path = out_dir / "hl7" / f"{ecg_id}.hl7"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(message)
    return path, f"hl7-{style}"


def generate_cohort(
    out_dir: str | Path,
    n_patients: int = 300,
    seed: int = 0,
    formats: tuple[str, ...] | list[str] = FORMATS,
) -> Path:
    """Write a synthetic cohort (ECG files + ``manifest.csv``) and return the manifest path.

    Each site sends its own format (WFDB at sites A, C, D; DICOM at B; HL7 ORU at E,
    NA and ED styles alternating); a site whose format is not in ``formats``
    writes WFDB instead. Patient ``i`` draws from ``default_rng([seed, i])``, so the
    cohort is identical, byte for byte, for the same arguments.

    Raises:
        ConfigError: fewer than 3 patients, or an unknown format.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or "wfdb" not in formats:
        raise ConfigError(f"formats must include 'wfdb' and be among {', '.join(FORMATS)}; got {list(formats)}")
    if n_patients < 3:
        raise ConfigError(f"a cohort needs at least 3 patients (one per class), got {n_patients}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    n_hl7 = 0
    for i, label in enumerate(_class_labels(n_patients, seed)):
        rng = np.random.default_rng([seed, i])
        patient_id = f"SYN{i + 1:05d}"
        for k, (record, truth) in enumerate(synthesize_patient(rng, label, patient_id), start=1):
            ecg_id = f"{patient_id}_{k}"
            site = next(s for s in SITES if s.name == truth["site"])
            fmt = site.format if site.format in formats else "wfdb"
            style = ("na", "ed")[n_hl7 % 2]  # alternate, so both HL7 styles are always exercised
            n_hl7 += fmt == "hl7"
            path, fmt_name = _write(record, out_dir, ecg_id, fmt, style)
            p: PatientProfile = truth["profile"]
            rows.append(
                ManifestRow(
                    patient_id=patient_id, path=path.resolve(), label=label, ecg_id=ecg_id, format=fmt_name,
                    site=site.name, sex=p.sex, age=float(p.age),
                    extra=tuple(_truth_columns(record, truth).items()),
                )
            )
    manifest = out_dir / "manifest.csv"
    write_manifest(rows, manifest)
    log.info("wrote %d ECGs of %d synthetic patients to %s", len(rows), n_patients, out_dir)
    return manifest

