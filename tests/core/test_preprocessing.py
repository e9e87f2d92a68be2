"""The model-input contract: shape, dtype, lead order, window, z-score, refusals."""

from __future__ import annotations

import numpy as np
import pytest

from lasan.errors import BadWaveformError, ConfigError, MissingLeadsError
from lasan.formats.sample import sample_ecg
from lasan.leads import MODEL_LEADS, STANDARD_LEADS
from lasan.preprocessing import InputSpec, leads_for_rows, preprocess, preprocess_array


def test_output_shape_dtype_and_per_lead_zscore():
    x = preprocess(sample_ecg())
    assert x.shape == (8, 2500) and x.dtype == np.float32
    np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-4)
    std = x.std(axis=1)  # s / (s + eps): just below 1 for leads of ~0.1 mV spread
    assert np.all((std > 0.95) & (std < 1.0))


def test_rows_follow_the_spec_lead_order_whatever_the_input_order():
    rec = sample_ecg()
    shuffled = rec.leads[::-1]
    signal = np.stack([rec.lead(name) for name in shuffled])
    np.testing.assert_array_equal(preprocess_array(signal, rec.fs, shuffled), preprocess(rec))


def test_12_rows_and_8_rows_in_canonical_order_give_the_same_input():
    rec = sample_ecg()
    eight = np.stack([rec.lead(name) for name in MODEL_LEADS])
    np.testing.assert_allclose(preprocess_array(rec.signal, rec.fs), preprocess_array(eight, rec.fs), atol=1e-6)
    assert leads_for_rows(8) == MODEL_LEADS and leads_for_rows(12) == STANDARD_LEADS
    with pytest.raises(BadWaveformError, match="8 leads"):
        preprocess_array(rec.signal[:5], rec.fs)


@pytest.mark.parametrize("fs", [250.0, 257.0, 1000.0])
def test_other_rates_give_nearly_the_same_input(fs):
    reference = preprocess(sample_ecg(fs=500.0, noise_mv=0.0))
    other = preprocess(sample_ecg(fs=fs, noise_mv=0.0))
    assert other.shape == reference.shape
    assert np.corrcoef(reference.ravel(), other.ravel())[0, 1] > 0.99


def test_the_window_is_the_centre_of_a_longer_record():
    rec = sample_ecg(duration_s=10.0, noise_mv=0.0)
    spec = InputSpec(highpass_hz=None, lowpass_hz=None)
    x = preprocess(rec, spec)
    raw = np.stack([rec.lead(name) for name in MODEL_LEADS]).astype(np.float64)[:, 1250:3750]
    raw = (raw - raw.mean(axis=1, keepdims=True)) / (raw.std(axis=1, keepdims=True) + spec.zscore_eps_mv)
    np.testing.assert_allclose(x, raw, atol=1e-4)
    start = preprocess(rec, InputSpec(highpass_hz=None, lowpass_hz=None, window="start"))
    assert not np.allclose(start, x)


def test_short_records_are_zero_padded_and_too_short_ones_refused():
    x = preprocess(sample_ecg(duration_s=3.0))
    assert x.shape == (8, 2500)
    assert np.all(x[:, 1500:] == 0) and np.any(x[:, :1500] != 0)
    with pytest.raises(BadWaveformError, match="at least 2 s"):
        preprocess(sample_ecg(duration_s=1.5))


def test_flat_lead_becomes_zeros_not_amplified_noise():
    rec = sample_ecg()
    signal = rec.signal.copy()
    signal[rec.leads.index("V3")] = 0.2 + 1e-5 * np.random.default_rng(0).standard_normal(rec.n_samples)
    x = preprocess_array(signal, rec.fs, rec.leads)
    assert np.abs(x[MODEL_LEADS.index("V3")]).max() < 0.1


def test_missing_and_derivable_leads():
    rec = sample_ecg(leads=("I", "III", "V1", "V2", "V3", "V4", "V5", "V6"))
    full = sample_ecg()
    np.testing.assert_allclose(preprocess(rec), preprocess(full), atol=1e-3)  # II = I + III
    with pytest.raises(MissingLeadsError) as err:
        preprocess(sample_ecg(leads=("I", "II", "V1", "V2", "V3", "V4", "V5")))
    assert err.value.missing == ("V6",) and "V6" in str(err.value)


def test_nan_and_bad_rates_are_refused_with_the_lead_named():
    rec = sample_ecg()
    signal = rec.signal.copy()
    signal[rec.leads.index("V2"), 100] = np.nan
    with pytest.raises(BadWaveformError, match="V2"):
        preprocess_array(signal, rec.fs, rec.leads)
    with pytest.raises(BadWaveformError, match="sampling rate"):
        preprocess_array(rec.signal, 50.0, rec.leads)
    with pytest.raises(BadWaveformError, match="2-D"):
        preprocess_array(rec.signal[0], rec.fs)


def test_input_spec_validates_and_round_trips():
    spec = InputSpec(fs=250.0, n_samples=1250)
    assert InputSpec.from_dict(spec.to_dict()) == spec and spec.duration_s == 5.0
    with pytest.raises(ConfigError):
        InputSpec(window="middle")
    with pytest.raises(ConfigError):
        InputSpec.from_dict({"fs": 500.0, "bogus": 1})
    x = preprocess(sample_ecg(), spec)
    assert x.shape == (8, 1250)
