"""Test helpers every test package imports by name: ``from testkit import simple_ecg``.

They live here, not in ``conftest.py``: several test folders have a ``conftest.py``, and a
``from conftest import ...`` finds whichever one pytest imported first.

``TINY_THRESHOLDS``; ``make_tiny_checkpoint(path, kind="lasan", thresholds=True, seed=0)``:
another tiny checkpoint (e.g. one without thresholds); ``make_single_lead_checkpoint(path,
lead="V2", temperature=2.0)``: a tiny LASAN whose decision depends on one lead only
(constructed weights, calibrated with ``temperature``); ``simple_ecg(rng, n_leads, fs,
seconds)``: a quick plausible ECG array in mV (8 or 12 rows in canonical order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# A real Philips Sierra XML 1.03 export (MIT, sierra-ecg-tools), kept with its licence in tests/data.
PHILIPS_SAMPLE = Path(__file__).resolve().parent / "data" / "ecg-samples" / "philips_129DYPRG.XML"

TINY_THRESHOLDS = {
    # Close to the tiny models' probabilities (about 0.29-0.40), so decisions differ between ECGs.
    "screening": {"ARVC": 0.3, "LQTS": 0.33, "control": 0.3},
    "confirmation": {"ARVC": 0.34, "LQTS": 0.35, "control": 0.34},
}


def simple_ecg(rng: np.random.Generator, n_leads: int, fs: float, seconds: float) -> np.ndarray:
    """A plausible ECG ``(n_leads, samples)`` in mV, float32: Gaussian P-QRS-T beats at a random
    heart rate with per-lead amplitudes and polarity, baseline wander and noise."""
    t = np.arange(int(fs * seconds)) / fs
    rr = 60.0 / rng.uniform(50, 110)
    phase = (t % rr) / rr
    sig = np.empty((n_leads, t.size))
    for i in range(n_leads):
        g = rng.uniform(0.3, 1.5, 3) * rng.choice([-1, 1], 3)
        sig[i] = (
            g[0] * 0.15 * np.exp(-(((phase - 0.15) / 0.03) ** 2))
            + g[1] * np.exp(-(((phase - 0.3) / 0.012) ** 2))
            + g[2] * 0.3 * np.exp(-(((phase - 0.6) / 0.06) ** 2))
            + 0.1 * np.sin(2 * np.pi * 0.25 * t + i)
            + rng.normal(0, 0.02, t.size)
        )
    return sig.astype(np.float32)


def make_tiny_checkpoint(
    path: Path, kind: str = "lasan", thresholds: bool = True, seed: int = 0, calibration: dict | None = None
) -> Path:
    """Write a tiny LASAN or hybrid checkpoint with seeded, deliberately non-uniform weights."""
    import torch

    from lasan.checkpoint import CheckpointInfo, save_checkpoint
    from lasan.models import EncoderSpec, HybridConfig, LASANConfig, build_model
    from lasan.preprocessing import preprocess_array

    torch.manual_seed(seed)
    lasan_cfg = LASANConfig(cnn_channels=(8, 16, 16, 32), d_model=32, ff_dim=64, head_hidden=16, n_layers=2)
    if kind == "lasan":
        cfg = lasan_cfg
    elif kind == "hybrid":
        cfg = HybridConfig(
            lasan=lasan_cfg, encoder=EncoderSpec(options={"width": 8, "depth": 2, "out_dim": 16}), fusion_dim=32
        )
    else:
        raise ValueError(kind)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        # Random init gives near-uniform lead weights; sharpen them so lead-importance tests can fail.
        branch = model.fusion.branch
        branch.query.normal_(0.0, 3.0)
        branch.key.weight.mul_(5.0)
        # ... and centre and amplify the logits (k * (logits - mean) on simple ECGs), so that
        # different ECGs get visibly different probabilities instead of one bias-dominated answer.
        last = model.fusion.head.net[-1]
        rng = np.random.default_rng(seed)
        calib = [preprocess_array(simple_ecg(rng, 12, 500.0, 10.0), 500.0) for _ in range(16)]
        logits = model(torch.from_numpy(np.stack(calib)))[0]
        k = min(100.0, 1.0 / float(logits.std(dim=0).mean().clamp_min(1e-6)))
        last.weight.mul_(k)
        last.bias.sub_(logits.mean(dim=0)).mul_(k)
    info = CheckpointInfo(
        thresholds=TINY_THRESHOLDS if thresholds else {},
        calibration=dict(calibration or {}),
        data_summary={"synthetic": True, "description": "untrained tiny test model", "n_records": 0},
        metrics={},
    )
    return save_checkpoint(path, model, info)


def make_single_lead_checkpoint(path: Path, lead: str = "V2", temperature: float = 2.0, seed: int = 0) -> Path:
    """A tiny LASAN whose decision is a function of one lead's CNN feature only.

    The inter-lead layers are made identities (zero attention and feed-forward outputs, so
    each lead keeps its own feature), a large lead embedding in dimension 0 marks ``lead``
    and the aggregator's key/query read only that dimension, so the aggregator puts
    (nearly) all weight on ``lead``. The head then scores ``u . (pooled - pooled_of_a_zeroed_lead)``:
    class ARVC when positive, LQTS when negative, 1/3 each when the lead is zeroed, so
    zeroing ``lead`` lowers the predicted class's probability and zeroing any other lead
    changes nothing.
    """
    import torch

    from lasan.checkpoint import CheckpointInfo, save_checkpoint
    from lasan.models import LASANConfig, build_model
    from lasan.preprocessing import preprocess_array

    torch.manual_seed(seed)
    cfg = LASANConfig(cnn_channels=(8, 16, 16, 32), d_model=32, ff_dim=64, head_hidden=16, n_layers=2)
    model = build_model(cfg).eval()
    k = cfg.input.leads.index(lead)
    with torch.no_grad():
        branch = model.fusion.branch
        for layer in branch.layers:
            layer.attn.out_proj.weight.zero_()
            layer.attn.out_proj.bias.zero_()
            layer.ff[-1].weight.zero_()
            layer.ff[-1].bias.zero_()
        branch.lead_embedding.zero_()
        branch.lead_embedding[k, 0] = 50.0
        branch.query.zero_()
        branch.query[0] = 1.0
        branch.key.weight.zero_()
        branch.key.bias.zero_()
        branch.key.weight[0, 0] = 50.0
        zero = model.encoder(torch.zeros(1, 1, cfg.input.n_samples))  # (1, 1, D): a zeroed lead's feature
        pooled_zero = branch(zero.expand(1, cfg.n_leads, -1).contiguous())[0][0]  # (D,)
        rng = np.random.default_rng(seed)
        x = torch.from_numpy(np.stack([preprocess_array(simple_ecg(rng, 12, 500.0, 10.0), 500.0) for _ in range(16)]))
        diff = branch(model.encoder(x))[0] - pooled_zero  # (16, D)
        u = torch.randn(cfg.d_model)
        scale = 3.0 / float((diff @ u).abs().mean().clamp_min(1e-6))  # |margin| about 3 on typical ECGs
        first, last = model.fusion.head.net[0], model.fusion.head.net[-1]
        first.weight.zero_()
        first.bias.zero_()
        first.weight[0] = scale * u
        first.weight[1] = -scale * u
        first.bias[0] = -scale * float(u @ pooled_zero)
        first.bias[1] = scale * float(u @ pooled_zero)
        last.weight.zero_()
        last.bias.zero_()
        last.weight[0, 0] = 1.0  # ARVC <- relu(margin)
        last.weight[1, 1] = 1.0  # LQTS <- relu(-margin)
    info = CheckpointInfo(
        thresholds=TINY_THRESHOLDS,
        calibration={"method": "temperature", "temperature": float(temperature), "fitted_on": "constructed"},
        data_summary={"synthetic": True, "description": f"constructed: decision depends on {lead} only"},
    )
    return save_checkpoint(path, model, info)
