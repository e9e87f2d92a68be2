"""Scoring through a real Triton server (the shared session fixture), checked against the checkpoint in-process."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from lasan.checkpoint import load_checkpoint
from lasan.client.api import AsyncTritonScorer, TritonScorer
from lasan.errors import ScoringError, TritonUnavailableError
from lasan.formats import read_ecg
from lasan.formats.sample import sample_ecg
from lasan.leads import MODEL_LEADS
from lasan.preprocessing import preprocess
from lasan.record import ECGRecord, PatientIdentity
from lasan.tensor_names import ENSEMBLE_MODEL

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(triton_server):
    """In-process scores of the served model: (probabilities, lead importance, aggregator weights)."""
    ckpt = load_checkpoint(triton_server.checkpoint)
    model = ckpt.served_model()

    def run(record: ECGRecord) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        x = torch.from_numpy(preprocess(record, ckpt.config.input))[None]  # (1, 8, 2500)
        with torch.no_grad():
            probs, importance, aggregator, _ = model(x)
        return probs[0].numpy(), importance[0].numpy(), aggregator[0].numpy()

    return run


@pytest.fixture(scope="module")
def scorer(triton_server):
    with TritonScorer(triton_server.grpc_url, timeout_s=60, attention=True) as s:
        yield s


def _check(score, reference, record) -> None:
    probs, importance, aggregator = reference(record)
    np.testing.assert_allclose(list(score.probabilities.values()), probs, atol=1e-4)
    np.testing.assert_allclose([score.lead_importance[lead] for lead in MODEL_LEADS], importance, atol=1e-4)
    np.testing.assert_allclose([score.aggregator_weights[lead] for lead in MODEL_LEADS], aggregator, atol=1e-4)
    assert score.predicted_class == list(score.probabilities)[int(np.argmax(probs))]


def test_model_description_comes_from_the_served_config(scorer, triton_server):
    info = scorer.model_info
    ckpt = load_checkpoint(triton_server.checkpoint)
    assert info.name == ENSEMBLE_MODEL
    assert info.classes == ckpt.config.classes
    assert info.lead_order == MODEL_LEADS
    assert info.disease_classes == ("ARVC", "LQTS")
    assert info.thresholds["screening"]["ARVC"] == ckpt.info.thresholds["screening"]["ARVC"]
    assert info.version.endswith(ckpt.sha256[:12])


def test_synthetic_ecg_scores_equal_the_checkpoint(scorer, reference):
    record = sample_ecg(fs=500.0, seed=3)
    score = scorer.score(record)
    _check(score, reference, record)
    assert score.leads_sent == tuple(record.in_standard_order().leads)
    assert score.attention is not None and score.attention.shape[-2:] == (8, 8)
    assert score.round_trip_ms > 0
    for point in ("screening", "confirmation"):
        cut = score.thresholds[point]
        decided = getattr(score, point)
        assert decided == {c: score.probabilities[c] >= cut[c] for c in ("ARVC", "LQTS")}


def test_real_mortara_dicom_scores_equal_the_checkpoint(scorer, reference, mortara):
    _check(scorer.score(mortara), reference, mortara)


def test_eight_shuffled_leads_score_like_the_twelve(scorer, mortara, eight_lead):
    a, b = scorer.score(mortara), scorer.score(eight_lead(mortara))
    assert b.leads_sent == MODEL_LEADS
    np.testing.assert_allclose(list(a.probabilities.values()), list(b.probabilities.values()), atol=1e-5)


def test_score_json_carries_no_patient_identifier(scorer):
    record = replace(sample_ecg(seed=4), patient=PatientIdentity(patient_id="MRN-4711", name="DOE^JANE"))
    text = json.dumps(scorer.score(record).to_dict(include_attention=True))
    assert "MRN-4711" not in text and "DOE" not in text


def test_nan_input_is_refused_with_the_server_message_and_not_retried(triton_server):
    record = sample_ecg(seed=5)
    signal = record.signal.copy()
    signal[record.leads.index("V2"), 100] = np.nan
    retries = []
    with TritonScorer(triton_server.grpc_url, retries=3, backoff_s=0.5, on_retry=lambda *a: retries.append(a)) as s:
        with pytest.raises(ScoringError) as info:
            s.score(replace(record, signal=signal))
    assert not isinstance(info.value, TritonUnavailableError)
    assert "V2" in str(info.value) and "NaN" in str(info.value)  # the preprocess model's own words
    assert retries == []


def test_async_many_in_flight_equals_sequential(triton_server, scorer):
    records = [
        sample_ecg(fs=fs, seed=seed, heart_rate_bpm=55 + 7 * seed)
        for seed, fs in enumerate((500.0, 250.0, 360.0, 1000.0) * 3)
    ]
    sequential = [scorer.score(r) for r in records]

    async def many():
        async with AsyncTritonScorer(triton_server.grpc_url, timeout_s=60) as a:
            return await a.score_many(records, concurrency=12)

    concurrent = asyncio.run(many())
    assert len(concurrent) == len(records)
    for s, c in zip(sequential, concurrent, strict=True):
        assert not isinstance(c, Exception), c
        # Batched and single requests may take different float paths in the encoder: 1e-4, as vs the checkpoint.
        np.testing.assert_allclose(list(s.probabilities.values()), list(c.probabilities.values()), atol=1e-4)
        np.testing.assert_allclose(list(s.lead_importance.values()), list(c.lead_importance.values()), atol=1e-4)
    # Different ECGs get different scores: the comparison above is not trivially true.
    assert len({round(s.probabilities["ARVC"], 5) for s in sequential}) > 1


def test_score_many_returns_failures_in_place(scorer):
    good = sample_ecg(seed=6)
    short = sample_ecg(duration_s=1.0)  # preprocessing refuses < 2 s
    results = scorer.score_many([good, short, good])
    assert not isinstance(results[0], Exception) and not isinstance(results[2], Exception)
    assert isinstance(results[1], ScoringError) and "s long" in str(results[1])


def test_missing_model_name_gives_a_clear_error(triton_server):
    with pytest.raises(TritonUnavailableError) as info:
        TritonScorer(triton_server.grpc_url, model="lasan_v9", retries=0)
    text = str(info.value)
    assert "lasan_v9" in text and triton_server.grpc_url in text and ENSEMBLE_MODEL in text  # lists what is ready


def test_files_of_every_format_score_like_their_records(scorer, reference, ecg_files):
    for fmt in ("wfdb", "hl7", "dicom"):
        record = read_ecg(ecg_files[fmt])
        _check(scorer.score(record), reference, record)


def test_a_request_past_its_deadline_is_retried_then_reported_as_unavailable(triton_server):
    retries = []
    with TritonScorer(
        triton_server.grpc_url, timeout_s=60, retries=1, backoff_s=0.01, on_retry=lambda *a: retries.append(a)
    ) as s:
        s.timeout_s = 1e-6  # connected normally; now every call misses its deadline
        with pytest.raises(TritonUnavailableError, match="timeout"):
            s.score(sample_ecg(seed=7))
    assert len(retries) == 1 and "DEADLINE_EXCEEDED" in str(retries[0][1].status())
