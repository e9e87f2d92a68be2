"""Resampling and band-pass against signals whose exact values are known."""

from __future__ import annotations

import numpy as np
import pytest

from lasan.dsp import bandpass, resample

RATES = [250.0, 257.0, 360.0, 500.0, 1000.0, 333.3]  # 360: MIT-BIH; 333.3: an odd one


def _tones(fs: float, seconds: float, freqs=(1.3, 7.0, 23.0), phases=(0.2, 1.1, 2.0)) -> tuple[np.ndarray, callable]:
    def f(t):
        return sum(np.sin(2 * np.pi * fr * t + ph) for fr, ph in zip(freqs, phases, strict=True))

    t = np.arange(int(round(seconds * fs))) / fs
    return f(t)[None, :], f


@pytest.mark.parametrize("fs_in", RATES)
@pytest.mark.parametrize("fs_out", [500.0, 250.0])
def test_resample_matches_the_analytic_signal_in_the_interior(fs_in, fs_out):
    x, f = _tones(fs_in, 6.0)
    y = resample(x, fs_in, fs_out)
    assert y.shape == (1, int(round(x.shape[1] * fs_out / fs_in)))
    t = np.arange(y.shape[1]) / fs_out
    interior = (t > 0.5) & (t < t[-1] - 0.5)
    # Any phase shift or gain error would show up against the exact values.
    np.testing.assert_allclose(y[0, interior], f(t[interior]), atol=2e-3)


@pytest.mark.parametrize("fs_in", RATES)
def test_resample_keeps_a_pulse_where_it_was(fs_in):
    t = np.arange(int(5 * fs_in)) / fs_in
    x = np.exp(-0.5 * ((t - 2.5123) / 0.02) ** 2)[None, :]  # a QRS-like pulse at 2.5123 s
    y = resample(x, fs_in, 500.0)[0]
    t_out = np.arange(y.size) / 500.0
    centroid = float((t_out * y).sum() / y.sum())
    assert abs(centroid - 2.5123) < 1e-4


@pytest.mark.parametrize(("fs_in", "fs_out"), [(1000.0, 250.0), (1000.0, 500.0), (500.0, 257.0)])
def test_downsampling_suppresses_tones_above_the_new_nyquist(fs_in, fs_out):
    t = np.arange(int(4 * fs_in)) / fs_in
    alias_tone = 0.5 * fs_out + 0.15 * fs_out  # would fold back to 0.35 fs_out without a filter
    y = resample(np.sin(2 * np.pi * alias_tone * t)[None, :], fs_in, fs_out)[0]
    interior = y[int(0.3 * fs_out) : -int(0.3 * fs_out)]
    assert np.abs(interior).max() < 0.01
    # ...while an in-band tone keeps its exact values.
    kept = resample(np.sin(2 * np.pi * 0.2 * fs_out * t)[None, :], fs_in, fs_out)[0]
    t_out = np.arange(kept.size) / fs_out
    inner = slice(int(0.3 * fs_out), -int(0.3 * fs_out))
    np.testing.assert_allclose(kept[inner], np.sin(2 * np.pi * 0.2 * fs_out * t_out[inner]), atol=5e-3)


def test_resample_same_rate_is_identity_and_multi_lead_shapes():
    x = np.random.default_rng(0).standard_normal((8, 1234))
    np.testing.assert_array_equal(resample(x, 500, 500), x)
    assert resample(x, 500, 1000).shape == (8, 2468)


def test_resample_keeps_dc_level_to_the_edges():
    y = resample(np.full((2, 700), 3.25), 257.0, 500.0)
    np.testing.assert_allclose(y, 3.25, atol=1e-9)


def test_bandpass_is_zero_phase_in_band_and_removes_drift_and_mains():
    fs = 500.0
    t = np.arange(int(10 * fs)) / fs
    ecg_band = np.sin(2 * np.pi * 8.0 * t + 0.7)
    x = ecg_band + 2.0 * np.sin(2 * np.pi * 0.08 * t) + 0.5 * np.sin(2 * np.pi * 60.0 * t)
    y = bandpass(x[None, :], fs, 0.5, 45.0)[0]
    # The centre 5 s is what preprocessing keeps; a 2 mV drift leaves < 20 uV there.
    interior = slice(int(2.5 * fs), -int(2.5 * fs))
    np.testing.assert_allclose(y[interior], ecg_band[interior], atol=0.02)
    assert np.abs(y - x).max() > 1.0  # the drift really was there and was removed


def test_bandpass_with_no_cutoffs_is_a_copy():
    x = np.arange(10.0)[None, :]
    y = bandpass(x, 100.0, None, None)
    np.testing.assert_array_equal(x, y)
    assert y is not x
