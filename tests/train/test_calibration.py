"""Calibration: temperature scaling recovers a known temperature and lowers NLL and ECE;
vector scaling is used only where it is clearly better; checkpoints store and serve it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from testkit import make_tiny_checkpoint

from lasan.errors import CheckpointError, ConfigError
from lasan.train.calibration import (
    calibrated_probs,
    choose_calibration,
    fit_temperature,
    fit_vector_scaling,
    nll,
)
from lasan.train.metrics import expected_calibration_error


def synthetic_logits(n: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose labels are drawn from ``softmax(logits / temperature)``: T is the true temperature."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, 3))
    p = np.exp(logits / temperature)
    p /= p.sum(axis=1, keepdims=True)
    y = np.array([rng.choice(3, p=row) for row in p])
    return logits, y


@pytest.mark.parametrize("true_t", [0.5, 2.5])
def test_fit_temperature_recovers_a_known_temperature_and_lowers_nll_and_ece(true_t):
    logits, y = synthetic_logits(4000, true_t)
    t = fit_temperature(logits, y)
    assert abs(t - true_t) / true_t < 0.1
    assert nll(logits, y, 1.0 / t) < nll(logits, y) - 0.02
    before = expected_calibration_error(y, calibrated_probs(logits, None))
    after = expected_calibration_error(y, calibrated_probs(logits, {"method": "temperature", "temperature": t}))
    assert after < 0.03 < before


def test_fit_temperature_is_the_nll_minimum():
    logits, y = synthetic_logits(1000, 1.7, seed=3)
    t = fit_temperature(logits, y)
    for other in (t * 0.97, t * 1.03):
        assert nll(logits, y, 1.0 / t) <= nll(logits, y, 1.0 / other)


def test_temperature_keeps_the_predicted_class():
    logits, _ = synthetic_logits(200, 2.0)
    cal = calibrated_probs(logits, {"method": "temperature", "temperature": 2.0})
    plain = calibrated_probs(logits, None)
    np.testing.assert_array_equal(cal.argmax(1), plain.argmax(1))
    assert cal.max(1).mean() < plain.max(1).mean()  # T > 1: less confident


def test_auto_prefers_temperature_unless_vector_scaling_is_clearly_better():
    logits, y = synthetic_logits(2000, 2.0)
    cal = choose_calibration(logits, y, "auto")
    assert cal["method"] == "temperature" and cal["fitted_on"] == "val"
    assert cal["nll_after"] < cal["nll_before"] and cal["ece_after"] < cal["ece_before"]
    # A class-specific bias that one temperature cannot fix.
    shifted = logits.copy()
    shifted[:, 0] += 2.0
    cal = choose_calibration(shifted, y, "auto")
    assert cal["method"] == "vector"
    assert cal["nll_after"] < nll(shifted, y, 1.0 / fit_temperature(shifted, y)) - 0.02
    scale, bias = fit_vector_scaling(shifted, y)
    assert abs((bias[0] - np.mean(bias[1:])) + 2.0 * scale[0]) < 0.3  # undoes the shift of the scaled logit


def test_bad_inputs_are_explained():
    with pytest.raises(ConfigError, match="logits"):
        fit_temperature(np.zeros((0, 3)), np.zeros(0))
    with pytest.raises(ConfigError, match="NaN"):
        fit_temperature(np.full((4, 3), np.nan), np.zeros(4))
    with pytest.raises(ConfigError, match="training.calibration"):
        choose_calibration(np.zeros((4, 3)), np.zeros(4), "platt")


def test_checkpoint_stores_calibration_and_old_ones_load_with_t_1(tmp_path):

    from lasan.checkpoint import load_checkpoint

    old = load_checkpoint(make_tiny_checkpoint(tmp_path / "old.pt"))
    assert old.info.calibration == {} and old.info.temperature == 1.0
    served_old = old.served_model()
    assert served_old.temperature == 1.0
    new = load_checkpoint(
        make_tiny_checkpoint(tmp_path / "new.pt", calibration={"method": "temperature", "temperature": 2.0})
    )
    assert new.info.temperature == 2.0 and new.served_model().temperature == 2.0
    x = torch.randn(3, 8, 2500)
    with torch.no_grad():
        logits = old.model(x)[0]  # same weights (same seed): only the calibration differs
        np.testing.assert_allclose(served_old(x)[0].numpy(), torch.softmax(logits, -1).numpy(), atol=1e-6)
        np.testing.assert_allclose(new.served_model()(x)[0].numpy(), torch.softmax(logits / 2.0, -1).numpy(), atol=1e-6)


def test_an_unusable_stored_calibration_is_a_checkpoint_error(tmp_path):

    from lasan.checkpoint import load_checkpoint

    bad = load_checkpoint(make_tiny_checkpoint(tmp_path / "bad.pt", calibration={"method": "platt"}))
    with pytest.raises(CheckpointError, match="calibration"):
        bad.served_model()
