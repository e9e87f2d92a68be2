"""Signal model of the synthetic cohort: heart vector, lead projection, rhythm, noise, acquisition.

The cardiac source is a dipole in 3-D (x = patient's left, y = inferior, z = anterior)
written, as in ECGSYN (McSharry et al., IEEE TBME 2003), as a sum of Gaussian waves per
beat (P, septal q, main R, terminal S, T, U), each with a 3-D amplitude vector. Leads
are projections of that vector on lead vectors (Frank/Dower-like geometry), so the 12
leads are correlated as in a real ECG. On top of the dipole, right-precordial (V1-V6)
*local* components model what a single dipole cannot: the right-ventricular free wall
lies under V1-V3, so ARVC changes (epsilon waves, delayed terminal activation, T
inversion) appear there and fade towards V6.

Noise is generated per *electrode* (RA, LA, LL, V1-V6) and turned into leads as a cart
does (I = LA - RA, II = LL - RA, Vi = Ei - Wilson central terminal), so baseline wander,
EMG and mains interference are correlated across leads the way they are in practice
(noise types as in the MIT-BIH Noise Stress Test Database: baseline wander, muscle
artefact, electrode motion; Moody et al. 1984). The acquisition then applies the site's
band-pass, calibration gain and ADC resolution, and computes III, aVR, aVL and aVF from
the quantised I and II (Einthoven / Goldberger), as carts do.

Every amplitude is in mV and every time in seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lasan.dsp import bandpass

__all__ = [
    "PRECORDIAL",
    "LeadGeometry",
    "Wave",
    "BeatTemplate",
    "Rhythm",
    "SINUS",
    "PAC",
    "PVC",
    "NoiseLevels",
    "CartSettings",
    "default_geometry",
    "sample_rhythm",
    "render_leads",
    "electrode_noise",
    "acquire",
    "asym_gaussian",
]

PRECORDIAL: tuple[str, ...] = ("V1", "V2", "V3", "V4", "V5", "V6")
# Rows of the internal 8-lead array (the independent leads); the other 4 are derived.
INDEPENDENT: tuple[str, ...] = ("I", "II", *PRECORDIAL)


def _unit(v: tuple[float, float, float]) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


@dataclass(frozen=True)
class LeadGeometry:
    """Lead vectors: what each recorded lead 'sees' of the heart vector.

    ``limb`` is ``(2, 3)`` for I and II (frontal plane, I at 0 deg, II at +60 deg).
    ``precordial`` is ``(6, 3)``: horizontal-plane angles from the left (+x) towards
    anterior (+z), V6 0, V5 ~30, V4 ~55, V3 ~72, V2 ~94, V1 ~115 deg, each scaled by a
    proximity gain (V2-V4 sit closest to the heart and record the largest QRS).
    """

    limb: np.ndarray
    precordial: np.ndarray

    def project(self, dipole: np.ndarray) -> np.ndarray:
        """``(3, n)`` heart vector -> ``(8, n)`` leads I, II, V1..V6."""
        return np.vstack([self.limb @ dipole, self.precordial @ dipole])


_PRECORDIAL_ANGLES_DEG = np.array([115.0, 94.0, 72.0, 55.0, 30.0, 0.0])
_PRECORDIAL_GAINS = np.array([0.9, 1.45, 1.5, 1.35, 1.1, 0.85])


def default_geometry(
    angle_offsets_deg: tuple[float, ...] | np.ndarray = (0.0,) * 6,
    elevation_deg: tuple[float, ...] | np.ndarray = (0.0,) * 6,
    gain_factors: tuple[float, ...] | np.ndarray = (1.0,) * 6,
) -> LeadGeometry:
    """Lead vectors, with per-electrode offsets for placement and torso shape.

    The limb leads take no offsets: Einthoven's triangle is fixed by electrodes on the
    limbs, whereas a V electrode one intercostal space off changes V1-V3 a lot.
    """
    limb = np.array([[1.0, 0.0, 0.0], [0.5, np.sqrt(3.0) / 2.0, 0.0]])
    a = np.deg2rad(_PRECORDIAL_ANGLES_DEG + np.asarray(angle_offsets_deg, dtype=np.float64))
    e = np.deg2rad(np.asarray(elevation_deg, dtype=np.float64))
    gains = _PRECORDIAL_GAINS * np.asarray(gain_factors, dtype=np.float64)
    pre = np.stack([np.cos(a) * np.cos(e), np.sin(e), np.sin(a) * np.cos(e)], axis=1) * gains[:, None]
    return LeadGeometry(limb=limb, precordial=pre)


@dataclass(frozen=True)
class Wave:
    """One Gaussian wave of a beat.

    ``offset`` is relative to the R peak for ``kind`` "p"/"qrs" and relative to QRS
    onset for "repol" (T, U, ST): repolarisation waves stretch with the beat's QT
    (offset and widths scale by ``QT_beat / QT_ref``), which is how QT adapts to RR.
    ``dipole`` is the 3-D amplitude vector (mV); ``local`` adds a non-dipolar amplitude
    to V1..V6 (mV) with the same time course. ``resp`` lets respiration modulate the
    amplitude (QRS amplitude varies with the breathing cycle).
    """

    kind: str
    offset: float
    sigma_left: float
    sigma_right: float
    dipole: tuple[float, float, float] = (0.0, 0.0, 0.0)
    local: tuple[float, float, float, float, float, float] = (0.0,) * 6
    resp: bool = False


@dataclass(frozen=True)
class BeatTemplate:
    """All waves of one ECG's beats plus the reference timing they were placed with."""

    waves: tuple[Wave, ...]
    qrs_onset: float  # s relative to the R peak (negative)
    qt_ref: float  # s; the QT the repolarisation waves were placed for


SINUS, PAC, PVC = 0, 1, 2  # beat kinds: index into the templates render_leads is given


@dataclass(frozen=True)
class Rhythm:
    """Beat times, beat-to-beat QT and beat kind of one ECG."""

    r_times: np.ndarray  # s, may start before 0 and end after the record
    qt: np.ndarray  # s, per beat
    resp_phase: np.ndarray  # rad, respiratory phase at each beat
    resp_hz: float
    kinds: np.ndarray | None = None  # per beat SINUS / PAC / PVC; None = all sinus

    def beat_kinds(self) -> np.ndarray:
        return np.zeros(len(self.r_times), dtype=np.int64) if self.kinds is None else self.kinds

    @property
    def rr(self) -> np.ndarray:
        return np.diff(self.r_times)


def sample_rhythm(
    rng: np.random.Generator,
    duration_s: float,
    hr_bpm: float,
    qt_at_1s: float,
    qt_exponent: float = 0.4,
    rsa: float = 0.04,
    lf: float = 0.02,
    resp_hz: float = 0.25,
    jitter: float = 0.01,
) -> Rhythm:
    """RR intervals with respiratory sinus arrhythmia and a ~0.1 Hz (Mayer) component.

    RR_n = RR0 (1 + rsa sin(2 pi f_resp t) + lf sin(2 pi f_lf t) + N(0, jitter)); QT of each
    beat follows a smoothed RR (QT hysteresis, Lau et al. 1988) as ``QT = qt_at_1s *
    RR_eff ** qt_exponent``; 0.5 would be Bazett, 0.33 Fridericia, 0.4 sits between, as
    measured QT/RR slopes do (Malik et al. 2002).
    """
    rr0 = 60.0 / hr_bpm
    phi_r, phi_l = rng.uniform(0, 2 * np.pi, 2)
    f_lf = rng.uniform(0.08, 0.12)
    t = -rng.uniform(0.6, 1.0) * rr0 - rr0  # first beat before 0 so the record starts mid-cycle
    times, qts, phases = [], [], []
    rr_eff = rr0
    while t < duration_s + 1.5:
        phase = 2 * np.pi * resp_hz * t + phi_r
        times.append(t)
        qts.append(qt_at_1s * rr_eff**qt_exponent)  # set by the cycles *before* this beat
        phases.append(phase)
        rr = rr0 * (1.0 + rsa * np.sin(phase) + lf * np.sin(2 * np.pi * f_lf * t + phi_l) + rng.normal(0, jitter))
        rr = float(np.clip(rr, 0.3, 2.0))
        rr_eff = 0.6 * rr_eff + 0.4 * rr
        t += rr
    return Rhythm(np.asarray(times), np.asarray(qts), np.asarray(phases), resp_hz)


def asym_gaussian(t: np.ndarray, centre: float, sigma_left: float, sigma_right: float) -> np.ndarray:
    """exp(-(t-c)^2 / 2 s^2), with s = sigma_left before the peak and sigma_right after."""
    d = t - centre
    s = np.where(d < 0, sigma_left, sigma_right)
    return np.exp(-0.5 * (d / s) ** 2)


def render_leads(
    template: BeatTemplate | tuple[BeatTemplate, ...],
    rhythm: Rhythm,
    geometry: LeadGeometry,
    fs: float,
    n_samples: int,
    resp_qrs_depth: float = 0.04,
) -> np.ndarray:
    """Noise-free cardiac signal ``(8, n_samples)``: rows I, II, V1..V6 (mV).

    ``template`` is one template for every beat, or one per beat kind (SINUS, PAC, PVC)
    indexed by ``rhythm.kinds``. Each Gaussian is evaluated only within 5 sigma of its
    centre, so cost grows with the number of waves, not with waves x samples.
    """
    templates = (template,) if isinstance(template, BeatTemplate) else tuple(template)
    dipole = np.zeros((3, n_samples))
    local = np.zeros((6, n_samples))
    arrays = []
    for tpl in templates:
        loc = np.array([w.local for w in tpl.waves])  # (W, 6)
        arrays.append((np.array([w.dipole for w in tpl.waves]), loc, np.any(loc != 0, axis=1)))  # (W, 3), (W, 6)
    kinds = rhythm.beat_kinds() if len(templates) > 1 else np.zeros(len(rhythm.r_times), dtype=np.int64)
    for r, qt, phase, kind in zip(rhythm.r_times, rhythm.qt, rhythm.resp_phase, kinds, strict=True):
        template = templates[int(kind)]
        dip, loc, has_local = arrays[int(kind)]
        stretch = qt / template.qt_ref
        onset = r + template.qrs_onset
        resp_gain = 1.0 + resp_qrs_depth * np.sin(phase)
        for i, w in enumerate(template.waves):
            if w.kind == "repol":
                centre, sl, sr = onset + w.offset * stretch, w.sigma_left * stretch, w.sigma_right * stretch
            else:
                centre, sl, sr = r + w.offset, w.sigma_left, w.sigma_right
            lo = max(int(np.floor((centre - 5 * sl) * fs)), 0)
            hi = min(int(np.ceil((centre + 5 * sr) * fs)) + 1, n_samples)
            if hi <= lo:
                continue
            shape = asym_gaussian(np.arange(lo, hi) / fs, centre, sl, sr)
            if w.resp:
                shape = shape * resp_gain
            dipole[:, lo:hi] += dip[i][:, None] * shape
            if has_local[i]:
                local[:, lo:hi] += loc[i][:, None] * shape
    leads = geometry.project(dipole)
    leads[2:] += local
    return leads


@dataclass(frozen=True)
class NoiseLevels:
    """Per-record noise amplitudes (mV) at the electrodes."""

    baseline: float = 0.1  # respiratory + slow drift amplitude
    emg: float = 0.01  # muscle artefact RMS
    mains: float = 0.01  # 50/60 Hz amplitude before the cart's notch (if any)
    mains_hz: float = 60.0
    motion_events: int = 0  # electrode-motion artefacts (step + exponential recovery)


_ELECTRODES = ("RA", "LA", "LL", *PRECORDIAL)


def electrode_noise(rng: np.random.Generator, levels: NoiseLevels, fs: float, n: int, resp_hz: float) -> np.ndarray:
    """Noise ``(8, n)`` on leads I, II, V1..V6, generated per electrode and combined as a cart does."""
    t = np.arange(n) / fs
    e = np.zeros((len(_ELECTRODES), n))
    k = len(_ELECTRODES)
    # Baseline: breathing moves the electrodes and the heart (shared phase, own amplitude),
    # plus slow drift of the electrode-skin potential (a few random low frequencies).
    phase = rng.uniform(0, 2 * np.pi)
    e += (levels.baseline * rng.lognormal(0, 0.4, k))[:, None] * np.sin(2 * np.pi * resp_hz * t + phase)[None, :]
    for _ in range(3):
        f = rng.uniform(0.03, 0.5, k)[:, None]
        e += (0.5 * levels.baseline * rng.lognormal(0, 0.5, k))[:, None] * np.sin(
            2 * np.pi * f * t[None, :] + rng.uniform(0, 2 * np.pi, k)[:, None]
        )
    # EMG: broadband, first-differenced white noise (energy above ~20 Hz, like NSTDB "ma").
    # Limb electrodes pick up more (arms and legs tense), and the level is defined per
    # 500 Hz so that the RMS seen after a 150 Hz filter does not depend on fs.
    white = rng.standard_normal((k, n + 1))
    emg = (white[:, 1:] - 0.7 * white[:, :-1]) * np.sqrt(min(fs, 500.0) / 500.0)
    emg_level = levels.emg * np.r_[np.full(3, 1.5), np.ones(6)] * rng.lognormal(0, 0.3, k)
    e += emg_level[:, None] * emg
    # Mains: electrode-impedance mismatch turns the common-mode field into differential
    # interference of electrode-specific amplitude and phase.
    mains_amp = levels.mains * rng.lognormal(0, 0.5, k)
    e += mains_amp[:, None] * np.sin(2 * np.pi * levels.mains_hz * t[None, :] + rng.uniform(0, 2 * np.pi, k)[:, None])
    for _ in range(levels.motion_events):
        which = rng.integers(k)
        t0 = rng.uniform(0, t[-1])
        step = rng.choice([-1, 1]) * rng.uniform(0.2, 1.0)
        tau = rng.uniform(0.2, 0.8)
        after = t >= t0
        e[which, after] += step * np.exp(-(t[after] - t0) / tau)
    ra, la, ll, v = e[0], e[1], e[2], e[3:]
    wct = (ra + la + ll) / 3.0
    return np.vstack([la - ra, ll - ra, v - wct[None, :]])


@dataclass(frozen=True)
class CartSettings:
    """What a site's cart does to the signal after the electrodes (a mains notch is modelled
    in :class:`NoiseLevels` as a lower mains amplitude)."""

    fs: float
    filter_low_hz: float | None
    filter_high_hz: float | None
    adc_gain: float  # ADC units per mV (resolution = 1000 / adc_gain microvolts)
    calibration: float = 1.0  # amplifier gain error of the site (multiplicative)


def acquire(leads8: np.ndarray, acq: CartSettings) -> np.ndarray:
    """Filter, calibrate and quantise I, II, V1..V6, then derive the 12 leads.

    Returns ``(12, n)`` float32 mV in standard order. III = II - I exactly (integer ADC
    units, as carts compute it); the augmented leads are exact to half an ADC unit.
    """
    x = bandpass(leads8, acq.fs, acq.filter_low_hz, acq.filter_high_hz) * acq.calibration
    q = np.round(x * acq.adc_gain)
    i, ii, v = q[0], q[1], q[2:]
    limb = np.vstack([i, ii, ii - i, -(i + ii) / 2.0, i - ii / 2.0, ii - i / 2.0])
    return (np.vstack([limb, v]) / acq.adc_gain).astype(np.float32)
