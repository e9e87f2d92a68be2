"""Clinical features on synthetic beats with a known QT, logistic regression, the plain CNN."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lasan.leads import MODEL_LEADS
from lasan.preprocessing import InputSpec, preprocess, preprocess_array
from lasan.train.baselines import CNNTrainConfig, PlainCNN, fit_logistic, train_plain_cnn
from lasan.train.clinical_features import FEATURE_NAMES, detect_r_peaks, feature_matrix, measure_beat
from lasan.train.masking import predict
from lasan.train.metrics import auroc, macro_auroc
from lasan.train.synth import synthesize_ecg

FS = 500.0
CLASSES = ("ARVC", "LQTS", "control")


def _gauss(t, mu, sigma, amp):
    return amp * np.exp(-((t - mu) ** 2) / (2 * sigma**2))


def synthetic_ecg(t_peak_s: float, rr_s: float = 1.0, t_sigma_s: float = 0.04, t_amp=0.3, seconds: float = 6.0):
    """8 leads of Gaussian beats. With a Gaussian T wave the tangent at its steepest downslope
    (t_peak + sigma) meets the baseline at exactly t_peak + 2 sigma: the known T end.
    The QRS (q at -20 ms, R, s at +25 ms) starts about 35 ms before R.
    ``t_amp`` may be a per-lead array (negative = inverted T)."""
    t = np.arange(int(seconds * FS)) / FS
    t_amp = np.broadcast_to(np.asarray(t_amp, dtype=float), (8,))[:, None]
    x = np.zeros((8, t.size))
    r_times = np.arange(0.5, seconds - 0.3, rr_s)
    for r in r_times:
        qrs = _gauss(t, r - 0.02, 0.006, -0.1) + _gauss(t, r, 0.010, 1.0) + _gauss(t, r + 0.025, 0.008, -0.2)
        p = _gauss(t, r - 0.16, 0.025, 0.1)
        x += qrs + p + t_amp * _gauss(t, r + t_peak_s, t_sigma_s, 1.0)
    return x, r_times


@pytest.mark.parametrize("t_peak_s", [0.25, 0.30, 0.36, 0.42])
def test_qt_matches_the_known_t_end(t_peak_s):
    x, _ = synthetic_ecg(t_peak_s)
    m = measure_beat(x, FS, MODEL_LEADS)
    true_qt_ms = (t_peak_s + 2 * 0.04 + 0.035) * 1000  # QRS onset to tangent T end
    assert m.qt_ms == pytest.approx(true_qt_ms, abs=15)
    assert m.rr_ms == pytest.approx(1000, abs=4)
    assert m.qtc_bazett_ms == pytest.approx(m.qt_ms)  # RR = 1 s
    assert 40 <= m.qrs_ms <= 110


def test_qt_differences_are_exact_and_qtc_corrects_for_rate():
    a = measure_beat(synthetic_ecg(0.30)[0], FS, MODEL_LEADS)
    b = measure_beat(synthetic_ecg(0.38)[0], FS, MODEL_LEADS)
    assert b.qt_ms - a.qt_ms == pytest.approx(80, abs=4)
    fast = measure_beat(synthetic_ecg(0.30, rr_s=0.64)[0], FS, MODEL_LEADS)
    assert fast.rr_ms == pytest.approx(640, abs=4)
    assert fast.qtc_bazett_ms == pytest.approx(fast.qt_ms / 0.8, rel=0.01)
    assert fast.qtc_fridericia_ms == pytest.approx(fast.qt_ms / 0.64 ** (1 / 3), rel=0.01)


def test_features_survive_the_model_preprocessing_and_see_t_inversion():
    amps = np.full(8, 0.3)
    amps[[MODEL_LEADS.index(v) for v in ("V1", "V2", "V3")]] = -0.3  # ARVC-like T inversion in V1-V3
    raw, r_times = synthetic_ecg(0.30, t_amp=amps, seconds=7.0)
    x = preprocess_array(raw, FS, MODEL_LEADS, InputSpec())  # band-pass, centre 5 s, z-score
    assert len(detect_r_peaks(x, FS)) == 5
    f = dict(zip(FEATURE_NAMES, feature_matrix(x[None], FS, MODEL_LEADS)[0], strict=True))
    assert f["t_amp_rel_V1"] < 0 and f["t_amp_rel_V3"] < 0 and f["t_amp_rel_II"] > 0
    assert f["qt_ms"] == pytest.approx(415, abs=25)


def test_flat_signal_gives_nan_features():
    assert np.isnan(feature_matrix(np.zeros((1, 8, 2500)), FS, MODEL_LEADS)).all()


def test_logistic_regression_fits_a_separable_three_class_problem():
    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [0.0, 3.0], [-3.0, -3.0]])
    y = np.repeat([0, 1, 2], 40)
    x = centres[y] + rng.normal(0, 0.5, (120, 2))
    x = np.c_[x * [1.0, 100.0], rng.normal(0, 1, 120)]  # unequal scales: standardisation matters
    x[::17, 2] = np.nan  # unmeasurable features are imputed, not fatal
    model = fit_logistic(x, y, 3)
    probs = model.predict_proba(x)
    assert (probs.argmax(axis=1) == y).mean() == 1.0
    assert np.allclose(probs.sum(axis=1), 1.0)
    assert macro_auroc(y, probs, CLASSES) == 1.0


def test_logistic_l2_shrinks_weights():
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 30)
    x = np.eye(3)[y] + rng.normal(0, 0.3, (90, 3))
    small = np.abs(fit_logistic(x, y, 3, l2=1e-3).weights).sum()
    large = np.abs(fit_logistic(x, y, 3, l2=1.0).weights).sum()
    assert large < small


@pytest.fixture
def one_thread():
    # Shared 2-core machines: one torch thread avoids contention on tiny convolutions.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_plain_cnn_learns_a_channel_pattern(one_thread):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, t = 90, 128
    y = np.tile([0, 1, 2], n // 3)
    x = rng.normal(0, 1, (n, 8, t)).astype(np.float32)
    for k in range(3):  # each class adds a slow wave on its own lead
        x[y == k, k] += 3 * np.sin(np.linspace(0, 4 * np.pi, t)).astype(np.float32)
    model = PlainCNN(8, 3, channels=(4, 8), kernel_size=7, hidden=8)
    assert model(torch.zeros(2, 8, t)).shape == (2, 3)
    before = macro_auroc(y[60:], predict(model, x[60:]).probs, CLASSES)
    hist = train_plain_cnn(
        model, x[:60], y[:60], x[60:], y[60:], CLASSES, CNNTrainConfig(epochs=10, batch_size=16, lr=1e-2)
    )
    after = predict(model, x[60:]).probs
    assert hist["best_val_macro_auroc"] > 0.9 > before
    assert auroc(y[60:] == 0, after[:, 0]) > 0.9


def test_qtc_tracks_the_synthetic_cohort_ground_truth():
    # The cohort generator's QTc is its ground truth; measured on the preprocessed model
    # input (noise, site filters, HRV, LQT1-3 T shapes), Bazett QTc must follow it closely.
    rng = np.random.default_rng(0)
    truth, measured = [], []
    for i in range(36):
        record, info = synthesize_ecg(rng, CLASSES[i % 3])
        truth.append(info["qtc_bazett_ms"])
        measured.append(measure_beat(preprocess(record), FS, MODEL_LEADS).qtc_bazett_ms)
    truth, measured = np.array(truth), np.array(measured)
    ok = np.isfinite(measured)
    assert ok.mean() >= 0.9
    assert np.corrcoef(truth[ok], measured[ok])[0, 1] > 0.85
