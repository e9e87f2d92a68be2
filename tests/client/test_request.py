"""Request building, model description and response decoding, without a server."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from lasan.client.request import decode_outputs, model_info_from, wire_ecg
from lasan.errors import MissingLeadsError
from lasan.formats.sample import sample_ecg
from lasan.leads import MODEL_LEADS, STANDARD_LEADS
from lasan.record import PatientIdentity
from lasan.tensor_names import (
    OUTPUT_AGGREGATOR_WEIGHTS,
    OUTPUT_ATTENTION,
    OUTPUT_CONFIRMATION,
    OUTPUT_LEAD_IMPORTANCE,
    OUTPUT_PROBABILITIES,
    OUTPUT_SCREENING,
)


def test_twelve_leads_are_sent_in_standard_order_with_batch_dimension():
    rec = sample_ecg(fs=500.0, duration_s=4.0, leads=tuple(reversed(STANDARD_LEADS)))
    wire = wire_ecg(rec)
    assert wire.leads == STANDARD_LEADS
    assert wire.ecg_mv.shape == (1, 12, 2000) and wire.ecg_mv.dtype == np.float32
    assert wire.sampling_rate_hz.shape == (1, 1) and wire.sampling_rate_hz[0, 0] == 500.0
    for i, lead in enumerate(STANDARD_LEADS):
        np.testing.assert_array_equal(wire.ecg_mv[0, i], rec.lead(lead))
    assert wire.derived_leads == ()


def test_eight_shuffled_leads_are_sent_in_model_order(eight_lead):
    rec = eight_lead(sample_ecg(fs=360.0, duration_s=3.0))
    wire = wire_ecg(rec)
    assert wire.leads == MODEL_LEADS
    for i, lead in enumerate(MODEL_LEADS):
        np.testing.assert_array_equal(wire.ecg_mv[0, i], rec.lead(lead))


def test_limb_leads_are_derived_with_the_core_rules_and_reported():
    full = sample_ecg(fs=500.0, duration_s=3.0)
    no_i = tuple(lead for lead in STANDARD_LEADS if lead not in ("I", "aVR", "aVL", "aVF"))
    rec = replace(full, signal=np.stack([full.lead(x) for x in no_i]), leads=no_i)
    wire = wire_ecg(rec)
    assert wire.leads == MODEL_LEADS  # only what the model reads; no derived augmented leads
    assert wire.derived_leads == ("I",)
    # sample_ecg obeys Einthoven exactly, so I = II - III reproduces the original lead.
    np.testing.assert_allclose(wire.ecg_mv[0, 0], full.lead("I"), atol=1e-5)


def test_a_missing_precordial_lead_is_refused_before_sending():
    rec = sample_ecg(leads=tuple(lead for lead in STANDARD_LEADS if lead != "V3"))
    with pytest.raises(MissingLeadsError, match="V3"):
        wire_ecg(rec)


def test_nan_samples_are_sent_unchanged_so_the_server_can_say_what_is_wrong():
    rec = sample_ecg(duration_s=3.0)
    sig = rec.signal.copy()
    sig[2, 10] = np.nan
    wire = wire_ecg(replace(rec, signal=sig))
    assert np.isnan(wire.ecg_mv[0, 2, 10])


def _metadata(n_classes: int = 3) -> dict:
    return {
        "name": "lasan",
        "versions": ["1", "2"],
        "platform": "ensemble",
        "outputs": [{"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": ["-1", str(n_classes)]}],
    }


def _config(**params: str) -> dict:
    return {"config": {"name": "lasan", "parameters": {k: {"string_value": v} for k, v in params.items()}}}


BUILD_PARAMS = {
    "classes": json.dumps(["ARVC", "LQTS", "control"]),
    "lead_order": json.dumps(list(MODEL_LEADS)),
    "thresholds": json.dumps(
        {
            "screening": {"ARVC": 0.2, "LQTS": 0.25, "control": 0.5},
            "confirmation": {"ARVC": 0.6, "LQTS": 0.65, "control": 0.9},
        }
    ),
    "checkpoint_sha256": "ab" * 32,
}


def test_model_info_reads_the_build_parameters():
    info = model_info_from(_metadata(), _config(**BUILD_PARAMS))
    assert info.name == "lasan"
    assert info.classes == ("ARVC", "LQTS", "control")
    assert info.lead_order == MODEL_LEADS
    assert info.thresholds["screening"]["LQTS"] == 0.25
    assert info.disease_classes == ("ARVC", "LQTS")  # control gets no decision
    assert info.triton_version == "2"
    assert info.version == "2+" + "ab" * 6


def test_model_info_falls_back_when_the_config_says_nothing():
    info = model_info_from(_metadata(4), _config())
    assert info.classes == ("class_0", "class_1", "class_2", "class_3")
    assert info.lead_order == MODEL_LEADS
    assert info.thresholds == {}
    assert info.version == "2"


def test_model_info_accepts_comma_separated_lists_and_an_explicit_version():
    info = model_info_from(_metadata(), _config(classes="ARVC, LQTS, control", model_version="2026.11-a"))
    assert info.classes == ("ARVC", "LQTS", "control")
    assert info.version == "2026.11-a"


def _outputs() -> dict:
    weights = np.array([[0.05, 0.30, 0.20, 0.10, 0.10, 0.10, 0.10, 0.05]], dtype=np.float32)
    return {
        OUTPUT_PROBABILITIES: np.array([[0.1, 0.7, 0.2]], dtype=np.float32),
        OUTPUT_LEAD_IMPORTANCE: weights,
        OUTPUT_ATTENTION: np.full((1, 2, 4, 8, 8), 1 / 8, dtype=np.float32),
        OUTPUT_SCREENING: np.array([[False, True, False]]),
        OUTPUT_CONFIRMATION: np.array([[False, True, False]]),
    }


def test_decoding_gives_a_typed_score_without_patient_data():
    info = model_info_from(_metadata(), _config(**BUILD_PARAMS))
    rec = replace(sample_ecg(duration_s=3.0), patient=PatientIdentity(patient_id="MRN-4711", name="DOE^JANE"))
    score = decode_outputs(_outputs(), info, wire_ecg(rec), round_trip_ms=12.5)
    assert score.predicted_class == "LQTS"
    assert score.probabilities == pytest.approx({"ARVC": 0.1, "LQTS": 0.7, "control": 0.2})
    assert score.screening == {"ARVC": False, "LQTS": True}
    assert score.confirmation == {"ARVC": False, "LQTS": True}
    assert list(score.lead_importance) == list(MODEL_LEADS)
    assert score.top_leads(3) == [("II", pytest.approx(0.3)), ("V1", pytest.approx(0.2)), ("V2", pytest.approx(0.1))]
    assert score.aggregator_weights == {}  # a repository built before aggregator_weights was served
    assert score.attention.shape == (2, 4, 8, 8) and not score.attention.flags.writeable
    assert score.model_version == info.version and score.round_trip_ms == 12.5
    text = json.dumps(score.to_dict(include_attention=True))
    assert "MRN-4711" not in text and "DOE" not in text
    assert json.loads(text)["thresholds"]["screening"]["LQTS"] == 0.25
    with pytest.raises(AttributeError):
        score.predicted_class = "ARVC"  # frozen


def test_aggregator_weights_are_decoded_beside_the_faithful_importance():
    info = model_info_from(_metadata(), _config(**BUILD_PARAMS))
    outputs = _outputs() | {OUTPUT_AGGREGATOR_WEIGHTS: np.full((1, 8), 1 / 8, dtype=np.float32)}
    score = decode_outputs(outputs, info, wire_ecg(sample_ecg(duration_s=3.0)), round_trip_ms=1.0)
    assert list(score.aggregator_weights) == list(MODEL_LEADS)
    assert score.aggregator_weights["V1"] == pytest.approx(0.125)
    assert score.lead_importance["II"] == pytest.approx(0.3)  # the two are not mixed up
    assert score.to_dict()["aggregator_weights"]["I"] == pytest.approx(0.125)


def test_without_server_decisions_the_published_thresholds_decide():
    info = model_info_from(_metadata(), _config(**BUILD_PARAMS))
    out = {k: v for k, v in _outputs().items() if k not in (OUTPUT_SCREENING, OUTPUT_CONFIRMATION)}
    score = decode_outputs(out, info, wire_ecg(sample_ecg(duration_s=3.0)), round_trip_ms=1.0)
    assert score.screening == {"ARVC": False, "LQTS": True}  # 0.1 < 0.2, 0.7 >= 0.25
    assert score.confirmation == {"ARVC": False, "LQTS": True}  # 0.7 >= 0.65
