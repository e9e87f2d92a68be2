"""LASAN and hybrid: output shapes, attention semantics, TorchScript parts equal eager."""

from __future__ import annotations

import pytest
import torch

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
