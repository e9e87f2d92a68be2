"""What scoring returns: the served model's description and one ECG's typed score.

Neither type holds anything that identifies a patient: a score can be logged, written
to an outbox or sent downstream as it is, and the caller attaches identifiers itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["ModelInfo", "Score"]


@dataclass(frozen=True)
class ModelInfo:
    """The served ensemble, read once from Triton's model metadata and config.

    Attributes:
        name: Triton model name (the ensemble).
        version: the build's ``model_version`` parameter when present, else Triton's version
            number plus the first 12 hex digits of the checkpoint's SHA-256 (``1+3fa4c2e1b0d9``).
        triton_version: the version directory Triton serves ("1", ...).
        classes: class names in the order of the ``probabilities`` output.
        lead_order: the model leads in the order of ``lead_importance`` (I, II, V1-V6).
        thresholds: ``{"screening": {class: p}, "confirmation": {class: p}}``; empty
            when the repository does not say (decisions then come from the server only).
        disease_classes: classes that get screening / confirmation decisions.
        parameters: every string parameter of the model config, for provenance.
        outputs: the output tensor names the ensemble declares (empty when unknown); the
            client asks only for these, so a repository built before an output existed still works.
    """

    name: str
    version: str
    triton_version: str
    classes: tuple[str, ...]
    lead_order: tuple[str, ...]
    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    disease_classes: tuple[str, ...] = ()
    parameters: dict[str, str] = field(default_factory=dict)
    outputs: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "triton_version": self.triton_version,
            "classes": list(self.classes),
            "lead_order": list(self.lead_order),
            "thresholds": {k: dict(v) for k, v in self.thresholds.items()},
            "disease_classes": list(self.disease_classes),
        }


@dataclass(frozen=True)
class Score:
    """One ECG scored by the served model.

    Attributes:
        probabilities: ``{class: p}`` in the model's class order; sums to 1.
        predicted_class: the class with the highest probability.
        screening: ``{disease class: positive}`` at the screening (high-sensitivity) point.
        confirmation: ``{disease class: positive}`` at the confirmation (high-specificity) point.
        thresholds: the operating points used for the disease classes,
            ``{"screening": {class: p}, "confirmation": {class: p}}``.
        lead_importance: ``{lead: weight}`` for the 8 model leads, summing to 1: occlusion
            importance, each lead's share of the drop in the predicted class's probability when
            that lead is zeroed (what changes the decision; shown in the PDF and the ORU).
        model_name, model_version: what produced the score.
        round_trip_ms: client wall time for the call, retries included.
        leads_sent: canonical leads sent to Triton (8 model leads or the 12 standard leads).
        derived_leads: leads the client computed from others before sending (Einthoven/Goldberger).
        aggregator_weights: ``{lead: weight}``, the paper's lead-aggregator softmax (an
            attention weight, not evidence); empty when the served model does not return it.
        attention: inter-lead attention ``(layers, heads, 8, 8)`` (read-only), or None when
            not requested.
    """

    probabilities: dict[str, float]
    predicted_class: str
    screening: dict[str, bool]
    confirmation: dict[str, bool]
    thresholds: dict[str, dict[str, float]]
    lead_importance: dict[str, float]
    model_name: str
    model_version: str
    round_trip_ms: float
    leads_sent: tuple[str, ...] = ()
    derived_leads: tuple[str, ...] = ()
    aggregator_weights: dict[str, float] = field(default_factory=dict)
    attention: np.ndarray | None = field(default=None, repr=False, compare=False)

    def top_leads(self, k: int = 3) -> list[tuple[str, float]]:
        """The ``k`` leads with the largest importance weights, largest first."""
        return sorted(self.lead_importance.items(), key=lambda kv: -kv[1])[:k]

    def to_dict(self, include_attention: bool = False) -> dict[str, Any]:
        """Plain JSON-serialisable dict (attention only when asked: it is 200+ numbers)."""
        data: dict[str, Any] = {
            "predicted_class": self.predicted_class,
            "probabilities": {k: float(v) for k, v in self.probabilities.items()},
            "screening": {k: bool(v) for k, v in self.screening.items()},
            "confirmation": {k: bool(v) for k, v in self.confirmation.items()},
            "thresholds": {k: {c: float(p) for c, p in v.items()} for k, v in self.thresholds.items()},
            "lead_importance": {k: float(v) for k, v in self.lead_importance.items()},
            "aggregator_weights": {k: float(v) for k, v in self.aggregator_weights.items()},
            "model": {"name": self.model_name, "version": self.model_version},
            "timing": {"round_trip_ms": round(float(self.round_trip_ms), 3)},
            "leads_sent": list(self.leads_sent),
            "derived_leads": list(self.derived_leads),
        }
        if include_attention and self.attention is not None:
            data["attention"] = np.asarray(self.attention, dtype=float).tolist()
        return data
