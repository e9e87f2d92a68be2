"""neurokit2 normal ECGs become ECG records our pipeline reads; the share check on constructed probabilities."""

from __future__ import annotations

import numpy as np
import pytest

from lasan.leads import MODEL_LEADS, STANDARD_LEADS
from lasan.preprocessing import InputSpec, preprocess
from lasan.train.independent_normals import (
    NormalsSpec,
    no_disease_flagged,
    normals_at_operating_points,
    simulate_normals,
)

CLASSES = ("ARVC", "LQTS", "control")


@pytest.fixture(scope="module")
def normals(tmp_path_factory):
    cache = tmp_path_factory.mktemp("normals")
    return simulate_normals(NormalsSpec(n=3, seed=11), cache), cache


def test_normals_are_12_lead_records_in_mv_at_500_hz(normals):
    records, _ = normals
    assert len(records) == 3
    for r in records:
        assert r.leads == STANDARD_LEADS and set(MODEL_LEADS) <= set(r.leads)
        assert r.fs == 500.0 and r.signal.shape == (12, 5000) and r.signal.dtype == np.float32
        ptp = np.ptp(r.signal, axis=1)
        assert np.all((ptp > 0.5) & (ptp < 5.0)), ptp  # a resting ECG in mV, not volts or microvolts
        assert r.acquisition.manufacturer == "neurokit2"
        x = preprocess(r, InputSpec())
        assert x.shape == (8, 2500) and np.all(np.isfinite(x))
    # Heart rate and noise differ between ECGs: the signals are not copies.
    assert not np.allclose(records[0].signal, records[1].signal)


def test_normals_are_seeded_and_cached(normals):
    records, cache = normals
    files = list(cache.glob("neurokit2-*-normals-n3-seed11-*.npz"))
    assert len(files) == 1
    again = simulate_normals(NormalsSpec(n=3, seed=11), cache)  # read back from the cache
    for a, b in zip(records, again, strict=True):
        np.testing.assert_array_equal(a.signal, b.signal)


def test_share_with_no_disease_flagged_per_operating_point():
    probs = np.array([[0.1, 0.1, 0.8], [0.5, 0.1, 0.4], [0.2, 0.35, 0.45], [0.05, 0.05, 0.9]])
    thresholds = {"screening": {"ARVC": 0.3, "LQTS": 0.3}, "confirmation": {"ARVC": 0.6, "LQTS": 0.6}}
    assert no_disease_flagged(probs, thresholds["screening"], CLASSES).tolist() == [True, False, False, True]
    out = normals_at_operating_points(probs, thresholds, CLASSES)
    assert out["screening"]["k"] == 2 and out["screening"]["n"] == 4 and out["screening"]["share"] == 0.5
    assert out["confirmation"]["share"] == 1.0
    assert out["screening"]["low"] < 0.5 < out["screening"]["high"]
    assert out["predicted_class_counts"] == {"ARVC": 1, "LQTS": 0, "control": 3}
    # A threshold for the control class is not a disease flag.
    assert no_disease_flagged(probs, {"control": 0.1}, CLASSES).all()
