"""Screening and confirmation operating points, chosen on validation predictions.

For each disease class (one-vs-rest on that class's probability, "positive when
p >= threshold"):

* screening: the *highest* threshold whose sensitivity is still >= 0.95, so that
  as few controls as possible are referred while 95 % of patients are caught;
* confirmation: the *lowest* threshold whose specificity is >= 0.95, so that as many
  patients as possible are confirmed while at most 5 % of non-cases are flagged.

Thresholds must be chosen on validation data and only *reported* on test data;
choosing them on test data would make the reported sensitivity a fitted value.
"""

from __future__ import annotations

import logging

import numpy as np

from lasan.train.metrics import disease_classes, sens_spec_at

__all__ = ["SCREENING_SENSITIVITY", "CONFIRMATION_SPECIFICITY", "choose_operating_points", "evaluate_operating_points"]

log = logging.getLogger(__name__)

SCREENING_SENSITIVITY = 0.95
CONFIRMATION_SPECIFICITY = 0.95


def _candidates(score: np.ndarray) -> np.ndarray:
    # Every distinct score, plus one just above the maximum ("flag nobody").
    uniq = np.unique(score)
    return np.r_[uniq, np.nextafter(uniq[-1], np.inf)]


def screening_threshold(positive: np.ndarray, score: np.ndarray, target: float = SCREENING_SENSITIVITY) -> float:
    """Highest threshold with sensitivity >= ``target``; nan without positives."""
    pos_scores = np.sort(np.asarray(score, dtype=np.float64)[np.asarray(positive, dtype=bool)])[::-1]
    if pos_scores.size == 0:
        return float("nan")
    # Sensitivity at t = #(pos >= t) / n_pos; it stays >= target down to the k-th largest positive.
    k = int(np.ceil(target * pos_scores.size - 1e-9))
    return float(pos_scores[max(k, 1) - 1])


def confirmation_threshold(positive: np.ndarray, score: np.ndarray, target: float = CONFIRMATION_SPECIFICITY) -> float:
    """Lowest threshold with specificity >= ``target``; nan without negatives."""
    positive = np.asarray(positive, dtype=bool)
    score = np.asarray(score, dtype=np.float64)
    neg = np.sort(score[~positive])
    if neg.size == 0:
        return float("nan")
    cands = _candidates(score)
    # Specificity at t = #(neg < t) / n_neg, non-decreasing in t.
    spec = np.searchsorted(neg, cands, side="left") / neg.size
    ok = np.nonzero(spec >= target - 1e-12)[0]
    return float(cands[ok[0]])


def choose_operating_points(
    val_probs: np.ndarray, val_labels: np.ndarray, classes: tuple[str, ...] | list[str]
) -> dict[str, dict[str, float]]:
    """Thresholds for :attr:`lasan.checkpoint.CheckpointInfo.thresholds`.

    Args:
        val_probs: ``(N, C)`` validation probabilities (softmax).
        val_labels: ``(N,)`` integer labels indexing ``classes``.
        classes: class names in probability-column order.

    Returns:
        ``{"screening": {disease: t}, "confirmation": {disease: t}}``. A disease
        without positives (or without negatives) in the validation data is left out
        and logged, because no threshold can be justified for it.
    """
    val_probs = np.asarray(val_probs, dtype=np.float64)
    val_labels = np.asarray(val_labels)
    out: dict[str, dict[str, float]] = {"screening": {}, "confirmation": {}}
    for cls in disease_classes(classes):
        k = list(classes).index(cls)
        positive = val_labels == k
        if positive.all() or not positive.any():
            log.warning("no operating point for %s: validation data lacks positives or negatives", cls)
            continue
        out["screening"][cls] = screening_threshold(positive, val_probs[:, k])
        out["confirmation"][cls] = confirmation_threshold(positive, val_probs[:, k])
    return out


def evaluate_operating_points(
    thresholds: dict[str, dict[str, float]],
    probs: np.ndarray,
    labels: np.ndarray,
    classes: tuple[str, ...] | list[str],
) -> dict[str, dict[str, dict[str, float]]]:
    """Sensitivity and specificity of each stored threshold on (test) data.

    Returns ``{"screening": {disease: {"threshold", "sensitivity", "specificity",
    "n_pos", "n_neg"}}, "confirmation": {...}}``.
    """
    labels = np.asarray(labels)
    out: dict[str, dict[str, dict[str, float]]] = {}
    for point, per_class in thresholds.items():
        out[point] = {}
        for cls, t in per_class.items():
            if cls not in classes:
                continue
            k = list(classes).index(cls)
            out[point][cls] = sens_spec_at(labels == k, probs[:, k], float(t))
    return out
