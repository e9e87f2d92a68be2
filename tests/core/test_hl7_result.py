"""The result message carries exactly the digits of the score object it was built from."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np

from lasan.client.score import Score
from lasan.hl7.oru import OrderContext
from lasan.hl7.result import build_result


def obx_values(result: str) -> dict[str, str]:
    return {f[3].split("^")[0]: f[5] for f in (seg.split("|") for seg in result.split("\r")) if f[0] == "OBX"}


def result_probabilities(result: str) -> dict[str, float]:
    return {code[len("PROB-"):]: float(v) for code, v in obx_values(result).items() if code.startswith("PROB-")}


def _score() -> Score:
    # Values with many significant digits, as float32 outputs widened to float.
    probs = {c: float(np.float32(p)) for c, p in (("ARVC", 0.1234567890123), ("LQTS", 0.2469135780246),
                                                   ("control", 0.6296296329631))}
    leads = {lead: (i + 1) / 36.000000123 for i, lead in enumerate(("I", "II", "V1", "V2", "V3", "V4", "V5", "V6"))}
    return Score(probabilities=probs, predicted_class="control", screening={"ARVC": False, "LQTS": True},
                 confirmation={"ARVC": False, "LQTS": False}, thresholds={}, lead_importance=leads,
                 model_name="lasan", model_version="1+abc", round_trip_ms=1.0)


def test_sent_digits_are_the_score_objects_digits():
    score = _score()
    order = OrderContext(original_control_id="C-1", sending_application="CART", sending_facility="WARD7")
    text = build_result(order, score, control_id="LSN1", now=datetime(2026, 1, 2, tzinfo=timezone.utc))
    # In process there is no batching: the round trip through the text is exact.
    assert result_probabilities(text) == {c.upper(): p for c, p in score.probabilities.items()}
    values = obx_values(text)
    assert {c[len("LEADIMP-"):]: float(v) for c, v in values.items() if c.startswith("LEADIMP-")} == {
        lead.upper(): w for lead, w in score.lead_importance.items()}
    assert values["ORIG-MSH10"] == "C-1"
