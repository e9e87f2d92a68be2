"""Hand-measured ECG features for the clinical baseline: RR, QRS, QT/QTc, T-wave amplitudes.

These are the measurements a cardiologist would use (Schwartz score QTc bands for
LQTS; T-wave inversion in V1-V3 from the 2010 ARVC Task Force criteria), measured
automatically so that a logistic regression on them is the "what can intervals
alone do" baseline LASAN is compared against.

Measured on the *preprocessed* model input (500 Hz, band-passed, per-lead z-scored):
intervals are unaffected by the z-score, and T amplitudes are expressed relative to
the QRS peak-to-peak amplitude of the same lead, which is also gain-independent across
sites. Numpy only.

Method: QRS complexes are found on the spatial derivative energy (sum over leads of
|dx/dt|); a median beat per lead is built around them; QRS onset/offset are where the
median energy crosses 15 % of its peak above baseline; T end is the tangent method
(the tangent at the steepest T-wave downslope meets the isoelectric level, Lepeschkin
and Surawicz 1952), per lead with a clear T wave, and the median across those leads
is taken. QTc by Bazett (QT/sqrt(RR)) and Fridericia (QT/RR^(1/3)).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "T_WAVE_LEADS",
    "BeatMeasurements",
    "detect_r_peaks",
    "measure_beat",
    "clinical_features",
    "feature_matrix",
]

# V1-V3 carry ARVC's T-wave inversion; II and V5 show LQTS T-wave morphology best.
T_WAVE_LEADS: tuple[str, ...] = ("V1", "V2", "V3", "II", "V5")
FEATURE_NAMES: tuple[str, ...] = (
    "rr_ms",
    "qrs_ms",
    "qt_ms",
    "qtc_bazett_ms",
    "qtc_fridericia_ms",
    *(f"t_amp_rel_{lead}" for lead in T_WAVE_LEADS),
)

_REFRACTORY_S = 0.25  # no two QRS complexes closer than 250 ms (240 bpm)
_PRE_S = 0.25  # median beat starts 250 ms before R (covers the PR segment)


@dataclass(frozen=True)
class BeatMeasurements:
    """Intervals in ms and signed relative T amplitudes; nan when not measurable."""

    rr_ms: float
    qrs_ms: float
    qt_ms: float
    t_amp_rel: dict[str, float]

    @property
    def qtc_bazett_ms(self) -> float:
        return self.qt_ms / np.sqrt(self.rr_ms / 1000.0)

    @property
    def qtc_fridericia_ms(self) -> float:
        return self.qt_ms / np.cbrt(self.rr_ms / 1000.0)

    def vector(self) -> np.ndarray:
        return np.array(
            [self.rr_ms, self.qrs_ms, self.qt_ms, self.qtc_bazett_ms, self.qtc_fridericia_ms]
            + [self.t_amp_rel.get(lead, np.nan) for lead in T_WAVE_LEADS],
            dtype=np.float64,
        )


def _smooth(x: np.ndarray, n: float) -> np.ndarray:
    n = max(int(n), 1)
    return np.convolve(x, np.ones(n) / n, mode="same")


def _energy(x: np.ndarray, fs: float) -> np.ndarray:
    d = np.abs(np.diff(x, axis=-1, prepend=x[..., :1]))
    return _smooth(d.sum(axis=0), 0.02 * fs)  # (T,)


def detect_r_peaks(x: np.ndarray, fs: float) -> np.ndarray:
    """Sample indices of QRS complexes in ``x (leads, T)``, from the spatial derivative energy."""
    e = _energy(x, fs)
    thr = 0.3 * np.quantile(e, 0.995)
    above = e > thr
    if not above.any():
        return np.zeros(0, dtype=np.int64)
    edges = np.diff(above.astype(np.int8), prepend=0, append=0)
    starts, ends = np.nonzero(edges == 1)[0], np.nonzero(edges == -1)[0]
    peaks = [s + int(np.argmax(e[s:t])) for s, t in zip(starts, ends, strict=True)]
    refractory = int(_REFRACTORY_S * fs)
    kept: list[int] = []
    for p in sorted(peaks, key=lambda i: -e[i]):  # strongest first wins a refractory conflict
        if all(abs(p - k) >= refractory for k in kept):
            kept.append(p)
    return np.array(sorted(kept), dtype=np.int64)


def measure_beat(x: np.ndarray, fs: float, leads: tuple[str, ...]) -> BeatMeasurements:
    """Measure one ECG ``x (leads, T)`` sampled at ``fs``; all-nan when fewer than 2 beats are found."""
    nan = BeatMeasurements(np.nan, np.nan, np.nan, {})
    x = np.asarray(x, dtype=np.float64)
    r = detect_r_peaks(x, fs)
    if len(r) < 2:
        return nan
    rr = float(np.median(np.diff(r))) / fs
    pre = int(_PRE_S * fs)
    post = int(np.clip(0.9 * rr, 0.35, 0.8) * fs)
    r = r[(r - pre >= 0) & (r + post <= x.shape[1])]
    if len(r) == 0:
        return nan
    beats = np.stack([x[:, p - pre : p + post] for p in r])  # (beats, L, W)
    median = np.median(beats, axis=0)  # (L, W); R at index `pre`
    e = _energy(median, fs)
    base = float(np.median(e[: int(0.1 * fs)]))
    peak = float(e[pre - int(0.04 * fs) : pre + int(0.04 * fs)].max())
    thr = base + 0.15 * (peak - base)
    before = np.nonzero(e[:pre] < thr)[0]
    after = np.nonzero(e[pre:] < thr)[0]
    if len(before) == 0 or len(after) == 0:
        return nan
    onset, offset = int(before[-1]), pre + int(after[0])
    t_ends, t_amp = [], {}
    for i, lead in enumerate(leads):
        beat = median[i]
        iso = float(np.median(beat[max(onset - int(0.04 * fs), 0) : max(onset - int(0.01 * fs), 1)]))
        qrs_amp = float(np.ptp(beat[onset : offset + 1])) or 1e-9
        lo = offset + int(0.06 * fs)
        # The T wave ends before the next beat's P wave, which sits one RR after this beat's
        # P peak (the largest deflection before the QRS); at fast rates it would win the argmax.
        p_peak = int(np.argmax(np.abs(beat[: max(onset - int(0.02 * fs), 1)] - iso)))
        next_p = pre + int(rr * fs) + (p_peak - pre) - int(0.06 * fs)
        hi = min(pre + int(min(0.7 * rr, 0.6) * fs), next_p, beat.size)
        if lo >= hi - 2:
            continue
        seg = beat[lo:hi] - iso
        tp = lo + int(np.argmax(np.abs(seg)))
        amp = float(beat[tp] - iso)
        t_amp[lead] = amp / qrs_amp
        if abs(amp) < 0.1 * qrs_amp:
            continue  # flat T: the tangent is meaningless in this lead
        d = np.gradient(_smooth(beat, 0.01 * fs)) * fs  # per second
        # A notched (bifid) T ends after its *last* hump: move to the last local extremum
        # of the T's polarity that reaches half the T amplitude.
        signed = (beat[tp:hi] - iso) * np.sign(amp)
        humps = np.nonzero(
            (signed[1:-1] >= signed[:-2]) & (signed[1:-1] > signed[2:]) & (signed[1:-1] >= 0.5 * abs(amp))
        )[0]
        if len(humps):
            tp += int(humps[-1]) + 1
        stop = min(tp + int(0.25 * fs), beat.size - 1)
        if stop <= tp + 1:
            continue
        downslope = d[tp:stop] * -np.sign(amp)  # toward the baseline is positive
        m = tp + int(np.argmax(downslope))
        if d[m] == 0:
            continue
        t_end = m + (iso - beat[m]) / d[m] * fs  # samples
        if tp < t_end < next_p + 0.03 * fs:  # a T end inside the next P wave is a failed tangent
            t_ends.append(t_end)
    qt = (float(np.median(t_ends)) - onset) / fs * 1000.0 if t_ends else np.nan
    return BeatMeasurements(rr * 1000.0, (offset - onset) / fs * 1000.0, qt, t_amp)


def clinical_features(x: np.ndarray, fs: float, leads: tuple[str, ...]) -> np.ndarray:
    """The :data:`FEATURE_NAMES` vector for one ECG ``(leads, T)``."""
    return measure_beat(x, fs, leads).vector()


def feature_matrix(x: np.ndarray, fs: float, leads: tuple[str, ...]) -> np.ndarray:
    """``(N, len(FEATURE_NAMES))`` features for a batch of preprocessed ECGs ``(N, leads, T)``."""
    return np.stack([clinical_features(xi, fs, leads) for xi in x]) if len(x) else np.zeros((0, len(FEATURE_NAMES)))
