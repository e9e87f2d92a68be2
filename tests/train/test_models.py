"""LASAN and hybrid: output shapes, attention semantics, TorchScript parts equal eager."""

from __future__ import annotations

import pytest
import torch
from testkit import make_single_lead_checkpoint, simple_ecg

from lasan.models import EncoderSpec, HybridConfig, LASANConfig, build_model
from lasan.preprocessing import InputSpec

TINY_INPUT = InputSpec(n_samples=512)
TINY = LASANConfig(input=TINY_INPUT, cnn_channels=(4, 8, 8, 16), d_model=16, n_heads=4, ff_dim=32, head_hidden=8)
TINY_HYBRID = HybridConfig(
    lasan=TINY, encoder=EncoderSpec(kind="builtin", options={"width": 4, "depth": 2, "out_dim": 12}), fusion_dim=16
)


@pytest.fixture(params=["lasan", "hybrid"])
def model(request):
    torch.manual_seed(0)
    return build_model(TINY if request.param == "lasan" else TINY_HYBRID).eval()


def test_outputs_have_the_documented_shapes_and_sum_to_one(model):
    x = torch.randn(3, 8, 512)
    logits, lead_weights, attention = model(x)
    assert logits.shape == (3, 3)
    assert lead_weights.shape == (3, 8)
    assert attention.shape == (3, TINY.n_layers, TINY.n_heads, 8, 8)
    torch.testing.assert_close(lead_weights.sum(-1), torch.ones(3))
    torch.testing.assert_close(attention.sum(-1), torch.ones(3, TINY.n_layers, TINY.n_heads, 8))
    assert (lead_weights >= 0).all() and (attention >= 0).all()


def test_lead_weights_depend_on_the_input(model):
    # A content-free aggregator would give the same weights for every ECG.
    _, w1, _ = model(torch.randn(1, 8, 512))
    _, w2, _ = model(torch.randn(1, 8, 512) * 3.0 + torch.linspace(0, 1, 8)[:, None])
    assert not torch.allclose(w1, w2)


def test_paper_architecture_defaults():
    cfg = LASANConfig()
    assert cfg.cnn_channels == (32, 64, 128, 256) and cfg.d_model == 256
    assert (cfg.n_layers, cfg.n_heads, cfg.head_hidden, cfg.kernel_size) == (3, 4, 128, 15)
    assert cfg.input.n_samples == 2500 and cfg.n_leads == 8


def test_scripted_parts_give_the_eager_outputs(model):
    x = torch.randn(2, 8, 512)
    encoder = torch.jit.script(model.encoder_part())
    fusion = torch.jit.script(model.fusion_part())
    with torch.no_grad():
        expected = model(x)
        features = encoder(x)
        got = fusion(*features) if isinstance(features, tuple) else fusion(features)
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e)


def test_forward_is_fusion_of_encoder(model):
    x = torch.randn(2, 8, 512)
    with torch.no_grad():
        features = model.encoder_part()(x)
        parts = model.fusion_part()(*features) if isinstance(features, tuple) else model.fusion_part()(features)
        whole = model(x)
    torch.testing.assert_close(parts[0], whole[0])


# ServedLASAN: calibration, occlusion importance, aggregator weights (lasan.models.served).


def test_served_outputs_have_the_contract_shapes(model):
    from lasan.models import ServedLASAN

    served = ServedLASAN(model, temperature=1.7)
    x = torch.randn(3, 8, 512)
    with torch.no_grad():
        probs, importance, aggregator, attention = served(x)
        logits, weights, attn = model(x)
    assert probs.shape == (3, 3) and importance.shape == (3, 8) and aggregator.shape == (3, 8)
    torch.testing.assert_close(probs, torch.softmax(logits / 1.7, -1), atol=1e-6, rtol=0)
    torch.testing.assert_close(aggregator, weights, atol=1e-6, rtol=0)
    torch.testing.assert_close(attention, attn, atol=1e-6, rtol=0)
    assert (importance >= 0).all()
    torch.testing.assert_close(importance.sum(-1), torch.ones(3))


def test_zero_lead_feature_equals_a_real_input_occlusion_through_preprocessing():
    # The constant-feature shortcut must be what the encoder makes of a lead zeroed in mV
    # and preprocessed like any other: an all-zero row (median, band-pass, z-score of zeros).
    import numpy as np

    from lasan.models import ServedLASAN
    from lasan.preprocessing import InputSpec, preprocess_array

    torch.manual_seed(0)
    cfg = LASANConfig(cnn_channels=(8, 16, 16, 32), d_model=32, ff_dim=64, head_hidden=16, n_layers=2)
    model = build_model(cfg).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so the zero feature is not trivially 0
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    served = ServedLASAN(model)
    rng = np.random.default_rng(1)
    for n_leads, fs, seconds in ((12, 500.0, 10.0), (8, 250.0, 8.0), (12, 360.0, 3.0)):
        signal = simple_ecg(rng, n_leads, fs, seconds)
        signal[3 if n_leads == 8 else 7] = 0.0  # V2 in either lead order
        x = preprocess_array(signal, fs, None, InputSpec())
        assert np.all(x[3] == 0.0)
        with torch.no_grad():
            feature = model.encoder(torch.from_numpy(x)[None])[0, 3]
        torch.testing.assert_close(feature, served.fusion.zero_feature, atol=1e-5, rtol=0)
    assert float(served.fusion.zero_feature.abs().max()) > 1e-2


@pytest.mark.parametrize("kind", ["lasan", "hybrid"])
def test_importance_equals_input_level_occlusion(kind):
    # lead_importance is computed from fusion-level occlusions; recompute it by zeroing each
    # lead of the model input and running the whole served model (encoder included).
    import numpy as np

    from lasan.models import ServedLASAN
    from lasan.models.served import IMPORTANCE_EPS

    torch.manual_seed(0)
    base = build_model(TINY if kind == "lasan" else TINY_HYBRID).eval()
    with torch.no_grad():
        base.fusion.branch.query.normal_(0.0, 3.0)
        base.fusion.head.net[-1].weight.mul_(20.0)
    served = ServedLASAN(base, temperature=0.8)
    x = torch.randn(4, 8, 512)
    with torch.no_grad():
        probs, importance, _, _ = served(x)
        occluded = []
        for i in range(8):
            xi = x.clone()
            xi[:, i] = 0.0
            if kind == "hybrid":  # the served hybrid keeps the full ECG's foundation features
                lead_f, found_f = base.encoder(xi)
                found_f = base.encoder(x)[1]
                occluded.append(served.fusion(lead_f, found_f)[0])
            else:
                occluded.append(served(xi)[0])
    occ = torch.stack(occluded, 1).numpy()  # (B, L, C)
    p = probs.numpy()
    c = p.argmax(1)
    drops = p[np.arange(4), c][:, None] - occ[np.arange(4), :, c]
    w = np.maximum(drops, 0) + IMPORTANCE_EPS / 8 / (1 + np.exp(-drops / 0.1))
    np.testing.assert_allclose(importance.numpy(), w / w.sum(1, keepdims=True), atol=1e-5)
    assert (np.abs(drops) > 1e-3).any()  # the comparison is not between two uniform vectors


def test_importance_is_uniform_when_no_lead_changes_the_decision():
    from lasan.models.served import occlusion_importance

    probs = torch.tensor([[0.2, 0.5, 0.3]])
    same = probs.unsqueeze(1).expand(1, 8, 3)
    torch.testing.assert_close(occlusion_importance(probs, same), torch.full((1, 8), 0.125))


def test_single_lead_model_puts_the_importance_on_that_lead(tmp_path):
    import numpy as np

    from lasan.checkpoint import load_checkpoint
    from lasan.preprocessing import preprocess_array

    ckpt = load_checkpoint(make_single_lead_checkpoint(tmp_path / "v2.pt", "V2"))
    served = ckpt.served_model()
    rng = np.random.default_rng(4)
    x = torch.from_numpy(np.stack([preprocess_array(simple_ecg(rng, 12, 500.0, 10.0), 500.0) for _ in range(6)]))
    with torch.no_grad():
        _, importance, _, _ = served(x)
    assert (importance.argmax(-1) == 3).all()
    assert (importance[:, 3] > 0.95).all()


def test_served_fusion_scripts_and_matches_eager(model):
    from lasan.models import ServedLASAN

    served = ServedLASAN(model, temperature=0.6)
    x = torch.randn(2, 8, 512)
    with torch.no_grad():
        features = served.encoder_part()(x)
        features = features if isinstance(features, tuple) else (features,)
        scripted = torch.jit.script(served.fusion_part())
        for a, b in zip(scripted(*features), served.fusion_part()(*features), strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_aggregator_temperature_sharpens_the_aggregator_and_defaults_to_the_paper():
    import dataclasses

    assert LASANConfig().aggregator_temperature == 1.0  # the paper's aggregator
    torch.manual_seed(0)
    plain = build_model(TINY).eval()
    sharp = build_model(dataclasses.replace(TINY, aggregator_temperature=0.05)).eval()
    sharp.load_state_dict(plain.state_dict())  # same weights: only the temperature differs
    x = torch.randn(4, 8, 512)
    with torch.no_grad():
        w_plain, w_sharp = plain(x)[1], sharp(x)[1]
    excess = [float(w.max(-1).values.mean()) - 1 / 8 for w in (w_plain, w_sharp)]
    assert excess[1] > 5 * excess[0] > 0  # the same score differences, amplified 20 times
    with pytest.raises(Exception, match="aggregator_temperature"):
        LASANConfig(aggregator_temperature=0.0)
