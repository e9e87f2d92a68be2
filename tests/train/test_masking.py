"""Lead masking on a toy model whose decision depends on one lead only, and on a real tiny LASAN."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lasan.leads import MODEL_LEADS
from lasan.models import LASANConfig, build_model
from lasan.preprocessing import InputSpec
from lasan.train.masking import (
    LEAD_GROUPS,
    attention_importance,
    compare_with_attention,
    lead_masking,
    masking_contrast,
    masking_groups,
    predict,
    rank_correlation,
)
from lasan.train.metrics import auroc

CLASSES = ("ARVC", "LQTS", "control")


class OneLeadModel(nn.Module):
    """ARVC logit = energy of lead V1; ignores every other lead."""

    def __init__(self, lead: int):
        super().__init__()
        self.lead = lead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e = (x[:, self.lead] ** 2).mean(dim=-1)  # (B,)
        return torch.stack([e, -e, torch.zeros_like(e)], dim=1)


def _data(n: int = 60, t: int = 200):
    rng = np.random.default_rng(0)
    y = np.tile([0, 1, 2], n // 3)
    x = rng.normal(0, 1, (n, len(MODEL_LEADS), t)).astype(np.float32)
    x[y == 0, MODEL_LEADS.index("V1")] *= 2.0  # the ARVC signal lives in V1 only
    return x, y


def test_groups_use_canonical_leads_and_add_single_leads():
    groups = masking_groups(MODEL_LEADS)
    assert groups["V1-V3"] == ("V1", "V2", "V3")
    assert groups["precordial (V1-V6)"] == ("V1", "V2", "V3", "V4", "V5", "V6")
    assert all(groups[lead] == (lead,) for lead in MODEL_LEADS)
    assert set(LEAD_GROUPS) <= set(groups)


def test_masking_the_only_informative_lead_kills_auroc_and_others_do_not():
    x, y = _data()
    res = lead_masking(OneLeadModel(MODEL_LEADS.index("V1")), x, y, CLASSES, MODEL_LEADS)
    assert res["none"]["auroc"]["ARVC"] > 0.95
    for group in ("V1", "V1-V2", "V1-V3", "precordial (V1-V6)"):
        assert res[group]["auroc"]["ARVC"] == pytest.approx(0.5)  # all scores tie at zero
        assert res[group]["delta"]["ARVC"] < -0.4
    for group in ("I", "II", "V2", "V6", "limb (I, II)", "lateral (I, V5, V6)"):
        assert res[group]["delta"]["ARVC"] == pytest.approx(0.0)
    assert res["V1-V3"]["leads"] == ["V1", "V2", "V3"]


def test_lasan_fast_path_equals_zeroing_the_input():
    torch.manual_seed(0)
    cfg = LASANConfig(
        input=InputSpec(n_samples=256), cnn_channels=(4, 8, 8, 16), d_model=16, n_heads=2, ff_dim=32, head_hidden=8
    )
    model = build_model(cfg).eval()

    class Wrapped(nn.Module):  # not a LASAN instance: forces the full forward with zeroed input
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return self.inner(x)

    rng = np.random.default_rng(1)
    x = rng.normal(0, 1, (12, 8, 256)).astype(np.float32)
    y = np.tile([0, 1, 2], 4)
    fast = lead_masking(model, x, y, CLASSES, MODEL_LEADS, batch_size=5)
    slow = lead_masking(Wrapped(model), x, y, CLASSES, MODEL_LEADS, batch_size=5)
    for group in fast:
        for c in CLASSES:
            assert fast[group]["auroc"][c] == pytest.approx(slow[group]["auroc"][c])
    preds = predict(model, x)
    assert preds.probs.shape == (12, 3) and preds.lead_weights.shape == (12, 8)


def test_attention_importance_and_rank_correlation():
    weights = np.zeros((4, 8))
    weights[:2, 2] = 1.0  # ARVC ECGs attend to V1
    weights[2:, 6] = 1.0  # control ECGs attend to V5
    y = np.array([0, 0, 2, 2])
    imp = attention_importance(weights, y, CLASSES, MODEL_LEADS)
    assert imp["ARVC"]["V1"] == 1.0 and imp["control"]["V5"] == 1.0
    assert np.isnan(imp["LQTS"]["I"])  # no LQTS ECGs
    assert rank_correlation(np.arange(5), np.arange(5) ** 2) == pytest.approx(1.0)
    assert rank_correlation(np.arange(5), -np.arange(5)) == pytest.approx(-1.0)

    x, yy = _data()
    masking = lead_masking(OneLeadModel(MODEL_LEADS.index("V1")), x, yy, CLASSES, MODEL_LEADS)
    cmp = compare_with_attention(masking, {"ARVC": imp["ARVC"]}, MODEL_LEADS)
    assert cmp["ARVC"]["top_lead_by_masking"] == "V1" == cmp["ARVC"]["top_lead_by_attention"]
    assert cmp["ARVC"]["spearman"] > 0


def test_masking_contrast_ci_is_positive_when_only_the_first_class_depends_on_the_leads():
    x, y = _data()
    groups = np.repeat(np.arange(len(y) // 2), 2)
    model = OneLeadModel(MODEL_LEADS.index("V1"))
    unmasked = predict(model, x).probs
    masked = predict(model, x, mask=(MODEL_LEADS.index("V1"),)).probs
    ci = masking_contrast(unmasked, masked, y, groups, CLASSES, "ARVC", "LQTS", n_boot=100, seed=0)
    # ARVC loses about 0.5 AUROC; LQTS's score is -V1 energy, which also collapses to a tie: its drop is
    # its own unmasked AUROC - 0.5. The estimate is exactly the difference of the two drops.
    base = {c: auroc(y == k, unmasked[:, k]) for k, c in enumerate(CLASSES)}
    assert ci["estimate"] == pytest.approx((base["ARVC"] - 0.5) - (base["LQTS"] - 0.5))
    assert ci["low"] > 0
