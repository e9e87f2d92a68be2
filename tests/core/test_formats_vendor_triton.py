"""The real Philips Sierra export and a GE MUSE export (8 stored leads) score through the served
Triton ensemble like their records in-process (the shared session server; slow)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_formats_vendor import PHILIPS, ge_muse_bytes, needs_philips

from lasan.checkpoint import load_checkpoint
from lasan.client.api import TritonScorer
from lasan.formats import read_ecg
from lasan.leads import MODEL_LEADS
from lasan.preprocessing import preprocess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scored(triton_server):
    ckpt = load_checkpoint(triton_server.checkpoint)
    model = ckpt.served_model()

    def check(record) -> None:
        x = torch.from_numpy(preprocess(record, ckpt.config.input))[None]  # (1, 8, 2500)
        with torch.no_grad():
            probs, importance, _, _ = model(x)
        with TritonScorer(triton_server.grpc_url, timeout_s=60) as scorer:
            score = scorer.score(record)
        np.testing.assert_allclose(list(score.probabilities.values()), probs[0].numpy(), atol=1e-4)
        np.testing.assert_allclose([score.lead_importance[lead] for lead in MODEL_LEADS], importance[0].numpy(),
                                   atol=1e-4)
        assert abs(sum(score.probabilities.values()) - 1.0) < 1e-5

    return check


@needs_philips
def test_real_philips_export_scores_through_the_served_ensemble(scored):
    scored(read_ecg(PHILIPS))


def test_ge_muse_export_with_derived_limb_leads_scores_through_the_served_ensemble(scored):
    scored(read_ecg(ge_muse_bytes()))
