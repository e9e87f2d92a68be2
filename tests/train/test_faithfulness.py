"""Faithfulness of lead importance on constructed models whose decision depends on known leads."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from lasan.leads import MODEL_LEADS, STANDARD_LEADS
from lasan.models.served import occlusion_importance
from lasan.preprocessing import InputSpec, preprocess
from lasan.record import Acquisition, ECGRecord
from lasan.train.faithfulness import (
    faithfulness_summary,
    gallery_entries,
    gallery_indices,
    input_occlusion,
    per_ecg_spearman,
    plot_gallery,
    served_predict,
    zero_lead,
)

CLASSES = ("ARVC", "LQTS", "control")
SPEC = InputSpec()
# The stand-in's ARVC evidence: V2 counts most, then V5, then I; every other lead is ignored.
LEAD_GAIN = {"V2": 3.0, "V5": 1.5, "I": 0.7}


class LeadDependentServed(nn.Module):
    """A served-model stand-in: ARVC logit from the energy of a few leads, with a real occlusion
    importance (each lead zeroed in the model input) or, with ``random_importance``, noise."""

    def __init__(self, random_importance: bool = False):
        super().__init__()
        self.gain = torch.zeros(len(MODEL_LEADS))
        for lead, g in LEAD_GAIN.items():
            self.gain[MODEL_LEADS.index(lead)] = g
        self.random_importance = random_importance
        self.gen = torch.Generator().manual_seed(0)

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        energy = (x**2).mean(dim=-1)  # (B, L), 1.0 per lead after the z-score, 0 for a zeroed lead
        arvc = (energy * self.gain).sum(dim=-1) - 4.0  # (B,)
        return torch.softmax(torch.stack([arvc, torch.zeros_like(arvc), -arvc], dim=1), dim=-1)

    def forward(self, x: torch.Tensor):
        probs = self._probs(x)
        b, n_leads = x.shape[:2]
        if self.random_importance:
            importance = torch.softmax(torch.randn(b, n_leads, generator=self.gen) * 2.0, dim=-1)
        else:
            occluded = []
            for i in range(n_leads):
                xi = x.clone()
                xi[:, i] = 0.0
                occluded.append(self._probs(xi))
            importance = occlusion_importance(probs, torch.stack(occluded, dim=1))
        uniform = torch.full((b, n_leads), 1.0 / n_leads)
        return probs, importance, uniform, torch.zeros(b, 1, 1, n_leads, n_leads)


def _records(n: int, seed: int = 0) -> list[ECGRecord]:
    from testkit import simple_ecg

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        sig = simple_ecg(rng, 12, 500.0, 6.0)
        sig *= rng.uniform(0.5, 2.0, (12, 1)).astype(np.float32)  # amplitudes vary; the z-score removes them
        out.append(ECGRecord(sig, 500.0, STANDARD_LEADS, Acquisition("synthetic")))
    return out


def _summary(model: nn.Module, n: int = 24):
    records = _records(n)
    outputs, occluded = input_occlusion(records, lambda x: served_predict(model, x), SPEC)
    y = np.zeros(n, dtype=int)  # all ARVC: the "disease" subset is every ECG
    groups = np.repeat(np.arange(n // 2), 2)
    return outputs, occluded, faithfulness_summary(outputs, occluded, y, groups, CLASSES, n_boot=50, seed=0)


def test_importance_that_follows_occlusion_scores_high():
    outputs, occluded, summary = _summary(LeadDependentServed())
    assert occluded.shape == (24, 8, 3)
    disease = summary["lead_importance"]["disease"]
    assert disease["spearman_predicted"]["estimate"] > 0.95
    assert disease["spearman_predicted"]["n_undefined"] == 0
    assert disease["max_weight"]["estimate"] > 0.4  # V2 carries most of the decision (uniform: 0.125)
    assert np.all(outputs.importance.argmax(axis=1) == MODEL_LEADS.index("V2"))
    # The paper-style uniform weights cannot be ranked: undefined everywhere, max weight 1/8.
    flat = summary["aggregator_weights"]["disease"]
    assert flat["spearman_predicted"]["n_undefined"] == 24
    assert flat["max_weight"]["estimate"] == pytest.approx(0.125)


def test_random_importance_scores_near_zero():
    _, _, summary = _summary(LeadDependentServed(random_importance=True), n=60)
    rho = summary["lead_importance"]["all"]["spearman_predicted"]
    assert abs(rho["estimate"]) < 0.2
    assert rho["low"] < 0 < rho["high"] or abs(rho["estimate"]) < 0.1


def test_zeroing_in_mv_equals_zeroing_the_model_input_row():
    # Preprocessing is per lead and maps a 0 mV lead to a 0 row, so the input-level occlusion
    # the report runs is exactly "that row zeroed"; the probabilities must agree to float precision.
    model = LeadDependentServed()
    record = _records(1, seed=3)[0]
    x = preprocess(record, SPEC)
    for i, lead in enumerate(MODEL_LEADS):
        from_mv = preprocess(zero_lead(record, lead), SPEC)
        row_zeroed = x.copy()
        row_zeroed[i] = 0.0
        np.testing.assert_allclose(from_mv, row_zeroed, atol=1e-6)
    _, occluded = input_occlusion([record], lambda xb: served_predict(model, xb), SPEC)
    direct = served_predict(model, np.stack([np.where(np.eye(8)[i][:, None] > 0, 0.0, x) for i in range(8)]))
    np.testing.assert_allclose(occluded[0], direct.probs, atol=1e-6)


def test_zero_lead_derives_a_missing_limb_lead_first():
    record = _records(1)[0]
    keep = [STANDARD_LEADS.index(lead) for lead in ("II", "III", *MODEL_LEADS[2:])]
    no_i = ECGRecord(record.signal[keep], record.fs, tuple(STANDARD_LEADS[k] for k in keep), record.acquisition)
    zeroed = zero_lead(no_i, "I")
    assert np.all(zeroed.signal[zeroed.leads.index("I")] == 0.0)
    assert np.any(zeroed.signal[zeroed.leads.index("V2")] != 0.0)


def test_per_ecg_spearman_is_nan_for_constant_weights():
    shown = np.array([[0.5, 0.3, 0.2], [1 / 3, 1 / 3, 1 / 3]])
    drops = np.array([[0.3, 0.2, 0.1], [0.1, 0.2, 0.3]])
    rho = per_ecg_spearman(shown, drops)
    assert rho[0] == pytest.approx(1.0) and np.isnan(rho[1])


def test_gallery_is_a_seeded_random_draw_not_a_selection(tmp_path):
    first, again = gallery_indices(50, 6, seed=4), gallery_indices(50, 6, seed=4)
    assert first == again and len(set(first)) == 6 and all(0 <= i < 50 for i in first)
    assert gallery_indices(50, 6, seed=5) != first
    assert first != sorted(first) or gallery_indices(50, 6, seed=6) != sorted(gallery_indices(50, 6, seed=6))
    outputs, occluded, summary = _summary(LeadDependentServed(), n=6)
    names = [f"ecg_{i}.hea" for i in range(6)]
    entries = gallery_entries(gallery_indices(6, 3, 0), names, np.zeros(6, int), outputs, summary, CLASSES, MODEL_LEADS)
    assert [e["file"] for e in entries] == [names[i] for i in gallery_indices(6, 3, 0)]
    assert entries[0]["leads"] == list(MODEL_LEADS) and len(entries[0]["drop"]) == 8
    png = plot_gallery(entries, tmp_path / "gallery.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
