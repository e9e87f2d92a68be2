"""Lead masking and attention-derived lead importance.

Masking zeroes leads in the *preprocessed* model input ``(B, 8, T)``. Zero is the
lead mean after the per-lead z-score, i.e. "this lead carried no deflection", the
same thing the preprocessing writes for padding. The AUROC change per class tells
which leads the model's decision depends on; the paper reports that masking V1-V3
hurts ARVC most (right-ventricular leads: T inversion, epsilon waves, prolonged
terminal activation) and lateral leads hurt LQTS most (repolarisation best seen in
I, V5, V6).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lasan.leads import PRECORDIAL_LEADS
from lasan.models import LASAN
from lasan.train.metrics import auroc, one_vs_rest_auroc, patient_bootstrap, rankdata

__all__ = [
    "LEAD_GROUPS",
    "masking_groups",
    "Predictions",
    "predict",
    "lead_masking",
    "attention_importance",
    "rank_correlation",
    "compare_with_attention",
    "masking_contrast",
]

# The groups the issue asks for, in canonical lead names (defined here once).
LEAD_GROUPS: dict[str, tuple[str, ...]] = {
    "V1-V2": ("V1", "V2"),
    "V1-V3": ("V1", "V2", "V3"),
    "lateral (I, V5, V6)": ("I", "V5", "V6"),
    "limb (I, II)": ("I", "II"),
    "precordial (V1-V6)": PRECORDIAL_LEADS,
}


def masking_groups(model_leads: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """:data:`LEAD_GROUPS` restricted to the model's leads, plus one group per single lead."""
    groups = {}
    for name, leads in LEAD_GROUPS.items():
        present = tuple(lead for lead in leads if lead in model_leads)
        if present:
            groups[name] = present
    groups.update({lead: (lead,) for lead in model_leads})
    return groups


@dataclass(frozen=True)
class Predictions:
    probs: np.ndarray  # (N, C) softmax
    lead_weights: np.ndarray | None  # (N, L) attention importance, None for models without it


def _unpack(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
    if isinstance(out, tuple):
        return out[0], (out[1] if len(out) > 1 else None)
    return out, None


@torch.no_grad()
def predict(model: nn.Module, x: np.ndarray, batch_size: int = 64, mask: tuple[int, ...] = ()) -> Predictions:
    """Softmax probabilities (and lead weights, when the model returns them) for ``x (N, L, T)``.

    ``mask`` lists lead indices zeroed before the forward pass. For LASAN the per-lead
    encoder sees each lead on its own, so a zeroed lead's features are the encoder's
    output for a zero lead: they are computed once and the costly encoder runs once
    per batch, not once per masking group. Other models run the full forward pass.
    """
    model.eval()
    probs, weights = [], []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(x[start : start + batch_size]), dtype=torch.float32)  # (B, L, T)
        if mask:
            xb = xb.clone()
            xb[:, list(mask), :] = 0.0
        logits, lw = _unpack(model(xb))
        probs.append(torch.softmax(logits, dim=-1).numpy())
        if lw is not None:
            weights.append(lw.numpy())
    empty = np.zeros((0, 0), dtype=np.float32)
    return Predictions(np.concatenate(probs) if probs else empty, np.concatenate(weights) if weights else None)


@torch.no_grad()
def _lasan_masking_probs(
    model: LASAN, x: np.ndarray, masks: dict[str, tuple[int, ...]], batch_size: int
) -> dict[str, np.ndarray]:
    model.eval()
    encoder, fusion = model.encoder_part(), model.fusion_part()
    out: dict[str, list[np.ndarray]] = {name: [] for name in masks}
    zero_feat = encoder(torch.zeros(1, 1, x.shape[2]))[0, 0]  # (D,) features of a flat lead
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(x[start : start + batch_size]), dtype=torch.float32)
        feats = encoder(xb)  # (B, L, D)
        for name, idx in masks.items():
            f = feats.clone()
            if idx:
                f[:, list(idx), :] = zero_feat
            logits, _, _ = fusion(f)
            out[name].append(torch.softmax(logits, dim=-1).numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def lead_masking(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    classes: tuple[str, ...] | list[str],
    model_leads: tuple[str, ...],
    groups: dict[str, tuple[str, ...]] | None = None,
    batch_size: int = 64,
) -> dict[str, dict[str, object]]:
    """AUROC per class with each lead group zeroed, and its change from the unmasked AUROC.

    Args:
        model: returns logits (or a tuple whose first item is logits) for ``(B, L, T)``.
        x: preprocessed inputs ``(N, L, T)``; ``model_leads`` names the L rows.
        y: integer labels.
        groups: name -> canonical leads; default :func:`masking_groups`.

    Returns:
        ``{group: {"leads": [...], "auroc": {cls: a}, "delta": {cls: a - a_unmasked},
        "relative_drop_pct": {cls: 100 * (a_unmasked - a) / a_unmasked}}}`` with an
        ``"none"`` entry for the unmasked model.
    """
    groups = masking_groups(model_leads) if groups is None else groups
    masks = {"none": ()} | {n: tuple(model_leads.index(lead) for lead in leads) for n, leads in groups.items()}
    if isinstance(model, LASAN):
        probs = _lasan_masking_probs(model, x, masks, batch_size)
    else:
        probs = {n: predict(model, x, batch_size, m).probs for n, m in masks.items()}
    base = one_vs_rest_auroc(y, probs["none"], classes)
    result: dict[str, dict[str, object]] = {}
    for name, idx in masks.items():
        auc = one_vs_rest_auroc(y, probs[name], classes)
        result[name] = {
            "leads": [model_leads[i] for i in idx],
            "auroc": auc,
            "delta": {c: auc[c] - base[c] for c in classes},
            "relative_drop_pct": {
                c: 100.0 * (base[c] - auc[c]) / base[c] if base[c] else float("nan") for c in classes
            },
        }
    return result


def attention_importance(
    lead_weights: np.ndarray, y: np.ndarray, classes: tuple[str, ...] | list[str], model_leads: tuple[str, ...]
) -> dict[str, dict[str, float]]:
    """Mean attention lead weight per lead, averaged over the ECGs of each true class."""
    y = np.asarray(y)
    out = {}
    for k, c in enumerate(classes):
        sel = lead_weights[y == k]
        mean = sel.mean(axis=0) if len(sel) else np.full(len(model_leads), np.nan)
        out[c] = {lead: float(mean[i]) for i, lead in enumerate(model_leads)}
    return out


def rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); nan if either is constant."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        return float("nan")
    ra, rb = rankdata(a), rankdata(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def compare_with_attention(
    masking: dict[str, dict[str, object]],
    importance: dict[str, dict[str, float]],
    model_leads: tuple[str, ...],
) -> dict[str, dict[str, object]]:
    """Per class: Spearman correlation between single-lead AUROC drop and mean attention weight.

    A positive correlation means the leads the attention aggregator weights most are
    also the leads whose removal costs the most AUROC for that class.
    """
    out: dict[str, dict[str, object]] = {}
    for cls, weights in importance.items():
        drop = np.array([-float(masking[lead]["delta"][cls]) for lead in model_leads])  # type: ignore[index]
        attn = np.array([weights[lead] for lead in model_leads])
        out[cls] = {
            "spearman": rank_correlation(drop, attn),
            "masking_drop": dict(zip(model_leads, drop.tolist(), strict=True)),
            "attention": dict(zip(model_leads, attn.tolist(), strict=True)),
            "top_lead_by_masking": model_leads[int(np.nanargmax(drop))] if np.isfinite(drop).any() else None,
            "top_lead_by_attention": model_leads[int(np.nanargmax(attn))] if np.isfinite(attn).any() else None,
        }
    return out


def masking_contrast(
    unmasked: np.ndarray,
    masked: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    classes: tuple[str, ...] | list[str],
    first: str = "ARVC",
    second: str = "LQTS",
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, float | int]:
    """Paired patient-bootstrap CI of (AUROC drop of ``first``) - (AUROC drop of ``second``).

    ``unmasked`` and ``masked`` are ``(N, C)`` probabilities of the same ECGs without
    and with a lead group zeroed. A CI above zero means masking hurts ``first`` more,
    beyond what resampling patients would produce by chance.
    """
    y = np.asarray(y)
    ka, kb = list(classes).index(first), list(classes).index(second)

    def stat(idx: np.ndarray) -> dict[str, float]:
        yy = y[idx]
        drop_a = auroc(yy == ka, unmasked[idx, ka]) - auroc(yy == ka, masked[idx, ka])
        drop_b = auroc(yy == kb, unmasked[idx, kb]) - auroc(yy == kb, masked[idx, kb])
        return {"d": drop_a - drop_b}

    return patient_bootstrap(stat, groups, n_boot, seed)["d"].to_dict()
