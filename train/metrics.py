"""Classification metrics for LASAN evaluation, numpy only.

Every function takes integer labels ``y`` (index into the class list) and a
``(N, C)`` probability matrix, so the model, the baselines and the bootstrap share
one code path. A metric that is undefined on the data given (a class absent, so no
positive/negative pair exists) is ``nan``, never an exception: a bootstrap replicate
may legitimately miss a rare class, and the report says "n/a" for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

from lasan.labels import CONTROL, disease_classes

__all__ = [
    "CI",
    "rankdata",
    "auroc",
    "roc_curve",
    "one_vs_rest_auroc",
    "macro_auroc",
    "pairwise_auroc",
    "disease_classes",
    "confusion_matrix",
    "expected_calibration_error",
    "reliability_curve",
    "sens_spec_at",
    "summary_metrics",
    "patient_bootstrap",
    "ece_with_ci",
    "ece_noise_floor",
    "wilson_interval",
]


def rankdata(x: np.ndarray) -> np.ndarray:
    """Average ranks (1-based), ties share the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # Start index of each run of equal values, and the run lengths.
    starts = np.r_[0, np.nonzero(np.diff(xs))[0] + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def auroc(positive: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic (ties count 1/2).

    ``positive`` is boolean; ``nan`` when there are no positives or no negatives.
    """
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(score)
    u = ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(positive: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` for "predict positive when score >= threshold", from (0,0) to (1,1)."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    order = np.argsort(-score, kind="mergesort")
    s, p = score[order], positive[order]
    last_of_run = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]  # ties move together
    tp = np.cumsum(p)[last_of_run]
    fp = np.cumsum(~p)[last_of_run]
    n_pos, n_neg = max(int(p.sum()), 1), max(int((~p).sum()), 1)
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, s[last_of_run]]


def _control_index(classes: tuple[str, ...] | list[str]) -> int | None:
    lowered = [c.lower() for c in classes]
    return lowered.index(CONTROL) if CONTROL in lowered else None


def one_vs_rest_auroc(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, float]:
    """AUROC of each class's probability for "this class vs all others"."""
    y = np.asarray(y)
    return {c: auroc(y == k, probs[:, k]) for k, c in enumerate(classes)}


def macro_auroc(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str]) -> float:
    """Unweighted mean of the one-vs-rest AUROCs (``nan`` if any is undefined)."""
    values = list(one_vs_rest_auroc(y, probs, classes).values())
    return float(np.mean(values))


def pairwise_auroc(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, float]:
    """``"<disease>_vs_control"`` AUROCs on only those two classes' ECGs.

    The score is the disease probability renormalised over the two classes,
    ``p_d / (p_d + p_control)``, so that probability mass on the third class does not
    count for or against either.
    """
    y = np.asarray(y)
    ctrl = _control_index(classes)
    out: dict[str, float] = {}
    if ctrl is None:
        return out
    for k, c in enumerate(classes):
        if k == ctrl:
            continue
        keep = (y == k) | (y == ctrl)
        pair = probs[keep][:, [k, ctrl]]
        score = pair[:, 0] / np.maximum(pair.sum(axis=1), 1e-12)
        out[f"{c}_vs_control"] = auroc(y[keep] == k, score)
    return out


def confusion_matrix(y: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(C, C)`` counts, rows = true class, columns = predicted class."""
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y, dtype=np.int64), np.asarray(pred, dtype=np.int64)), 1)
    return cm


def reliability_curve(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Top-label reliability data: per equal-width confidence bin, mean confidence, accuracy, count.

    Empty bins are dropped. Confidence is the top class probability; correct means
    the top class is the true class (Guo et al. 2017, "On calibration of modern
    neural networks", whose ECE uses 15 bins).
    """
    y = np.asarray(y)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    # Right-closed bins (0, 1/15], ...; confidence is never below 1/C > 0.
    idx = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=correct, minlength=n_bins)
    used = counts > 0
    return {
        "bin_lower": edges[:-1][used].tolist(),
        "bin_upper": edges[1:][used].tolist(),
        "confidence": (conf_sum[used] / counts[used]).tolist(),
        "accuracy": (acc_sum[used] / counts[used]).tolist(),
        "count": counts[used].astype(int).tolist(),
    }


def expected_calibration_error(y: np.ndarray, probs: np.ndarray, n_bins: int = 15) -> float:
    """Top-label ECE: count-weighted mean |accuracy - confidence| over 15 equal-width bins."""
    if len(y) == 0:
        return float("nan")
    curve = reliability_curve(y, probs, n_bins)
    counts = np.asarray(curve["count"], dtype=np.float64)
    gap = np.abs(np.asarray(curve["accuracy"]) - np.asarray(curve["confidence"]))
    return float((counts * gap).sum() / counts.sum())


def sens_spec_at(positive: np.ndarray, score: np.ndarray, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity of "positive when score >= threshold"."""
    positive = np.asarray(positive, dtype=bool)
    flagged = np.asarray(score) >= threshold
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    sens = float((flagged & positive).sum() / n_pos) if n_pos else float("nan")
    spec = float((~flagged & ~positive).sum() / n_neg) if n_neg else float("nan")
    return {"threshold": float(threshold), "sensitivity": sens, "specificity": spec, "n_pos": n_pos, "n_neg": n_neg}


def summary_metrics(y: np.ndarray, probs: np.ndarray, classes: tuple[str, ...] | list[str]) -> dict[str, float]:
    """The flat set of scalar metrics that get bootstrap CIs: macro, per-class and pairwise AUROC."""
    per_class = one_vs_rest_auroc(y, probs, classes)
    out = {"macro_auroc": float(np.mean(list(per_class.values())))}
    out.update({f"auroc_{c}": v for c, v in per_class.items()})
    out.update({f"auroc_{k}": v for k, v in pairwise_auroc(y, probs, classes).items()})
    return out


@dataclass(frozen=True)
class CI:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    n_boot: int  # replicates in which the metric was defined

    def to_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n_boot": self.n_boot}


def patient_bootstrap(
    statistic: Callable[[np.ndarray], dict[str, float]],
    groups: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> dict[str, CI]:
    """Percentile bootstrap CIs, resampling *patients* (all their ECGs come along).

    ECGs of one patient are correlated; resampling ECGs independently would
    pretend there are more independent observations than patients and give CIs that
    are too narrow.

    Args:
        statistic: maps an index array (rows of the evaluation set, repeats allowed)
            to named scalar metrics; called once on all rows for the estimates.
        groups: ``(N,)`` patient id of each row.
        n_boot: replicates; deterministic for a given ``seed``.
        level: central coverage of the interval.

    Raises:
        ValueError: ``n_boot`` < 1 or ``level`` outside (0, 1) (programming errors).
    """
    if n_boot < 1 or not 0.0 < level < 1.0:
        raise ValueError("n_boot must be >= 1 and level in (0, 1)")
    groups = np.asarray(groups)
    _, inverse = np.unique(groups, return_inverse=True)
    order = np.argsort(inverse, kind="mergesort")
    bounds = np.r_[0, np.cumsum(np.bincount(inverse))]
    members = [order[bounds[i] : bounds[i + 1]] for i in range(len(bounds) - 1)]
    n_patients = len(members)
    estimates = statistic(np.arange(len(groups)))
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {k: [] for k in estimates}
    for _ in range(n_boot):
        picked = rng.integers(0, n_patients, size=n_patients)
        idx = np.concatenate([members[i] for i in picked])
        for k, v in statistic(idx).items():
            samples[k].append(v)
    alpha = (1.0 - level) / 2.0
    out: dict[str, CI] = {}
    for k, est in estimates.items():
        vals = np.asarray(samples[k], dtype=np.float64)
        vals = vals[np.isfinite(vals)]
        if vals.size == 0:
            out[k] = CI(float(est), float("nan"), float("nan"), 0)
        else:
            lo, hi = np.quantile(vals, [alpha, 1.0 - alpha])
            out[k] = CI(float(est), float(lo), float(hi), int(vals.size))
    return out


def ece_with_ci(
    y: np.ndarray, probs: np.ndarray, groups: np.ndarray, n_boot: int = 1000, seed: int = 0, n_bins: int = 15
) -> dict[str, float | int]:
    """Top-label ECE with a percentile patient-bootstrap CI, as ``CI.to_dict()``.

    ECE is biased upwards on small samples (every bin's |accuracy - confidence| is at
    least its sampling noise), so the interval says how far the estimate can be trusted,
    not that the true ECE lies inside it.
    """
    y = np.asarray(y)
    probs = np.asarray(probs, dtype=np.float64)
    cis = patient_bootstrap(
        lambda idx: {"ece": expected_calibration_error(y[idx], probs[idx], n_bins)}, groups, n_boot, seed
    )
    return cis["ece"].to_dict()


def wilson_interval(successes: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; ``(nan, nan)`` when ``n`` is 0.

    Used for shares of independent ECGs (one simulated ECG per "patient"), where it keeps
    its coverage near 0 and 1, unlike the normal approximation.
    """
    if n <= 0:
        return float("nan"), float("nan")
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


def ece_noise_floor(probs: np.ndarray, n_reps: int = 500, seed: int = 0, n_bins: int = 15) -> dict[str, float]:
    """ECE that a *perfectly calibrated* model with these confidences would show on this many ECGs.

    Each replicate keeps the top-label confidences and draws "correct" with exactly that
    probability, so any ECE it shows is sampling noise. On ~100 ECGs this floor is often
    above 0.05: an observed ECE near the floor cannot be told apart from perfect calibration.

    Returns ``{"mean", "p05", "p95"}`` over ``n_reps`` replicates (nan for no ECGs).
    """
    probs = np.asarray(probs, dtype=np.float64)
    if len(probs) == 0:
        return {"mean": float("nan"), "p05": float("nan"), "p95": float("nan")}
    conf = probs.max(axis=1)
    top = probs.argmax(axis=1)
    other = (top + 1) % probs.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_reps):
        correct = rng.uniform(size=len(conf)) < conf
        values.append(expected_calibration_error(np.where(correct, top, other), probs, n_bins))
    p05, p95 = np.quantile(values, [0.05, 0.95])
    return {"mean": float(np.mean(values)), "p05": float(p05), "p95": float(p95)}
