"""Patients and phenotypes of the synthetic cohort: who the patient is and what their beats look like.

A :class:`PatientProfile` holds everything fixed for a person (sex, age, genotype,
disease stage, morphology, benign variants); a :class:`Visit` holds what changes from
one ECG to the next (heart rate, QTc day-to-day variation, electrode placement, noise).
:func:`beat_template` turns both into the Gaussian waves of :mod:`.synth_beats`.

Parameter ranges and their clinical sources are tabulated in docs/synthetic_cohort.md;
the comments below name the source of each number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from lasan.train.synth_beats import BeatTemplate, LeadGeometry, NoiseLevels, Wave

__all__ = [
    "CONFOUNDERS",
    "LQTS_GENOTYPES",
    "ARVC_STAGES",
    "PatientProfile",
    "Visit",
    "sample_profile",
    "sample_visit",
    "beat_template",
]

# Benign variants and rhythm findings a screening model meets (docs/synthetic_cohort.md).
CONFOUNDERS: tuple[str, ...] = (
    "juvenile_twi", "irbbb", "crbbb", "early_repol", "lateral_t_flat", "athlete", "athlete_twi",
    "sinus_brady", "sinus_arrhythmia", "borderline_qtc", "pac", "pvc",
)
LQTS_GENOTYPES: dict[str, float] = {"LQT1": 0.45, "LQT2": 0.40, "LQT3": 0.15}  # Schwartz 2012 genotype mix
ARVC_GENES: dict[str, float] = {"PKP2": 0.45, "DSP": 0.15, "DSG2": 0.10, "other": 0.05, "gene-elusive": 0.25}
ARVC_STAGES: dict[str, float] = {"concealed": 0.25, "early": 0.30, "overt": 0.33, "advanced": 0.12}
LQTS_CONCEALED = 0.30  # genotype-positive with normal resting QTc (Goldenberg et al. 2011: ~25-35 %)

# Weights per V1..V6 of right-ventricular local changes: RV free wall under V1-V3.
_TWI_EXTENT = {
    "V1": (1.0, 0.3, 0.0, 0.0, 0.0, 0.0),
    "V1-V2": (1.0, 0.95, 0.3, 0.0, 0.0, 0.0),
    "V1-V3": (1.0, 1.0, 0.9, 0.3, 0.0, 0.0),
    "V1-V4": (1.0, 1.0, 1.0, 0.8, 0.2, 0.0),  # athletes' anterior TWI after a convex ST elevation
    "V1-V4+": (1.0, 1.0, 1.0, 0.9, 0.6, 0.3),
}
_RV_WEIGHTS = (1.0, 0.9, 0.7, 0.3, 0.05, 0.0)
_ANTERIOR_ST = np.array([0.5, 1.0, 1.0, 0.7, 0.2, 0.0])  # athletes' J/ST elevation V1-V4 (Papadakis 2011)
# Complete RBBB: the right ventricle depolarises last and slowly, a late broad rightward-
# anterior force (R' in V1, broad S in I, V5, V6; Surawicz et al., AHA/ACCF/HRS 2009).
_RBBB_TERMINAL = np.array([-0.55, -0.1, 0.85]) / np.linalg.norm([-0.55, -0.1, 0.85])
_PAC_P = {"low_atrial": (0.25, -0.75, 0.35), "left_atrial": (-0.6, 0.4, -0.4), "high_right": (0.2, 0.9, 0.6)}
_LATERAL = np.array([1.0, -0.3, -0.1]) / np.linalg.norm([1.0, -0.3, -0.1])  # I, aVL, V5, V6 see it most


@dataclass(frozen=True)
class PatientProfile:
    """Everything that stays the same across one person's ECGs."""

    label: str  # "ARVC" | "LQTS" | "control"
    sex: str  # "M" | "F"
    age: int
    genotype: str  # LQT1/LQT2/LQT3, an ARVC gene, or "none"
    phenotype: str  # LQTS concealed/expressed; ARVC concealed/early/overt/advanced; "none"
    expression: float  # 0..1, strength of genotype-specific T morphology (LQTS)
    qtc_ms: float  # QTc at 60 bpm (= Bazett = Fridericia there)
    hr_bpm: float
    qt_exponent: float
    axis_deg: float  # frontal QRS axis
    elevation_deg: float  # QRS vector elevation (negative = posterior)
    qrs_amp: float  # mV, main QRS vector magnitude
    qrs_scale: float  # QRS width factor (1 = 88 ms)
    t_amp: float  # mV
    t_axis_offset_deg: float  # frontal QRS-T angle
    t_width: float
    p_amp: float
    pr_s: float
    u_wave: bool
    twi_extent: str  # "" or a key of _TWI_EXTENT (ARVC or juvenile pattern)
    twi_depth_mv: float
    tad_ms: float  # terminal activation duration in V1-V3 (TFC 2010 minor criterion at >= 55)
    rv_voltage: float  # QRS amplitude factor in V1-V3 (ARVC low voltage), 1 = none
    epsilon: tuple[tuple[float, float], ...]  # (delay after QRS end s, amplitude mV) per spike
    confounders: tuple[str, ...]  # see CONFOUNDERS
    electrode_angles_deg: tuple[float, ...]
    electrode_elevation_deg: tuple[float, ...]
    electrode_gains: tuple[float, ...]
    anterior_st_mv: float = 0.0  # J/ST elevation V1-V4 before athletes' anterior TWI
    pac_per_min: float = 0.0
    pvc_per_min: float = 0.0
    pvc_origin: str = "rvot"  # a key of lasan.train.synth_rhythm.PVC_ORIGINS
    pac_focus: str = "low_atrial"

    @property
    def pac_p_direction(self) -> tuple[float, float, float]:
        return _PAC_P[self.pac_focus]


@dataclass(frozen=True)
class Visit:
    """What differs between two ECGs of the same patient."""

    qtc_ms: float
    hr_bpm: float
    twi_scale: float
    resp_hz: float
    rsa: float
    lf: float
    angle_jitter_deg: tuple[float, ...]
    noise: NoiseLevels


def _choice(rng: np.random.Generator, table: dict[str, float]) -> str:
    keys = list(table)
    return keys[int(rng.choice(len(keys), p=np.asarray(list(table.values())) / sum(table.values())))]


def _age(rng: np.random.Generator, label: str) -> int:
    if label == "ARVC":  # presentation in the 2nd-5th decade (Groeneweg et al. 2015)
        return int(np.clip(rng.normal(40, 14), 12, 80))
    child = {"LQTS": 0.2, "control": 0.25}[label]  # family screening brings children
    if rng.random() < child:
        return int(rng.integers(5, 16))
    return int(np.clip(rng.normal(36, 15), 16, 80)) if label == "LQTS" else int(rng.integers(16, 79))


def sample_profile(rng: np.random.Generator, label: str) -> PatientProfile:
    """Draw one patient of class ``label`` ("ARVC", "LQTS" or "control")."""
    sex = "M" if rng.random() < {"ARVC": 0.6, "LQTS": 0.4, "control": 0.5}[label] else "F"
    age = _age(rng, label)
    adult_female = sex == "F" and age >= 16
    confounders = list(_confounders(rng, label, sex, age))
    # Normal QTc: men ~400 +- 20, women ~410 +- 20 (Rautaharju et al., AHA/ACCF/HRS 2009).
    qtc = rng.normal(410.0 if (sex == "F" or age < 16) else 400.0, 20.0)
    if "borderline_qtc" in confounders:  # 440-460 ms: the commonest reason for a wrong LQTS label (Taggart 2007)
        qtc = rng.uniform(440.0, 462.0)
    genotype, phenotype, expression = "none", "none", 0.0
    hr = rng.normal(88, 12) if age < 12 else rng.normal(72, 10)
    if "athlete" in confounders:  # sinus bradycardia in most trained athletes (Drezner et al. 2017)
        hr = rng.normal(52, 6)
    elif "sinus_brady" in confounders:
        hr = rng.uniform(48, 58)
    if label == "LQTS":
        genotype = _choice(rng, LQTS_GENOTYPES)
        hr -= 7 + (4 if genotype == "LQT3" else 0)  # beta-blockers; LQT3 sinus bradycardia
        if rng.random() < LQTS_CONCEALED:
            # Normal resting QTc, but the genotype's T shape is often there, milder
            # (Zhang et al. 2000 saw typical T patterns in carriers with normal QTc).
            phenotype = "concealed"
            qtc = rng.normal(432.0 + (8 if adult_female else 0), 14.0)
            expression = float(rng.beta(2.0, 3.0))
        else:  # Moss et al. 1995; Zhang et al. 2000: LQT3 > LQT2 > LQT1
            phenotype = "expressed"
            qtc = rng.normal({"LQT1": 482.0, "LQT2": 490.0, "LQT3": 498.0}[genotype] + (10 if adult_female else 0), 26.0)
            expression = float(rng.beta(4.0, 1.8))
        if genotype == "LQT3":  # typical LQT3 pattern in ~65 % (Zhang 2000) vs ~88 % LQT1/2
            expression *= 0.8
    epsilon: tuple[tuple[float, float], ...]
    twi_extent, twi_depth, tad, rv_voltage, epsilon = "", 0.0, rng.normal(42, 6), 1.0, ()
    if label == "ARVC":
        genotype = _choice(rng, ARVC_GENES)
        phenotype = _choice(rng, ARVC_STAGES)
        hr -= 5  # beta-blockers
        twi_extent, twi_depth, tad, rv_voltage, p_eps = _arvc_stage(rng, phenotype)
        if rng.random() < p_eps:
            n = int(rng.integers(2, 5))
            delays = np.sort(rng.uniform(0.004, 0.045, n))
            signs = np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * rng.choice([-1.0, 1.0])
            epsilon = tuple((float(d), float(s * rng.uniform(0.04, 0.12))) for d, s in zip(delays, signs, strict=True))
    if "juvenile_twi" in confounders:  # T inversion V1-V3 normal before ~14 y (Marcus 2010)
        juvenile = "V1-V3" if (age < 12 and rng.random() < 0.5) else "V1-V2"
        depth = float(rng.uniform(0.05, 0.25))
        if not twi_extent or _TWI_EXTENT[juvenile][2] > _TWI_EXTENT[twi_extent][2]:
            twi_extent = juvenile
        twi_depth = max(twi_depth, depth)
    anterior_st = 0.0
    if "athlete_twi" in confounders:  # convex ST elevation then TWI V1-V4 (Papadakis et al. 2011)
        anterior_st = float(rng.uniform(0.1, 0.25))
        if not twi_extent or _TWI_EXTENT[twi_extent][3] < _TWI_EXTENT["V1-V4"][3]:
            twi_extent = "V1-V4"
        twi_depth = max(twi_depth, float(rng.uniform(0.1, 0.3)))
    if "irbbb" in confounders:
        tad += rng.uniform(5, 15)  # a terminal R' prolongs terminal activation
    qrs_amp = rng.lognormal(np.log(1.25), 0.22) * (0.88 if sex == "F" else 1.0) * (1.12 if age < 30 else 1.0)
    if "athlete" in confounders:  # isolated QRS voltage criteria for LVH (Pelliccia et al. 2000)
        qrs_amp *= rng.uniform(1.25, 1.6)
    pvc_origin = _choice(rng, _PVC_ORIGIN_MIX["ARVC" if label == "ARVC" else "other"])
    return PatientProfile(
        label=label, sex=sex, age=age, genotype=genotype, phenotype=phenotype,
        expression=float(expression), qtc_ms=float(np.clip(qtc, 350, 620)),
        hr_bpm=float(np.clip(hr, 40, 130)), qt_exponent=float(rng.uniform(0.35, 0.45)),
        axis_deg=float(np.clip(rng.normal(60 if age < 12 else 45, 22), -25, 105)),
        elevation_deg=float(rng.normal(-25, 8)),
        qrs_amp=float(qrs_amp),
        qrs_scale=float(np.clip(rng.normal(1.0, 0.07) * (1.05 if sex == "M" else 1.0), 0.8, 1.25)),
        t_amp=float(rng.lognormal(np.log(0.32), 0.25) * (0.85 if sex == "F" else 1.0)),
        t_axis_offset_deg=float(rng.normal(-5, 15)), t_width=float(np.clip(rng.normal(1.0, 0.08), 0.8, 1.25)),
        p_amp=float(rng.uniform(0.08, 0.2)), pr_s=float(np.clip(rng.normal(0.155, 0.02), 0.11, 0.21)),
        u_wave=bool(rng.random() < 0.4), twi_extent=twi_extent, twi_depth_mv=float(twi_depth),
        tad_ms=float(np.clip(tad, 28, 110)), rv_voltage=float(rv_voltage), epsilon=epsilon,
        confounders=tuple(confounders),
        electrode_angles_deg=tuple(float(v) for v in rng.normal(0, 6, 6)),
        electrode_elevation_deg=tuple(float(v) for v in rng.normal(0, 4, 6)),
        electrode_gains=tuple(float(v) for v in rng.lognormal(0, 0.1, 6)),
        anterior_st_mv=anterior_st,
        # Frequent ectopy: a few to a dozen per minute, so a 10 s ECG shows some in most records.
        pac_per_min=float(rng.uniform(3, 12)) if "pac" in confounders else 0.0,
        pvc_per_min=float(rng.uniform(3, 15)) if "pvc" in confounders else 0.0,
        pvc_origin=pvc_origin,
        pac_focus=_choice(rng, {"low_atrial": 0.5, "left_atrial": 0.25, "high_right": 0.25}),
    )


# ARVC PVCs are of LBBB morphology, often with a superior axis (Marcus 2010; Hoffmayer 2013);
# idiopathic PVCs mostly come from the RV outflow tract (inferior axis), some from the LV.
_PVC_ORIGIN_MIX = {
    "ARVC": {"rv_superior": 0.5, "rvot": 0.4, "lv": 0.1},
    "other": {"rv_superior": 0.05, "rvot": 0.65, "lv": 0.3},
}


def _arvc_stage(rng: np.random.Generator, stage: str) -> tuple[str, float, float, float, float]:
    """(TWI extent, depth mV, TAD ms, V1-V3 QRS voltage factor, P(epsilon)) for an ARVC stage.

    Task Force 2010 (Marcus et al.): TWI V1-V3 major, V1-V2 minor; epsilon major; TAD >= 55
    ms minor. Prevalences: TWI V1-V3 ~50-70 %, epsilon ~10-30 %, prolonged TAD ~60 % of
    definite ARVC (Cox et al. 2008; Protonotarios et al. 2015); gene carriers without an
    ECG phenotype are common (incomplete penetrance).
    """
    if stage == "concealed":
        extent = "V1" if rng.random() < 0.15 else ""
        return extent, float(rng.uniform(0.02, 0.08)), rng.normal(45, 6), 1.0, 0.0
    if stage == "early":
        extent = "V1-V2" if rng.random() < 0.6 else ("V1-V3" if rng.random() < 0.5 else "")
        return extent, float(rng.uniform(0.05, 0.2)), rng.normal(54, 7), float(rng.uniform(0.85, 1.0)), 0.05
    if stage == "overt":
        extent = "V1-V3" if rng.random() < 0.8 else "V1-V2"
        return extent, float(rng.uniform(0.1, 0.35)), rng.normal(61, 8), float(rng.uniform(0.7, 0.95)), 0.25
    return "V1-V4+", float(rng.uniform(0.15, 0.4)), rng.normal(70, 10), float(rng.uniform(0.5, 0.8)), 0.5


def _confounders(rng: np.random.Generator, label: str, sex: str, age: int) -> tuple[str, ...]:
    """Benign variants and rhythm findings, in every class.

    Controls are the people an inherited-arrhythmia clinic clears: relatives from
    family screening, athletes and others referred *because* their ECG looked abnormal
    (anterior TWI, RBBB, borderline QTc; Taggart et al. 2007, Brosnan et al. 2014). Their
    rates are therefore those of a referral population, above population rates; the
    same variants occur in ARVC and LQTS at (lower) population rates, so none of them
    marks a class, and the disease has to be told from the mimic by its morphology.
    """
    control = label == "control"
    found = []
    p_juvenile = 0.8 if age < 12 else 0.4 if age < 16 else 0.06 if age < 25 else 0.02
    if rng.random() < p_juvenile * (1.5 if sex == "F" and age >= 16 else 1.0):
        found.append("juvenile_twi")
    athlete = 14 <= age < 40 and rng.random() < (0.30 if control else 0.10)
    if athlete:
        found.append("athlete")
        # Anterior TWI: 4 % of white, 13 % of black athletes (Papadakis 2011); athletes
        # referred to a clinic are enriched for it, hence 20 % of control athletes.
        if rng.random() < (0.20 if control else 0.08):
            found.append("athlete_twi")
    elif age >= 16 and rng.random() < (0.10 if control else 0.06):
        found.append("sinus_brady")
    p_crbbb = 0.05 if control else 0.06 if label == "ARVC" else 0.015  # 0.2-1.3 % in the population (Bussink 2013)
    if rng.random() < p_crbbb:
        found.append("crbbb")
    else:
        p_irbbb = (0.08 if (age < 30 or sex == "M") else 0.04) + (0.1 if label == "ARVC" else 0.0)
        p_irbbb += 0.25 if athlete else (0.06 if control else 0.0)
        if rng.random() < p_irbbb:
            found.append("irbbb")
    p_er = 0.45 if athlete else (0.12 if (sex == "M" and 14 <= age < 40) else 0.04)  # Tikkanen et al. 2009
    if rng.random() < p_er:
        found.append("early_repol")
    if rng.random() < (0.1 if age > 50 else 0.03 if control else 0.02):
        found.append("lateral_t_flat")
    if age < 30 and rng.random() < 0.25:  # marked respiratory sinus arrhythmia of the young
        found.append("sinus_arrhythmia")
    if rng.random() < (0.15 if control else 0.05):  # LQTS patients draw their own QTc
        found.append("borderline_qtc")
    if rng.random() < 0.06:
        found.append("pac")
    if rng.random() < (0.25 if label == "ARVC" else 0.07):  # frequent PVCs are a TFC 2010 minor criterion
        found.append("pvc")
    return tuple(found)


def sample_visit(
    rng: np.random.Generator,
    profile: PatientProfile,
    mains_hz: float,
    notch: bool,
    noise_scale: float = 1.0,
    mains_scale: float = 1.0,
) -> Visit:
    """One ECG's session: rate, QTc and electrode placement vary; noise is drawn anew
    (scaled by the site's ``noise_scale`` and ``mains_scale``)."""
    qtc_sd = 15.0 if profile.label == "LQTS" else 10.0  # QTc day-to-day variability is larger in LQTS
    rsa = float(np.clip(0.07 - 0.0008 * profile.age, 0.01, 0.08) * rng.lognormal(0, 0.3))  # RSA falls with age
    if "sinus_arrhythmia" in profile.confounders:
        rsa = float(rng.uniform(0.10, 0.18))
    emg = float(rng.lognormal(np.log(0.008), 0.6) * (4.0 if rng.random() < 0.1 else 1.0))
    noise = NoiseLevels(
        baseline=float(rng.lognormal(np.log(0.08), 0.6)) * noise_scale,
        emg=emg * noise_scale,
        mains=float(rng.lognormal(np.log(0.01), 0.8) * (0.03 if notch else 1.0)) * mains_scale,
        mains_hz=mains_hz,
        motion_events=int(rng.poisson(0.15 * noise_scale)),
    )
    return Visit(
        qtc_ms=float(np.clip(profile.qtc_ms + rng.normal(0, qtc_sd), 340, 640)),
        hr_bpm=float(np.clip(profile.hr_bpm + rng.normal(0, 6 if profile.hr_bpm > 60 else 3), 38, 140)),
        twi_scale=float(rng.uniform(0.8, 1.2)),
        resp_hz=float(rng.uniform(0.18, 0.33)),
        rsa=rsa,
        lf=float(rng.uniform(0.01, 0.03)),
        angle_jitter_deg=tuple(float(v) for v in rng.normal(0, 3, 6)),
        noise=noise,
    )


def _direction(axis_deg: float, z: float) -> np.ndarray:
    a = np.deg2rad(axis_deg)
    v = np.array([np.cos(a), np.sin(a), z])
    return v / np.linalg.norm(v)


def _unit(*v: float) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _t(v: np.ndarray) -> Any:  # a Wave dipole (3 floats) or local term (6 floats): as long as v
    return tuple(float(x) for x in v)


def beat_template(profile: PatientProfile, visit: Visit, geometry: LeadGeometry) -> BeatTemplate:
    """The waves of one ECG's beats, placed for QT at 1 s RR = ``visit.qtc_ms``."""
    p = profile
    R, qs = p.qrs_amp, p.qrs_scale
    irbbb = "irbbb" in p.confounders
    crbbb = "crbbb" in p.confounders
    waves: list[Wave] = []
    qrs_onset = -0.044 * qs
    qrs_end = 0.044 * qs + (0.012 if irbbb else 0.0) + (0.045 if crbbb else 0.0)
    # P: right atrium (anterior-inferior) then left atrium (leftward-posterior).
    p_start = qrs_onset - p.pr_s
    waves.append(Wave("p", p_start + 0.035, 0.014, 0.014, _t(p.p_amp * _unit(0.3, 0.8, 0.5))))
    waves.append(Wave("p", p_start + 0.06, 0.016, 0.016, _t(p.p_amp * _unit(0.8, 0.4, -0.4))))
    # QRS: septal (rightward-anterior), main LV (patient axis, posterior), basal terminal forces.
    main_dir = _direction(p.axis_deg, np.tan(np.deg2rad(p.elevation_deg)))
    qrs = [
        (-0.024 * qs, 0.008 * qs, 0.008 * qs, 0.18 * R * _unit(-0.5, 0.15, 0.85)),
        (0.0, 0.011 * qs, 0.011 * qs, R * main_dir),
        (
            (0.022 + (0.006 if irbbb else 0.0)) * qs,
            0.009 * qs * (1.3 if irbbb else 1.0),
            0.009 * qs * (1.3 if irbbb else 1.0),
            0.3 * R * (1.7 if irbbb else 1.0) * _unit(-0.45, -0.55, -0.7),
        ),
    ]
    rv = np.asarray(_RV_WEIGHTS)
    for offset, sl, sr, vec in qrs:
        # ARVC low voltage in V1-V3: a local term cancelling part of the dipole's projection.
        local = -(1.0 - p.rv_voltage) * rv * (geometry.precordial @ vec)
        waves.append(Wave("qrs", offset, sl, sr, _t(vec), _t(local), resp=True))
    extra = max(p.tad_ms - 45.0, 0.0) / 1000.0
    if extra > 0:  # slurred S upstroke in V1-V3: terminal activation ends later (TAD)
        amp = -0.12 * R * min(extra / 0.02, 1.5)
        waves.append(Wave("qrs", 0.032 * qs + 0.6 * extra, 0.006 + 0.3 * extra, 0.006 + 0.5 * extra, local=_t(amp * rv)))
    if irbbb:  # terminal R' in V1-V2 (rSr')
        waves.append(Wave("qrs", qrs_end - 0.008, 0.01, 0.01, local=_t(0.25 * R * np.array([1, 0.6, 0.2, 0, 0, 0]))))
    if crbbb:  # QRS >= 120 ms: late broad R' in V1-V2, broad S in I, aVL, V5, V6
        # Slow cell-to-cell spread through the right ventricle: a terminal loop that turns
        # from rightward-superior to rightward-anterior-inferior, so conduction is continuous.
        for off, sig, amp, turn in ((0.03, 0.012, 0.35, -0.35), (0.052, 0.013, 0.5, 0.0), (0.074, 0.013, 0.4, 0.35)):
            vec = _RBBB_TERMINAL + np.array([0.0, turn, 0.0])
            waves.append(Wave("qrs", off * qs, sig * qs, sig * qs, _t(amp * R * vec / np.linalg.norm(vec)), resp=True))
    if p.anterior_st_mv > 0:  # athletes: J-point and convex ST elevation V1-V4 before the TWI
        waves.append(Wave("qrs", qrs_end + 0.004, 0.01, 0.016, local=_t(0.7 * p.anterior_st_mv * _ANTERIOR_ST)))
        waves.append(Wave("repol", qrs_end - qrs_onset + 0.07, 0.05, 0.04, local=_t(p.anterior_st_mv * _ANTERIOR_ST)))
    for delay, amp in p.epsilon:  # reproducible small spikes after the QRS, V1-V3 (TFC 2010 major)
        waves.append(Wave("qrs", qrs_end + delay, 0.003, 0.003, local=_t(amp * np.array([1, 0.9, 0.6, 0.15, 0, 0]))))
    if "early_repol" in p.confounders:  # J-point notch and ST elevation, inferolateral
        er = _unit(0.75, 0.6, 0.2) * 0.15 * R / 1.25
        waves.append(Wave("qrs", qrs_end + 0.004, 0.008, 0.014, _t(er)))
        waves.append(Wave("repol", qrs_end - qrs_onset + 0.06, 0.05, 0.05, _t(0.5 * er)))
    waves += _repolarisation(p, visit, geometry, qrs_end - qrs_onset)
    return BeatTemplate(tuple(waves), qrs_onset=qrs_onset, qt_ref=visit.qtc_ms / 1000.0)


def _repolarisation(p: PatientProfile, visit: Visit, geometry: LeadGeometry, qrs_dur: float) -> list[Wave]:
    """T (and U) waves, offsets from QRS onset, with genotype morphology and local T inversion.

    LQT1 broad-based T, LQT2 low-amplitude notched T, LQT3 late peaked T after a long
    isoelectric ST (Moss et al. 1995; Zhang et al. 2000). The genotype-specific part is
    put on a lateral direction so I, aVL, V5, V6 show it best, while QT is global.
    """
    qt = visit.qtc_ms / 1000.0
    m = p.expression
    t_dir = _direction(p.axis_deg + p.t_axis_offset_deg, 0.35)
    amp = p.t_amp
    sa, sd = 0.065 * p.t_width, 0.042 * p.t_width
    extra: list[tuple[float, float, float, np.ndarray]] = []  # (peak before T end, sl, sr, vector)
    if "crbbb" in p.confounders:  # secondary T change: T opposite to the terminal QRS (TWI V1-V3)
        extra.append((2.3 * sd, sa, sd, -0.7 * p.t_amp * _RBBB_TERMINAL))
    if "lateral_t_flat" in p.confounders:  # non-specific lateral T flattening (age, LVH, drugs)
        extra.append((2.3 * sd, sa, sd, -0.3 * amp * _LATERAL))
        amp *= 0.7
    if p.genotype == "LQT1":
        sa, sd, amp = sa * (1 + 0.6 * m), sd * (1 + 0.35 * m), amp * (1 + 0.15 * m)
        extra.append((2.3 * sd + 0.03, 0.09, 0.09, 0.35 * m * amp * _LATERAL))
    elif p.genotype == "LQT2":
        # Bifid low-amplitude T: the main T shrinks and moves slightly earlier; a late second
        # hump ends the T wave (QT is measured to it) with a notch between the two. The
        # humps' difference and the notch point laterally.
        amp = amp * (1 - 0.2 * m)
        peak_before_end = 2.3 * sd + 0.03 * m
        second = 0.065
        extra.append((peak_before_end, sa, sd, -0.25 * m * p.t_amp * _LATERAL))  # low first hump
        extra.append((second, 0.03, 0.028, 0.45 * m * p.t_amp * _LATERAL + 0.1 * m * p.t_amp * t_dir))
        extra.append(((second + peak_before_end) / 2, 0.012, 0.012, -0.3 * m * p.t_amp * _LATERAL))
    elif p.genotype == "LQT3":
        sa, sd, amp = sa * (1 - 0.4 * m), sd * (1 - 0.2 * m), amp * (1 + 0.25 * m)
        extra.append((2.3 * sd, 0.03, 0.03, 0.3 * m * p.t_amp * _LATERAL))
    if p.genotype != "LQT2":
        peak_before_end = 2.3 * sd
    t_vec = amp * t_dir
    t_peak = max(qt - peak_before_end, qrs_dur + 0.05)
    waves = [Wave("repol", t_peak, sa, sd, _t(t_vec))]
    for before_end, sl, sr, vec in extra:
        waves.append(Wave("repol", max(qt - before_end, qrs_dur + 0.05), sl, sr, _t(vec)))
    if p.twi_extent:
        # Local inversion: flip each affected lead's own T and go ``depth`` below zero.
        weights = np.asarray(_TWI_EXTENT[p.twi_extent])
        proj = geometry.precordial @ t_vec
        depth = p.twi_depth_mv * visit.twi_scale
        local = -weights * (np.maximum(proj, 0.0) + depth)
        waves.append(Wave("repol", t_peak, sa, sd, local=_t(local)))
    if p.u_wave:
        waves.append(Wave("repol", qt + 0.07, 0.035, 0.035, _t(0.08 * p.t_amp * _unit(0.2, 0.3, 0.9))))
    return waves
