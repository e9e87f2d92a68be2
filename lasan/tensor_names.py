"""The served interface: model and tensor names, written once.

``lasan.build`` generates every ``config.pbtxt`` from these names; ``lasan.client``
sends and reads the same names. Pure Python (no torch) so the client imports it cheaply.
"""

from __future__ import annotations

__all__ = [
    "ENSEMBLE_MODEL",
    "PREPROCESS_MODEL",
    "ENCODER_MODEL",
    "FUSION_MODEL",
    "OUTPUTS_MODEL",
    "INPUT_ECG",
    "INPUT_SAMPLING_RATE",
    "OUTPUT_PROBABILITIES",
    "OUTPUT_LEAD_IMPORTANCE",
    "OUTPUT_AGGREGATOR_WEIGHTS",
    "OUTPUT_ATTENTION",
    "OUTPUT_SCREENING",
    "OUTPUT_CONFIRMATION",
    "ENSEMBLE_OUTPUTS",
]

# Models in the repository. The ensemble chains preprocess -> encoder -> fusion -> attention_outputs.
ENSEMBLE_MODEL = "lasan"
PREPROCESS_MODEL = "preprocess"
ENCODER_MODEL = "encoder"
FUSION_MODEL = "fusion"
OUTPUTS_MODEL = "attention_outputs"

# Ensemble inputs: the raw ECG in mV, (8 or 12 leads in canonical order, any length), FP32,
# and its sampling rate in Hz, FP32 [1]. Both carry the batch dimension.
INPUT_ECG = "ecg_mv"
INPUT_SAMPLING_RATE = "sampling_rate_hz"

# Ensemble outputs.
OUTPUT_PROBABILITIES = "probabilities"  # FP32 [classes], calibrated softmax (temperature), class order in metadata
# FP32 [8], sums to 1, order I II V1..V6: occlusion importance, the share of the drop in the
# predicted class's probability when that lead is zeroed (what clients, the ORU and the PDF show).
OUTPUT_LEAD_IMPORTANCE = "lead_importance"
# FP32 [8], sums to 1: the paper's lead-aggregator softmax, kept for research; it is an attention
# weight, not evidence that a lead changed the decision.
OUTPUT_AGGREGATOR_WEIGHTS = "aggregator_weights"
OUTPUT_ATTENTION = "inter_lead_attention"  # FP32 [layers, heads, 8, 8]
OUTPUT_SCREENING = "screening_positive"  # BOOL [classes]: probability >= screening threshold
OUTPUT_CONFIRMATION = "confirmation_positive"  # BOOL [classes]: probability >= confirmation threshold

ENSEMBLE_OUTPUTS: tuple[str, ...] = (
    OUTPUT_PROBABILITIES,
    OUTPUT_LEAD_IMPORTANCE,
    OUTPUT_AGGREGATOR_WEIGHTS,
    OUTPUT_ATTENTION,
    OUTPUT_SCREENING,
    OUTPUT_CONFIRMATION,
)
