"""The wire format, without the network: request arrays, model description, response decoding.

Kept apart from :mod:`lasan.client.api` so that it is plain numpy and testable without a
server. Tensor names come from :mod:`lasan.tensor_names`; lead order from :mod:`lasan.leads`
and :func:`lasan.preprocessing.leads_for_rows` (Triton's preprocess model reads a bare
8- or 12-row array with that convention).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from lasan.client.score import ModelInfo, Score
from lasan.errors import MissingLeadsError
from lasan.labels import disease_classes
from lasan.leads import MODEL_LEADS, STANDARD_LEADS
from lasan.preprocessing import leads_for_rows
from lasan.record import ECGRecord
from lasan.tensor_names import (
    OUTPUT_AGGREGATOR_WEIGHTS,
    OUTPUT_ATTENTION,
    OUTPUT_CONFIRMATION,
    OUTPUT_LEAD_IMPORTANCE,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCREENING,
)

__all__ = ["WireECG", "wire_ecg", "model_info_from", "decode_outputs"]

log = logging.getLogger(__name__)

# Config-parameter keys: ``lasan.build`` writes classes, lead_order and thresholds;
# model_version is an optional label a deployment may add to its repository.
_CLASS_KEYS = ("classes",)
_LEAD_KEYS = ("lead_order",)
_VERSION_KEYS = ("model_version",)
_CHECKPOINT_KEY = "checkpoint_sha256"
_THRESHOLD_KEYS = ("thresholds",)


@dataclass(frozen=True)
class WireECG:
    """One ECG as Triton's ensemble takes it.

    Attributes:
        ecg_mv: float32 ``(1, leads, samples)`` in mV, leads in canonical order.
        sampling_rate_hz: float32 ``(1, 1)``.
        leads: the canonical leads of the rows (8 model leads or the 12 standard leads).
        derived_leads: rows computed here from other leads (not recorded).
    """

    ecg_mv: np.ndarray
    sampling_rate_hz: np.ndarray
    leads: tuple[str, ...]
    derived_leads: tuple[str, ...]


def wire_ecg(record: ECGRecord) -> WireECG:
    """The request for ``record``: its 12 standard leads when it has them all, else the 8 model leads.

    Missing limb leads I or II are derived first (Einthoven/Goldberger, :mod:`lasan.leads`).

    Samples are sent unchanged (no filtering, no finiteness check): preprocessing and its
    validation happen in Triton, with the same code as training, so a bad waveform is
    answered by the server with its own message.

    Raises:
        MissingLeadsError: a model lead is absent and cannot be derived from the others.
    """
    derived: tuple[str, ...]
    if all(lead in record.leads for lead in STANDARD_LEADS):
        full, order, derived = record, STANDARD_LEADS, ()
    else:  # send only the 8 model leads: deriving III/aVR/aVL/aVF would add rows the model ignores
        full = record.with_derived_leads()
        missing = [lead for lead in MODEL_LEADS if lead not in full.leads]
        if missing:
            raise MissingLeadsError(missing, record.leads)
        order = MODEL_LEADS
        derived = tuple(lead for lead in MODEL_LEADS if lead in full.derived_leads and lead not in record.leads)
    # The server infers lead names from the row count alone; make sure we agree with it.
    assert leads_for_rows(len(order)) == order
    rows = np.stack([full.lead(lead) for lead in order]).astype(np.float32)  # (L, T)
    return WireECG(
        ecg_mv=np.ascontiguousarray(rows[None]),  # (1, L, T)
        sampling_rate_hz=np.array([[record.fs]], dtype=np.float32),  # (1, 1)
        leads=order,
        derived_leads=derived,
    )


def _param(params: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = params.get(key)
        if value not in (None, ""):
            return value
    return None


def _names(text: str) -> tuple[str, ...]:
    """A list parameter: JSON list or comma-separated."""
    text = text.strip()
    if text.startswith("["):
        return tuple(str(x) for x in json.loads(text))
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _thresholds(params: Mapping[str, str]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    raw = _param(params, _THRESHOLD_KEYS)
    if raw:
        try:
            data = json.loads(raw)
            out = {str(k): {str(c): float(p) for c, p in v.items()} for k, v in data.items()}
        except (ValueError, AttributeError, TypeError):
            log.warning("model config parameter 'thresholds' is not JSON {point: {class: p}}; ignoring it")
    for point in ("screening", "confirmation"):  # flat per-point keys, when the build writes those
        raw = params.get(f"{point}_thresholds")
        if raw and point not in out:
            try:
                out[point] = {str(c): float(p) for c, p in json.loads(raw).items()}
            except (ValueError, AttributeError, TypeError):
                log.warning("model config parameter '%s_thresholds' is not JSON {class: p}; ignoring it", point)
    return out


def model_info_from(metadata: Mapping[str, Any], config: Mapping[str, Any]) -> ModelInfo:
    """Build :class:`ModelInfo` from Triton's JSON model metadata and model config.

    Missing parameters fall back gracefully: class names to ``class_0..`` (from the
    probabilities output's width), lead order to :data:`lasan.leads.MODEL_LEADS` (the
    ``lead_importance`` contract in :mod:`lasan.tensor_names`), version to Triton's.
    """
    cfg = config.get("config", config)
    params = {k: (v or {}).get("string_value", "") for k, v in (cfg.get("parameters") or {}).items()}
    versions = [str(v) for v in metadata.get("versions") or []]
    triton_version = max(versions, key=lambda v: int(v) if v.isdigit() else -1) if versions else ""
    raw_classes = _param(params, _CLASS_KEYS)
    if raw_classes:
        classes = _names(raw_classes)
    else:
        width = 0
        for out in metadata.get("outputs") or []:
            if out.get("name") == OUTPUT_PROBABILITIES and out.get("shape"):
                width = int(out["shape"][-1])
        classes = tuple(f"class_{i}" for i in range(max(width, 0)))
        log.warning("model %s has no 'classes' parameter; naming its %d classes by index", metadata.get("name"), width)
    raw_leads = _param(params, _LEAD_KEYS)
    lead_order = _names(raw_leads) if raw_leads else MODEL_LEADS
    thresholds = _thresholds(params)
    # Decisions are about diseases, and only those with a published threshold.
    with_thresholds = {c for point in thresholds.values() for c in point}
    disease = tuple(c for c in disease_classes(classes) if not with_thresholds or c in with_thresholds)
    # The Triton version number alone does not say which weights answered: a rebuilt
    # repository is version 1 again. The checkpoint hash does; keep both, compactly.
    version = _param(params, _VERSION_KEYS)
    if not version:
        sha = params.get(_CHECKPOINT_KEY, "")
        version = f"{triton_version}+{sha[:12]}" if sha else triton_version
    return ModelInfo(
        name=str(metadata.get("name") or cfg.get("name") or ""),
        version=version,
        triton_version=triton_version,
        classes=classes,
        lead_order=lead_order,
        thresholds=thresholds,
        disease_classes=disease,
        parameters=params,
        outputs=tuple(str(o.get("name")) for o in metadata.get("outputs") or [] if o.get("name")),
    )


def decode_outputs(
    outputs: Mapping[str, np.ndarray | None],
    info: ModelInfo,
    wire: WireECG,
    round_trip_ms: float,
) -> Score:
    """Turn the ensemble's output tensors (batch of one) into a :class:`Score`."""
    probs = np.asarray(outputs[OUTPUT_PROBABILITIES], dtype=np.float64).reshape(-1)
    weights = np.asarray(outputs[OUTPUT_LEAD_IMPORTANCE], dtype=np.float64).reshape(-1)
    classes = info.classes if len(info.classes) == probs.size else tuple(f"class_{i}" for i in range(probs.size))
    leads = info.lead_order if len(info.lead_order) == weights.size else MODEL_LEADS[: weights.size]
    probabilities = {c: float(p) for c, p in zip(classes, probs, strict=True)}
    decisions: dict[str, dict[str, bool]] = {}
    for point, name in (("screening", OUTPUT_SCREENING), ("confirmation", OUTPUT_CONFIRMATION)):
        flags = outputs.get(name)
        if flags is not None:
            flags = np.asarray(flags).reshape(-1).astype(bool)
            decisions[point] = {c: bool(f) for c, f in zip(classes, flags, strict=False) if c in info.disease_classes}
        else:  # the server does not publish this decision: use the published threshold, if any
            cut = info.thresholds.get(point, {})
            decisions[point] = {c: probabilities[c] >= cut[c] for c in info.disease_classes if c in cut}
    aggregator = outputs.get(OUTPUT_AGGREGATOR_WEIGHTS)
    aggregator_weights: dict[str, float] = {}
    if aggregator is not None:
        values = np.asarray(aggregator, dtype=np.float64).reshape(-1)
        if values.size == len(leads):
            aggregator_weights = {lead: float(w) for lead, w in zip(leads, values, strict=True)}
    attention = outputs.get(OUTPUT_ATTENTION)
    if attention is not None:
        attention = np.array(attention, dtype=np.float32)
        attention = attention.reshape(attention.shape[1:]) if attention.shape[0] == 1 else attention
        attention.setflags(write=False)
    return Score(
        probabilities=probabilities,
        predicted_class=classes[int(np.argmax(probs))],
        screening=decisions["screening"],
        confirmation=decisions["confirmation"],
        thresholds={k: {c: p for c, p in v.items() if c in info.disease_classes} for k, v in info.thresholds.items()},
        lead_importance={lead: float(w) for lead, w in zip(leads, weights, strict=True)},
        model_name=info.name,
        model_version=info.version,
        round_trip_ms=round_trip_ms,
        leads_sent=wire.leads,
        derived_leads=wire.derived_leads,
        aggregator_weights=aggregator_weights,
        attention=attention,
    )
