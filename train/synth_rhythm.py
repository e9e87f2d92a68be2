"""Ectopic beats of the synthetic cohort: premature atrial and ventricular complexes in the rhythm.

A PAC (premature atrial complex) comes early with a P wave of another shape (an ectopic
atrial focus), conducts through the normal QRS, and resets the sinus node, so the pause
after it is not compensatory. A PVC (premature ventricular complex) comes early with no
P wave, a wide QRS of its own shape (it spreads muscle to muscle, not through the
bundles) and a T wave opposite to its QRS (secondary repolarisation change); the sinus
beat it replaces is hidden, and the next one comes on time, so the pause is fully
compensatory. The PVC's QRS axis tells where it comes from:

* right-ventricular outflow tract: left-bundle-branch-block morphology (negative V1),
  inferior axis (positive II) - the commonest benign idiopathic PVC (Lerman 2015);
* right-ventricular body/inferior wall: LBBB morphology, superior axis (negative II) -
  a Task Force 2010 major criterion for ARVC when it runs as VT, and the typical
  ARVC PVC (Marcus et al. 2010);
* left ventricle: right-bundle-branch-block morphology (positive V1).

Every amplitude is in mV and every time in seconds.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from lasan.train.synth_beats import PAC, PVC, SINUS, BeatTemplate, Rhythm, Wave

__all__ = ["PVC_ORIGINS", "add_ectopy", "pac_template", "pvc_template", "sinus_rr_indices"]

# QRS direction of each PVC origin (x = left, y = inferior, z = anterior).
PVC_ORIGINS: dict[str, tuple[float, float, float]] = {
    "rvot": (0.35, 0.85, -0.4),  # LBBB, inferior axis
    "rv_superior": (0.4, -0.75, -0.5),  # LBBB, superior axis
    "lv": (-0.5, 0.5, 0.7),  # RBBB morphology
}


def _unit(v: tuple[float, float, float] | np.ndarray) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    return a / np.linalg.norm(a)


def _t(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))


def add_ectopy(
    rng: np.random.Generator, rhythm: Rhythm, duration_s: float, pac_per_min: float, pvc_per_min: float
) -> Rhythm:
    """Replace sinus beats by premature beats at the given rates (Poisson per record).

    Ectopic beats are at least two beats apart and never the first beat. A PAC comes at
    65-80 % of the sinus cycle and shifts every later beat (sinus reset, non-compensatory
    pause); a PVC comes at 50-70 % of the cycle and later beats keep their times (the
    hidden sinus beat makes the pause fully compensatory).
    """
    n_pac = int(rng.poisson(pac_per_min * duration_s / 60.0))
    n_pvc = int(rng.poisson(pvc_per_min * duration_s / 60.0))
    times = rhythm.r_times.copy()
    kinds = rhythm.beat_kinds().copy()
    inside = np.nonzero((times > 0.3) & (times < duration_s - 0.3))[0]
    inside = inside[(inside >= 1) & (inside < len(times) - 1)]
    if n_pac + n_pvc == 0 or len(inside) == 0:
        return rhythm
    chosen: list[int] = []
    for idx in rng.permutation(inside):
        if all(abs(int(idx) - c) >= 2 for c in chosen):
            chosen.append(int(idx))
        if len(chosen) == n_pac + n_pvc:
            break
    which = rng.permutation([PAC] * n_pac + [PVC] * n_pvc)[: len(chosen)]
    for idx, kind in sorted(zip(chosen, which, strict=True)):
        rr = times[idx] - times[idx - 1]
        if kind == PVC:
            times[idx] = times[idx - 1] + rng.uniform(0.5, 0.7) * rr
        else:
            early = times[idx - 1] + rng.uniform(0.65, 0.8) * rr
            shift = early - times[idx] + 0.08 * rr  # sinus node reset: the next cycle starts from the PAC
            times[idx] = early
            times[idx + 1 :] += shift
        kinds[idx] = kind
    return replace(rhythm, r_times=times, kinds=kinds)


def sinus_rr_indices(rhythm: Rhythm) -> np.ndarray:
    """Indices ``i`` whose RR ``r[i+1] - r[i]`` joins two sinus beats (what QTc is measured on)."""
    kinds = rhythm.beat_kinds()
    return np.nonzero((kinds[:-1] == SINUS) & (kinds[1:] == SINUS))[0]


def pac_template(base: BeatTemplate, p_direction: tuple[float, float, float], p_amp: float) -> BeatTemplate:
    """The sinus template with an ectopic P wave (one component, shorter PR) in place of the sinus P."""
    waves = [w for w in base.waves if w.kind != "p"]
    p = Wave("p", base.qrs_onset - 0.09, 0.018, 0.018, _t(p_amp * _unit(p_direction)))
    return replace(base, waves=(p, *waves))


def pvc_template(origin: str, qrs_amp: float, qt_ref: float) -> BeatTemplate:
    """A wide (~140-180 ms) QRS of ``origin``'s axis with a discordant T; no P wave.

    Raises:
        KeyError: unknown ``origin`` (see :data:`PVC_ORIGINS`).
    """
    d = _unit(PVC_ORIGINS[origin])
    # A second, later component turned a little: the notched, slurred look of a PVC.
    d2 = _unit(d + np.array([0.2, 0.0, 0.25]))
    amp = 1.6 * qrs_amp
    waves = (
        Wave("qrs", -0.02, 0.018, 0.018, _t(amp * d), resp=True),
        Wave("qrs", 0.022, 0.021, 0.021, _t(0.7 * amp * d2), resp=True),
        Wave("repol", 0.29, 0.065, 0.05, _t(-0.3 * amp * d)),  # T opposite to the QRS
    )
    return BeatTemplate(waves, qrs_onset=-0.07, qt_ref=qt_ref)
