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
controls are a referral population (family screening, athletes, borderline QTc) with
the normal variants that mimic disease: juvenile and athletes' anterior T inversion,
incomplete and complete RBBB, early repolarisation, athlete's voltage and bradycardia,
sinus arrhythmia, PACs and PVCs (:mod:`.synth_rhythm`), borderline QTc. LQTS includes
30 % carriers with a normal resting QTc whose genotype-specific lateral T morphology
(LQT1 broad, LQT2 notched low, LQT3 late-peaked) is the signal; ARVC runs from concealed
and early stages (subtle V1-V3 changes) to advanced (Task Force 2010 items).

Sites (:mod:`.synth_sites`) differ in sampling rate (250, 257, 500, 1000 Hz), band-pass
(0.05-150 to 0.5-40 Hz), ADC resolution, calibration and its spread, mains frequency,
noise, limb-lead reversal rate and file format; patients have 1-4 ECGs, 15 % of them at
another site. An external-validation site pair with another mix of devices, noise and
prevalence is written with ``holdout=external`` and never trained on.
Full tables and what the model cannot represent: docs/synthetic_cohort.md.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lasan.errors import ConfigError
from lasan.formats import write_ecg
from lasan.formats.dicom import write_dicom
from lasan.formats.wfdb_io import write_wfdb
from lasan.leads import STANDARD_LEADS
from lasan.record import Acquisition, ECGRecord, PatientIdentity
from lasan.train.manifest import HOLDOUT_EXTERNAL, ManifestRow, write_manifest
from lasan.train.synth_beats import (
    PAC,
    PVC,
    SINUS,
    Rhythm,
    acquire,
    default_geometry,
    electrode_noise,
    render_leads,
    sample_rhythm,
)
from lasan.train.synth_phenotypes import PatientProfile, Visit, beat_template, sample_profile, sample_visit
from lasan.train.synth_rhythm import add_ectopy, pac_template, pvc_template, sinus_rr_indices
from lasan.train.synth_sites import EXTERNAL_CLASS_MIX, EXTERNAL_SITES, SITES, Site, pick_site, site_named

__all__ = [
    "CLASS_MIX",
    "FORMATS",
    "Site",
    "SITES",
    "EXTERNAL_SITES",
    "EXTERNAL_SHARE",
    "reverse_limb_electrodes",
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
EXTERNAL_SHARE = 0.2  # external-validation patients per internal patient (default of generate_cohort)


def schwartz_qtc_points(qtc_ms: float, sex: str) -> int:
    """Schwartz-score points for QTc (Bazett): >= 480 ms 3, 460-479 2, 450-459 in men 1."""
    if qtc_ms >= 480:
        return 3
    if qtc_ms >= 460:
        return 2
    return 1 if (qtc_ms >= 450 and sex == "M") else 0


def reverse_limb_electrodes(leads8: np.ndarray) -> np.ndarray:
    """Rows I, II, V1..V6 as a cart records them with the LA and RA electrodes swapped.

    I = LA - RA becomes -I and II = LL - RA becomes LL - LA = III; the cart then derives
    III, aVR, aVL, aVF from these, so III shows II, aVR and aVL trade places, aVF stays
    (Batchvarov et al., Europace 2007). The Wilson terminal, hence V1-V6, is unchanged.
    """
    out = leads8.copy()
    out[0] = -leads8[0]
    out[1] = leads8[1] - leads8[0]
    return out


def _measured_qtc(rhythm: Rhythm, duration_s: float) -> tuple[float, float, float]:
    """(HR bpm, Bazett QTc ms, Fridericia QTc ms) of the sinus-to-sinus beats inside the record."""
    inside = (rhythm.r_times >= 0) & (rhythm.r_times < duration_s)
    idx = np.nonzero(inside[:-1])[0]
    sinus = np.intersect1d(idx, sinus_rr_indices(rhythm))
    idx = sinus if len(sinus) else idx
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
    limb_reversal: bool | None = None,
) -> tuple[ECGRecord, dict[str, Any]]:
    """One 12-lead ECG of a (new or given) patient, in memory.

    Args:
        rng: the only source of randomness (same state -> same record).
        label: "ARVC", "LQTS" or "control"; ignored when ``profile`` is given.
        profile: a patient from :func:`~.synth_phenotypes.sample_profile` (new one if None).
        site: acquisition site (drawn by weight if None).
        duration_s: record length (the site's usual length if None).
        limb_reversal: swap the LA and RA electrodes (drawn at the site's rate if None).

    Returns:
        ``(record, truth)``: the record (float32 mV, 12 leads in standard order) and the
        generator's ground truth for it: ``profile``, ``visit``, ``site``, ``hr_bpm``,
        ``qtc_bazett_ms``, ``qtc_fridericia_ms``, ``schwartz_qtc_points``,
        ``limb_reversal``, ``calibration``, and per beat inside the record
        ``r_peaks_s``, ``qt_s`` and ``beat_kinds`` (SINUS 0, PAC 1, PVC 2).

    Raises:
        ConfigError: unknown label.
    """
    if profile is None:
        if label not in CLASS_MIX:
            raise ConfigError(f"unknown class label {label!r}; use one of {', '.join(CLASS_MIX)}")
        profile = sample_profile(rng, label)
    site = site or pick_site(rng)
    if duration_s is None:
        duration_s = float(rng.choice(site.durations_s, p=site.duration_p))
    visit = sample_visit(rng, profile, site.mains_hz, site.notch, site.noise_scale, site.mains_scale)
    geometry = default_geometry(
        np.asarray(profile.electrode_angles_deg) + np.asarray(visit.angle_jitter_deg),
        profile.electrode_elevation_deg,
        profile.electrode_gains,
    )
    template = beat_template(profile, visit, geometry)
    templates = (
        template,
        pac_template(template, profile.pac_p_direction, profile.p_amp),
        pvc_template(profile.pvc_origin, profile.qrs_amp, template.qt_ref),
    )
    rhythm = sample_rhythm(
        rng, duration_s, visit.hr_bpm, visit.qtc_ms / 1000.0, profile.qt_exponent, visit.rsa, visit.lf, visit.resp_hz
    )
    rhythm = add_ectopy(rng, rhythm, duration_s, profile.pac_per_min, profile.pvc_per_min)
    n = int(round(duration_s * site.fs))
    leads8 = render_leads(templates, rhythm, geometry, site.fs, n)
    leads8 += electrode_noise(rng, visit.noise, site.fs, n, visit.resp_hz)
    reversed_ = bool(rng.random() < site.limb_reversal) if limb_reversal is None else bool(limb_reversal)
    if reversed_:
        leads8 = reverse_limb_electrodes(leads8)
    calibration = site.draw_calibration(rng)
    signal = acquire(leads8, site.cart(calibration))
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
        "beat_kinds": rhythm.beat_kinds()[inside],
        "limb_reversal": reversed_,
        "calibration": calibration,
    }
    return record, truth


def synthesize_patient(
    rng: np.random.Generator,
    label: str,
    patient_id: str,
    n_ecgs: int | None = None,
    start_date: datetime | None = None,
    sites: tuple[Site, ...] = SITES,
) -> list[tuple[ECGRecord, dict[str, Any]]]:
    """All ECGs (1-4 unless ``n_ecgs``) of one new patient, mostly at one home site of ``sites``.

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
    home = pick_site(rng, sites)
    when = (start_date or datetime(2021, 1, 1, tzinfo=timezone.utc)) + timedelta(
        days=int(rng.integers(0, 900)), minutes=int(rng.integers(0, 600))
    )
    out = []
    for _ in range(n_ecgs):
        site = pick_site(rng, sites, exclude=home) if rng.random() < _OTHER_SITE else home
        out.append(synthesize_ecg(rng, label, profile=profile, site=site, patient_id=patient_id,
                                  acquired_at=when.strftime("%Y-%m-%dT%H:%M:%S")))
        when += timedelta(days=int(rng.integers(1, 400)), minutes=int(rng.integers(0, 300)))
    return out


def _class_labels(n_patients: int, seed: int, mix: dict[str, float] = CLASS_MIX, key: int = 0x5EED) -> list[str]:
    counts = {k: int(round(n_patients * v)) for k, v in mix.items()}
    counts["control"] = n_patients - counts["ARVC"] - counts["LQTS"]
    labels = [k for k, c in counts.items() for _ in range(max(c, 0))][:n_patients]
    order = np.random.default_rng([seed, key]).permutation(len(labels))
    return [labels[i] for i in order]


def _truth_columns(record: ECGRecord, truth: dict[str, Any]) -> dict[str, str]:
    p: PatientProfile = truth["profile"]
    v: Visit = truth["visit"]
    return {
        "synthetic": "true",  # lasan train marks checkpoints trained on these as synthetic-data models
        "generator": "lasan-synth-2",  # cohort v2: confounders, ectopy, acquisition variety, external site
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
        "pac_beats": str(int(np.sum(truth["beat_kinds"] == PAC))),
        "pvc_beats": str(int(np.sum(truth["beat_kinds"] == PVC))),
        "pvc_origin": p.pvc_origin if np.any(truth["beat_kinds"] == PVC) else "",
        "sinus_beats": str(int(np.sum(truth["beat_kinds"] == SINUS))),
        "limb_reversal": "1" if truth["limb_reversal"] else "0",
        "calibration": f"{truth['calibration']:.3f}",
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
    path = out_dir / "hl7" / f"{ecg_id}.hl7"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Through lasan.formats.write_ecg, which knows where the ORU builder lives.
    write_ecg(record, path, fmt=f"hl7-{style}", control_id=ecg_id, sending_facility=record.acquisition.device or "",
              message_datetime=when, uid_key=ecg_id)
    return path, f"hl7-{style}"


def generate_cohort(
    out_dir: str | Path,
    n_patients: int = 300,
    seed: int = 0,
    formats: tuple[str, ...] | list[str] = FORMATS,
    n_external: int | None = None,
) -> Path:
    """Write a synthetic cohort (ECG files + ``manifest.csv``) and return the manifest path.

    ``n_patients`` patients come from the internal sites, each sending its own format
    (WFDB at sites A, C, D; DICOM at B; HL7 ORU at E, NA and ED styles alternating);
    ``n_external`` more (default ``round(EXTERNAL_SHARE * n_patients)``) come from the
    external sites with their own class mix and are marked ``holdout=external``. A site
    whose format is not in ``formats`` writes WFDB instead. Internal patient ``i`` draws
    from ``default_rng([seed, i])`` and external patient ``j`` from
    ``default_rng([seed, 0xE7, j])``, so the internal cohort does not depend on
    ``n_external`` and the whole cohort is identical, byte for byte, for the same arguments.

    Raises:
        ConfigError: fewer than 3 patients, a negative ``n_external``, or an unknown format.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or "wfdb" not in formats:
        raise ConfigError(f"formats must include 'wfdb' and be among {', '.join(FORMATS)}; got {list(formats)}")
    if n_patients < 3:
        raise ConfigError(f"a cohort needs at least 3 patients (one per class), got {n_patients}")
    if n_external is None:
        n_external = int(round(EXTERNAL_SHARE * n_patients))
    if n_external < 0:
        raise ConfigError(f"the number of external-validation patients cannot be negative, got {n_external}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[ManifestRow] = []
    n_hl7 = 0
    patients = [
        (np.random.default_rng([seed, i]), label, f"SYN{i + 1:05d}", SITES)
        for i, label in enumerate(_class_labels(n_patients, seed))
    ] + [
        (np.random.default_rng([seed, 0xE7, j]), label, f"EXT{j + 1:05d}", EXTERNAL_SITES)
        for j, label in enumerate(_class_labels(n_external, seed, EXTERNAL_CLASS_MIX, key=0xE7E7))
    ]
    for rng, label, patient_id, sites in patients:
        for k, (record, truth) in enumerate(synthesize_patient(rng, label, patient_id, sites=sites), start=1):
            ecg_id = f"{patient_id}_{k}"
            site = site_named(truth["site"])
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
                    holdout=HOLDOUT_EXTERNAL if site.external else None,
                )
            )
    manifest = out_dir / "manifest.csv"
    write_manifest(rows, manifest)
    log.info("wrote %d ECGs of %d synthetic patients (%d external) to %s", len(rows), n_patients + n_external,
             n_external, out_dir)
    return manifest
