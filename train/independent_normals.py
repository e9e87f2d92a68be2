"""Normal 12-lead ECGs from a generator this project did not write: neurokit2 (issue 10, part 4).

The synthetic cohort's controls come from our own beat model, so a model can learn that
model's quirks and still look specific. As an independent check of specificity, normal
ECGs are simulated with neurokit2's ECGSYN-based 12-lead simulator
(``neurokit2.ecg_simulate(method="multileads")``, McSharry et al. 2003 dynamics with
per-lead P/Q/R/S/T gains), with heart rate, heart-rate variability and noise drawn per ECG
from a seeded generator, 10 s at 500 Hz. Nothing is downloaded: the simulator is code.

Known limits of that simulator, stated in the report: each lead is rescaled to span
-0.4..1.2 mV, so every lead has the same peak-to-peak amplitude (about 1.6 mV) and lead
polarity is only partly realistic; the leads are not linked by Einthoven's law. They are
"normal" in that the simulator has no disease morphology, not in every clinical detail.

Simulating one ECG takes about 1-2 s (12 ODE integrations), so the records are cached in
an ``.npz`` keyed by every parameter that changes them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lasan.errors import ConfigError
from lasan.leads import canonical_lead
from lasan.record import Acquisition, ECGRecord
from lasan.train.metrics import disease_classes, wilson_interval

__all__ = [
    "HEART_RATE_BPM",
    "NOISE_MV",
    "NormalsSpec",
    "simulate_normals",
    "no_disease_flagged",
    "share_with_ci",
    "normals_at_operating_points",
]

log = logging.getLogger(__name__)

# Resting sinus rates of healthy adults (50-100 bpm) and neurokit2's Laplace noise amplitude:
# 0.01 is a clean tracing, 0.1 visibly noisy (the default is 0.01).
HEART_RATE_BPM = (50.0, 100.0)
HEART_RATE_STD_BPM = (1.0, 5.0)
NOISE_MV = (0.01, 0.1)


@dataclass(frozen=True)
class NormalsSpec:
    """How many normal ECGs to simulate and how; every field is part of the cache key."""

    n: int = 100
    seed: int = 20240
    fs: int = 500
    duration_s: int = 10

    def cache_name(self) -> str:
        return (
            f"neurokit2-{_neurokit().__version__}-normals-n{self.n}-seed{self.seed}-fs{self.fs}-{self.duration_s}s.npz"
        )


def _neurokit() -> Any:
    """neurokit2, imported quietly: its import touches scipy.misc, deprecated in scipy 1.x (warning only)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import neurokit2

    return neurokit2


def _simulate_one(rng: np.random.Generator, spec: NormalsSpec) -> tuple[np.ndarray, tuple[str, ...], dict[str, float]]:
    nk = _neurokit()

    params = {
        "heart_rate": float(rng.uniform(*HEART_RATE_BPM)),
        "heart_rate_std": float(rng.uniform(*HEART_RATE_STD_BPM)),
        "noise": float(rng.uniform(*NOISE_MV)),
    }
    frame = nk.ecg_simulate(
        duration=spec.duration_s,
        sampling_rate=spec.fs,
        method="multileads",
        random_state=int(rng.integers(2**31 - 1)),
        **params,
    )
    leads = tuple(canonical_lead(str(name)) or "" for name in frame.columns)
    if "" in leads:
        raise ConfigError(f"neurokit2 returned lead names {list(frame.columns)} that lasan.leads does not know")
    signal = frame.to_numpy(dtype=np.float64).T.astype(np.float32)  # (12, T) in mV
    return signal, leads, params


def simulate_normals(spec: NormalsSpec = NormalsSpec(), cache_dir: str | Path | None = None) -> list[ECGRecord]:
    """``spec.n`` normal 12-lead ECGs as :class:`ECGRecord` (mV, canonical lead names).

    Deterministic for a given ``spec`` and neurokit2 version. With ``cache_dir`` the
    signals are read from (or written to) one ``.npz`` there.

    Raises:
        ConfigError: ``spec.n`` < 1, or neurokit2 names a lead this project does not know.
    """
    if spec.n < 1:
        raise ConfigError("the number of independent normal ECGs must be at least 1")
    cache = Path(cache_dir) / spec.cache_name() if cache_dir else None
    if cache is not None and cache.is_file():
        data = np.load(cache)
        signals, leads = data["signals"], tuple(str(v) for v in data["leads"])
    else:
        log.info("simulating %d normal 12-lead ECGs with neurokit2 (about 1-2 s each)", spec.n)
        rng = np.random.default_rng(spec.seed)
        rows = [_simulate_one(rng, spec) for _ in range(spec.n)]
        signals, leads = np.stack([r[0] for r in rows]), rows[0][1]
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(".tmp.npz")
            np.savez_compressed(tmp, signals=signals, leads=np.array(leads))
            tmp.replace(cache)
    acquisition = Acquisition(
        "synthetic",
        manufacturer="neurokit2",
        device=f"neurokit2 {_neurokit().__version__} ecg_simulate(method='multileads')",
        notes=("independent normal ECG",),
    )
    return [ECGRecord(sig, float(spec.fs), leads, acquisition) for sig in signals]


def no_disease_flagged(probs: np.ndarray, thresholds: dict[str, float], classes: Sequence[str]) -> np.ndarray:
    """``(N,)`` True where no disease class reaches its threshold (``p >= t`` flags, as served)."""
    probs = np.asarray(probs)
    flagged = np.zeros(len(probs), dtype=bool)
    for cls, t in thresholds.items():
        if cls in classes and cls in disease_classes(tuple(classes)):
            flagged |= probs[:, list(classes).index(cls)] >= float(t)
    return ~flagged


def share_with_ci(ok: np.ndarray) -> dict[str, Any]:
    """Share of True in ``ok`` with its Wilson 95 % interval (the ECGs are independent draws)."""
    ok = np.asarray(ok, dtype=bool)
    low, high = wilson_interval(int(ok.sum()), int(ok.size))
    share = float(ok.mean()) if ok.size else float("nan")
    return {"k": int(ok.sum()), "n": int(ok.size), "share": share, "low": low, "high": high}


def normals_at_operating_points(
    probs: np.ndarray, thresholds: dict[str, dict[str, float]], classes: Sequence[str]
) -> dict[str, Any]:
    """Share of the normals with no disease flagged, per operating point, plus the predicted-class mix."""
    probs = np.asarray(probs)
    out: dict[str, Any] = {
        point: share_with_ci(no_disease_flagged(probs, per_class, classes))
        for point, per_class in thresholds.items()
        if per_class
    }
    predicted = probs.argmax(axis=1)
    out["predicted_class_counts"] = {c: int((predicted == k).sum()) for k, c in enumerate(classes)}
    out["mean_probability"] = {c: float(probs[:, k].mean()) for k, c in enumerate(classes)}
    return out
