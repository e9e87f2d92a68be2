"""Does the shown lead importance agree with what changes the decision? (issue 10, part 1)

The check is deliberately independent of how the served model computes its importance:
for every ECG, each of the 8 model leads is zeroed *in the millivolt record*, the record is
preprocessed again with the same code as serving, and the whole model scores it again.
The drop in the probability of the predicted class (and of the true class) when lead ``i``
is gone is that lead's measured effect. Per ECG, the Spearman correlation between the
shown weights and those drops says whether the leads shown as important are the leads
whose removal costs the decision; its mean over ECGs is the faithfulness figure.

The same is computed for the paper's aggregator softmax (``aggregator_weights``) for
contrast, with the mean per-ECG maximum weight of each (uniform is 1/8 = 0.125: a picture
where every lead weighs the same cannot be read).

An ECG whose shown weights (or drops) are all equal has no defined rank correlation; it
is left out of the mean and counted in ``n_undefined``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lasan.leads import derive_missing_leads
from lasan.preprocessing import InputSpec, preprocess
from lasan.record import ECGRecord
from lasan.train.masking import rank_correlation
from lasan.train.metrics import disease_classes, patient_bootstrap

__all__ = [
    "ServedOutputs",
    "zero_lead",
    "occluded_records",
    "served_predict",
    "input_occlusion",
    "occlusion_drops",
    "per_ecg_spearman",
    "faithfulness_summary",
    "gallery_indices",
    "gallery_entries",
    "plot_gallery",
]


@dataclass(frozen=True)
class ServedOutputs:
    """What the served model shows for ``N`` ECGs."""

    probs: np.ndarray  # (N, C) calibrated probabilities
    importance: np.ndarray  # (N, L) lead_importance
    aggregator: np.ndarray | None  # (N, L) the paper's aggregator softmax, None when not available


def zero_lead(record: ECGRecord, lead: str) -> ECGRecord:
    """``record`` with ``lead`` set to 0 mV; a limb lead the record lacks is derived first, then zeroed.

    Raises:
        MissingLeadsError: the lead is absent and cannot be derived.
    """
    signal, leads = np.asarray(record.signal), tuple(record.leads)
    if lead not in leads:
        signal, leads, _ = derive_missing_leads(signal, leads)
    signal = np.array(signal, dtype=np.float32, copy=True)
    signal[list(leads).index(lead)] = 0.0
    return ECGRecord(signal, record.fs, leads, record.acquisition)


def occluded_records(record: ECGRecord, model_leads: Sequence[str]) -> list[ECGRecord]:
    """One copy of ``record`` per model lead, with that lead zeroed in mV (model-lead order)."""
    return [zero_lead(record, lead) for lead in model_leads]


@torch.no_grad()
def served_predict(served: nn.Module, x: np.ndarray, batch_size: int = 64) -> ServedOutputs:
    """Run a :class:`lasan.models.ServedLASAN` on preprocessed ``x (N, L, T)``."""
    served.eval()
    probs, imp, agg = [], [], []
    for start in range(0, len(x), batch_size):
        xb = torch.as_tensor(np.ascontiguousarray(x[start : start + batch_size]), dtype=torch.float32)  # (B, L, T)
        p, li, aw, _ = served(xb)
        probs.append(p.numpy())
        imp.append(li.numpy())
        agg.append(aw.numpy())
    n_leads = x.shape[1] if x.ndim == 3 else 0
    if not probs:
        return ServedOutputs(np.zeros((0, 0)), np.zeros((0, n_leads)), np.zeros((0, n_leads)))
    return ServedOutputs(np.concatenate(probs), np.concatenate(imp), np.concatenate(agg))


def input_occlusion(
    records: Sequence[ECGRecord],
    score: Callable[[np.ndarray], ServedOutputs],
    spec: InputSpec,
    chunk: int = 8,
) -> tuple[ServedOutputs, np.ndarray]:
    """Score ``records`` and their single-lead occlusions (zeroed in mV, re-preprocessed).

    ``score`` maps preprocessed inputs ``(M, L, T)`` to :class:`ServedOutputs` (in process:
    ``lambda x: served_predict(served, x)``). Records are processed ``chunk`` at a time so
    that ``9 * chunk`` inputs sit in memory at once.

    Returns:
        The outputs for the unchanged records, and ``occluded_probs (N, L, C)``: the
        probabilities with lead ``i`` zeroed.
    """
    n_leads = len(spec.leads)
    full: list[ServedOutputs] = []
    occluded: list[np.ndarray] = []
    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        xs = []
        for record in part:
            xs.append(preprocess(record, spec))
            xs.extend(preprocess(r, spec) for r in occluded_records(record, spec.leads))
        out = score(np.stack(xs))  # (len(part) * (L + 1), ...)
        idx = np.arange(len(part)) * (n_leads + 1)
        full.append(
            ServedOutputs(out.probs[idx], out.importance[idx], None if out.aggregator is None else out.aggregator[idx])
        )
        occ = np.delete(out.probs, idx, axis=0).reshape(len(part), n_leads, -1)  # (B, L, C)
        occluded.append(occ)
    aggregator = None if not full or full[0].aggregator is None else np.concatenate([f.aggregator for f in full])
    merged = ServedOutputs(
        np.concatenate([f.probs for f in full]), np.concatenate([f.importance for f in full]), aggregator
    )
    return merged, np.concatenate(occluded)


def occlusion_drops(probs: np.ndarray, occluded: np.ndarray, cls: np.ndarray) -> np.ndarray:
    """``(N, L)``: ``p_c(x) - p_c(x with lead i zeroed)`` for class ``cls[n]`` of each ECG."""
    probs, occluded = np.asarray(probs, dtype=np.float64), np.asarray(occluded, dtype=np.float64)
    rows = np.arange(len(probs))
    return probs[rows, cls][:, None] - occluded[rows, :, cls]


def per_ecg_spearman(shown: np.ndarray, drops: np.ndarray) -> np.ndarray:
    """``(N,)`` Spearman correlation of each ECG's shown weights with its drops (nan if undefined)."""
    return np.array([rank_correlation(a, b) for a, b in zip(shown, drops, strict=True)], dtype=np.float64)


def _mean_ci(values: np.ndarray, groups: np.ndarray, n_boot: int, seed: int) -> dict[str, Any]:
    ok = np.isfinite(values)
    out: dict[str, Any] = {"n": int(values.size), "n_undefined": int((~ok).sum())}
    if not ok.any():
        return out | {"estimate": float("nan"), "low": float("nan"), "high": float("nan")}
    vals, grp = values[ok], np.asarray(groups)[ok]
    ci = patient_bootstrap(lambda idx: {"m": float(np.mean(vals[idx]))}, grp, n_boot, seed)["m"]
    return out | {"estimate": ci.estimate, "low": ci.low, "high": ci.high}


def faithfulness_summary(
    outputs: ServedOutputs,
    occluded: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    classes: Sequence[str],
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-ECG Spearman and maximum weight, summarised per true class, on disease ECGs and on all.

    Returns ``{"per_ecg": {...arrays...}, "<weights>": {"<subset>": {...}}}`` where
    ``<weights>`` is ``lead_importance`` or ``aggregator_weights``, ``<subset>`` is ``all``,
    ``disease`` or a class name, and each entry holds ``spearman_predicted`` and
    ``spearman_true`` (mean per-ECG Spearman with a patient-bootstrap CI, ``n``,
    ``n_undefined``) and ``max_weight`` (mean per-ECG maximum weight with CI).
    """
    y = np.asarray(y)
    groups = np.asarray(groups)
    predicted = outputs.probs.argmax(axis=1)
    drops_pred = occlusion_drops(outputs.probs, occluded, predicted)
    drops_true = occlusion_drops(outputs.probs, occluded, y)
    disease = np.isin(y, [list(classes).index(c) for c in disease_classes(tuple(classes))])
    subsets = {"all": np.ones(len(y), bool), "disease": disease}
    subsets |= {c: y == k for k, c in enumerate(classes)}
    shown = {"lead_importance": outputs.importance}
    if outputs.aggregator is not None:
        shown["aggregator_weights"] = outputs.aggregator
    summary: dict[str, Any] = {
        "per_ecg": {"drops_predicted": drops_pred, "drops_true": drops_true, "predicted": predicted},
        "uniform_weight": 1.0 / outputs.importance.shape[1],
    }
    for name, weights in shown.items():
        rho_pred, rho_true = per_ecg_spearman(weights, drops_pred), per_ecg_spearman(weights, drops_true)
        max_w = weights.max(axis=1)
        summary["per_ecg"][f"{name}_spearman_predicted"] = rho_pred
        summary["per_ecg"][f"{name}_max_weight"] = max_w
        summary[name] = {}
        for subset, sel in subsets.items():
            if not sel.any():
                continue
            summary[name][subset] = {
                "spearman_predicted": _mean_ci(rho_pred[sel], groups[sel], n_boot, seed),
                "spearman_true": _mean_ci(rho_true[sel], groups[sel], n_boot, seed),
                "max_weight": _mean_ci(max_w[sel], groups[sel], n_boot, seed),
            }
    return summary


def gallery_indices(n_total: int, k: int, seed: int) -> list[int]:
    """``k`` ECG indices drawn uniformly at random without replacement (seeded), in draw order.

    Random on purpose: a gallery of hand-picked or best-scored ECGs would show what the
    method does at its best, not what a user will typically see.
    """
    rng = np.random.default_rng(seed)
    return [int(i) for i in rng.choice(n_total, size=min(k, n_total), replace=False)]


def gallery_entries(
    indices: Sequence[int],
    names: Sequence[str],
    y: np.ndarray,
    outputs: ServedOutputs,
    summary: dict[str, Any],
    classes: Sequence[str],
    leads: Sequence[str],
) -> list[dict[str, Any]]:
    """The report's gallery: per drawn ECG, its file name, labels, weights and drops per lead."""
    per = summary["per_ecg"]
    entries = []
    for i in indices:
        entries.append(
            {
                "file": names[i],
                "true": classes[int(y[i])],
                "predicted": classes[int(per["predicted"][i])],
                "p_predicted": float(outputs.probs[i, per["predicted"][i]]),
                "spearman": float(per["lead_importance_spearman_predicted"][i]),
                "leads": list(leads),
                "lead_importance": outputs.importance[i].tolist(),
                "aggregator_weights": None if outputs.aggregator is None else outputs.aggregator[i].tolist(),
                "drop": per["drops_predicted"][i].tolist(),
            }
        )
    return entries


def plot_gallery(entries: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """One panel per ECG: shown importance, aggregator weight and occlusion drop for each lead."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = max(1, int(np.ceil(len(entries) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[len(entries) :]:
        ax.axis("off")
    for ax, e in zip(axes.flat, entries, strict=False):
        x = np.arange(len(e["leads"]))
        ax.bar(x - 0.27, e["lead_importance"], 0.27, color="tab:blue")
        if e["aggregator_weights"] is not None:
            ax.bar(x, e["aggregator_weights"], 0.27, color="lightgrey")
        drop = np.asarray(e["drop"])
        ax2 = ax.twinx()
        ax2.bar(x + 0.27, drop, 0.27, color="tab:red")
        ax2.axhline(0, color="black", lw=0.5)
        ax2.set_ylabel("drop in p(predicted)", fontsize=7, color="tab:red")
        ax.set_xticks(x, e["leads"], fontsize=7)
        ax.set_ylabel("weight", fontsize=7)
        ax.set_title(
            f"{e['file']}\ntrue {e['true']}, predicted {e['predicted']} ({e['p_predicted']:.2f}); "
            "Spearman "
            + ("n/a" if e["spearman"] is None or not np.isfinite(e["spearman"]) else f"{e['spearman']:.2f}"),
            fontsize=7,
        )
        ax.tick_params(labelsize=6)
        ax2.tick_params(labelsize=6)
    from matplotlib.patches import Patch

    legend = [("tab:blue", "lead_importance (shown)"), ("lightgrey", "aggregator weight (paper)")]
    legend.append(("tab:red", "drop in p(predicted) when the lead is zeroed in mV (right axis)"))
    fig.legend([Patch(color=c) for c, _ in legend], [t for _, t in legend], loc="lower center", ncol=3, fontsize=7)
    fig.subplots_adjust(left=0.06, right=0.94, top=0.9, bottom=0.12, hspace=0.7, wspace=0.45)
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
