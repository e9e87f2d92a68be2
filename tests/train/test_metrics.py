"""Metrics on hand-computed values, the patient bootstrap on known cases, operating points."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import mannwhitneyu

from lasan.train.metrics import (
    auroc,
    confusion_matrix,
    ece_noise_floor,
    ece_with_ci,
    expected_calibration_error,
    macro_auroc,
    pairwise_auroc,
    patient_bootstrap,
    rankdata,
    reliability_curve,
    roc_curve,
    sens_spec_at,
    summary_metrics,
    wilson_interval,
)
from lasan.train.operating_points import choose_operating_points, evaluate_operating_points

CLASSES = ("ARVC", "LQTS", "control")


def test_rankdata_averages_ties():
    assert rankdata(np.array([3.0, 1.0, 3.0, 2.0])).tolist() == [3.5, 1.0, 3.5, 2.0]


def test_auroc_hand_computed_pairs():
    # Positives 1,2,3 vs negatives 0.5,1.5,2.5: 1+2+3 of 9 pairs ordered correctly.
    pos = np.array([1, 1, 1, 0, 0, 0], bool)
    score = np.array([1.0, 2.0, 3.0, 0.5, 1.5, 2.5])
    assert auroc(pos, score) == pytest.approx(6 / 9)


def test_auroc_ties_count_half_and_match_mann_whitney():
    pos = np.array([1, 0, 1, 0], bool)
    assert auroc(pos, np.array([0.5, 0.5, 0.9, 0.1])) == pytest.approx((1 + 0.5 + 1 + 1) / 4)
    rng = np.random.default_rng(1)
    score = rng.integers(0, 5, 200).astype(float)  # many ties
    pos = rng.random(200) < 0.3
    u = mannwhitneyu(score[pos], score[~pos]).statistic
    assert auroc(pos, score) == pytest.approx(u / (pos.sum() * (~pos).sum()))


def test_auroc_undefined_without_both_classes_is_nan():
    assert math.isnan(auroc(np.ones(3, bool), np.arange(3.0)))


def test_roc_curve_endpoints_and_area():
    pos = np.array([1, 1, 1, 0, 0, 0], bool)
    score = np.array([1.0, 2.0, 3.0, 0.5, 1.5, 2.5])
    fpr, tpr, _ = roc_curve(pos, score)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapz(tpr, fpr) == pytest.approx(6 / 9)


def test_macro_and_pairwise_auroc():
    y = np.array([0, 0, 1, 1, 2, 2])
    probs = np.array(
        [[0.8, 0.1, 0.1], [0.5, 0.2, 0.3], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.1, 0.2, 0.7], [0.4, 0.1, 0.5]]
    )
    per = {c: auroc(y == k, probs[:, k]) for k, c in enumerate(CLASSES)}
    assert macro_auroc(y, probs, CLASSES) == pytest.approx(np.mean(list(per.values())))
    pair = pairwise_auroc(y, probs, CLASSES)
    # ARVC vs control on rows 0,1,4,5 with p_A/(p_A+p_C): .889,.625 vs .125,.444 -> perfectly separated.
    assert pair["ARVC_vs_control"] == 1.0
    # LQTS vs control: .889,.429 vs .222,.167 -> 1.0
    assert pair["LQTS_vs_control"] == 1.0
    assert set(summary_metrics(y, probs, CLASSES)) == {
        "macro_auroc",
        "auroc_ARVC",
        "auroc_LQTS",
        "auroc_control",
        "auroc_ARVC_vs_control",
        "auroc_LQTS_vs_control",
    }


def test_confusion_matrix_counts():
    cm = confusion_matrix(np.array([0, 0, 1, 2, 2]), np.array([0, 1, 1, 2, 0]), 3)
    assert cm.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]


def test_ece_hand_computed():
    # Two bins: conf 0.9 (2 ECGs, 1 correct) and conf 0.6 (2 ECGs, 2 correct).
    probs = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.6, 0.3, 0.1]])
    y = np.array([0, 1, 0, 0])
    assert expected_calibration_error(y, probs) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    curve = reliability_curve(y, probs)
    assert curve["count"] == [2, 2] and curve["accuracy"] == [1.0, 0.5]


def test_sens_spec_at_threshold():
    r = sens_spec_at(np.array([1, 1, 0, 0], bool), np.array([0.9, 0.4, 0.5, 0.1]), 0.45)
    assert (r["sensitivity"], r["specificity"]) == (0.5, 0.5)


# --- patient bootstrap -------------------------------------------------------------


def _auc_stat(y, s):
    return lambda idx: {"auroc": auroc(y[idx], s[idx])}


def test_bootstrap_perfectly_separable_gives_ci_of_one():
    y = np.repeat([1, 0], 20).astype(bool)
    s = np.r_[np.linspace(0.6, 1, 20), np.linspace(0, 0.4, 20)]
    groups = np.repeat(np.arange(20), 2)
    ci = patient_bootstrap(_auc_stat(y, s), groups, n_boot=200, seed=0)["auroc"]
    assert (ci.estimate, ci.low, ci.high) == (1.0, 1.0, 1.0)


def test_bootstrap_is_deterministic_and_contains_estimate():
    rng = np.random.default_rng(0)
    y = rng.random(120) < 0.4
    s = y + rng.normal(0, 1.0, 120)
    groups = np.repeat(np.arange(40), 3)
    a = patient_bootstrap(_auc_stat(y, s), groups, n_boot=300, seed=7)["auroc"]
    b = patient_bootstrap(_auc_stat(y, s), groups, n_boot=300, seed=7)["auroc"]
    assert a == b
    assert a.low < a.estimate < a.high
    assert a.estimate == pytest.approx(auroc(y, s))


def test_patient_bootstrap_of_a_mean_matches_the_binomial_width():
    # 100 patients, half with value 1, each with 10 identical ECGs. Resampling patients gives the
    # mean ~ Binomial(100, 0.5)/100: 95 % CI about 0.5 +/- 1.96 * 0.05. Resampling ECGs as if they
    # were independent would shrink it by sqrt(10): the CI must not depend on ECGs per patient.
    values = np.repeat(np.r_[np.ones(50), np.zeros(50)], 10)
    groups = np.repeat(np.arange(100), 10)

    def stat(idx):
        return {"mean": float(values[idx].mean())}

    by_patient = patient_bootstrap(stat, groups, n_boot=1000, seed=0)["mean"]
    by_ecg = patient_bootstrap(stat, np.arange(len(values)), n_boot=1000, seed=0)["mean"]
    assert by_patient.low == pytest.approx(0.5 - 1.96 * 0.05, abs=0.02)
    assert by_patient.high == pytest.approx(0.5 + 1.96 * 0.05, abs=0.02)
    assert (by_ecg.high - by_ecg.low) == pytest.approx((by_patient.high - by_patient.low) / np.sqrt(10), rel=0.25)


def test_bootstrap_metric_undefined_in_every_replicate_gives_nan_interval():
    groups = np.arange(5)
    ci = patient_bootstrap(lambda idx: {"x": float("nan")}, groups, n_boot=10)["x"]
    assert ci.n_boot == 0 and math.isnan(ci.low)


# --- operating points ------------------------------------------------------------


def _constructed_validation():
    # 20 ARVC with p_ARVC 0.50..0.97 (step 0.025), 20 LQTS and 40 controls with p_ARVC 0.01..0.80.
    arvc = 0.50 + 0.025 * np.arange(20)
    others = np.linspace(0.01, 0.80, 60)
    probs = np.zeros((80, 3))
    probs[:20, 0] = arvc
    probs[20:, 0] = others
    probs[:20, 2] = 1 - arvc
    probs[20:40, 1] = 0.9 * (1 - others[:20]) + 0.1  # LQTS separable on its own column
    probs[40:, 2] = 1 - others[20:]
    labels = np.r_[np.zeros(20), np.ones(20), np.full(40, 2)].astype(int)
    return probs, labels


def test_screening_threshold_is_highest_with_sensitivity_95():
    probs, labels = _constructed_validation()
    t = choose_operating_points(probs, labels, CLASSES)["screening"]["ARVC"]
    # 95 % of 20 = 19 positives must be >= t: the 19th largest ARVC score is 0.525.
    assert t == pytest.approx(0.525)
    assert sens_spec_at(labels == 0, probs[:, 0], t)["sensitivity"] >= 0.95
    assert sens_spec_at(labels == 0, probs[:, 0], t + 1e-6)["sensitivity"] < 0.95


def test_confirmation_threshold_is_lowest_with_specificity_95():
    probs, labels = _constructed_validation()
    t = choose_operating_points(probs, labels, CLASSES)["confirmation"]["ARVC"]
    # At most 3 of 60 negatives may be flagged: t is the 3rd largest negative score.
    assert t == pytest.approx(np.sort(probs[labels != 0, 0])[-3])
    assert sens_spec_at(labels == 0, probs[:, 0], t)["specificity"] >= 0.95
    scores = probs[:, 0]
    lower = np.max(scores[scores < t])
    assert sens_spec_at(labels == 0, probs[:, 0], lower)["specificity"] < 0.95


def test_operating_points_cover_the_diseases_and_report_test_numbers():
    probs, labels = _constructed_validation()
    ops = choose_operating_points(probs, labels, CLASSES)
    assert set(ops) == {"screening", "confirmation"}
    assert set(ops["screening"]) == set(ops["confirmation"]) == {"ARVC", "LQTS"}
    test = evaluate_operating_points(ops, probs, labels, CLASSES)
    assert test["screening"]["LQTS"]["sensitivity"] >= 0.95
    assert test["confirmation"]["ARVC"]["specificity"] >= 0.95


def test_operating_points_skip_a_disease_absent_from_validation():
    probs, labels = _constructed_validation()
    keep = labels != 1
    ops = choose_operating_points(probs[keep], labels[keep], CLASSES)
    assert "LQTS" not in ops["screening"] and "ARVC" in ops["screening"]


def _calibrated_sample(rng, n_patients, per_patient, overconfident):
    """Top-label confidence c; the prediction is right with probability c (or c - 0.3 when overconfident)."""
    n = n_patients * per_patient
    conf = rng.uniform(0.4, 1.0, n)
    right = rng.uniform(0, 1, n) < np.clip(conf - (0.3 if overconfident else 0.0), 0, 1)
    y = rng.integers(0, 3, n)
    pred = np.where(right, y, (y + 1) % 3)
    probs = np.full((n, 3), 0.0)
    probs[np.arange(n), pred] = conf
    probs[np.arange(n), (pred + 1) % 3] = (1 - conf) / 2
    probs[np.arange(n), (pred + 2) % 3] = (1 - conf) / 2
    return y, probs, np.repeat(np.arange(n_patients), per_patient)


def test_ece_ci_separates_calibrated_from_overconfident():
    rng = np.random.default_rng(0)
    y, probs, groups = _calibrated_sample(rng, 300, 2, overconfident=False)
    good = ece_with_ci(y, probs, groups, n_boot=200, seed=0)
    y, probs, groups = _calibrated_sample(rng, 300, 2, overconfident=True)
    bad = ece_with_ci(y, probs, groups, n_boot=200, seed=0)
    for ci in (good, bad):
        # ECE is biased upwards on resamples (bin noise only adds), so near 0 the percentile
        # interval can sit just above the estimate; it is never below it.
        assert ci["low"] <= ci["high"] and ci["estimate"] <= ci["high"] and ci["n_boot"] == 200
    assert bad["low"] <= bad["estimate"]
    assert good["estimate"] == pytest.approx(
        expected_calibration_error(*_calibrated_sample(np.random.default_rng(0), 300, 2, overconfident=False)[:2])
    )
    assert good["high"] < 0.1 and bad["low"] > 0.2
    # Deterministic for a seed.
    assert ece_with_ci(y, probs, groups, n_boot=50, seed=3) == ece_with_ci(y, probs, groups, n_boot=50, seed=3)


def test_ece_ci_resamples_patients_not_ecgs():
    # Every patient's ECGs are identical: a patient-level bootstrap sees 20 units, not 200, so
    # its interval is wider than the same data with one ECG per patient.
    rng = np.random.default_rng(1)
    y, probs, _ = _calibrated_sample(rng, 20, 1, overconfident=True)
    y10, probs10 = np.repeat(y, 10), np.repeat(probs, 10, axis=0)
    by_patient = ece_with_ci(y10, probs10, np.repeat(np.arange(20), 10), n_boot=300, seed=0)
    by_ecg = ece_with_ci(y10, probs10, np.arange(200), n_boot=300, seed=0)
    assert (by_patient["high"] - by_patient["low"]) > 1.5 * (by_ecg["high"] - by_ecg["low"])


def test_wilson_interval_matches_scipy_and_stays_in_bounds():
    from scipy.stats import binomtest

    for k, n in ((8, 10), (0, 25), (25, 25), (37, 100)):
        low, high = wilson_interval(k, n)
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert low == pytest.approx(ref.low, abs=1e-9) and high == pytest.approx(ref.high, abs=1e-9)
        assert 0.0 <= low <= k / n <= high <= 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_ece_noise_floor_shrinks_with_sample_size_and_is_reached_by_a_calibrated_model():
    rng = np.random.default_rng(2)
    floors = []
    for n_patients in (50, 500):
        y, probs, _ = _calibrated_sample(rng, n_patients, 2, overconfident=False)
        floor = ece_noise_floor(probs, n_reps=200, seed=0)
        assert floor["p05"] <= floor["mean"] <= floor["p95"]
        # A model that IS calibrated lands inside its own noise floor.
        assert floor["p05"] <= expected_calibration_error(y, probs) <= floor["p95"] + 0.02
        floors.append(floor["mean"])
    assert floors[0] > 2 * floors[1] and floors[0] > 0.05  # 100 ECGs: the floor is above the 0.05
