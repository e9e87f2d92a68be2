"""The real Philips Sierra export and a GE MUSE export (8 stored leads) score through the served
Triton ensemble like their records in-process, and ``lasan score`` scores one file of each export
format (the shared session server; slow)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_formats_vendor import BUILDERS, PATIENT_ID, PHILIPS, _corrupt, ge_muse_bytes, needs_philips
from test_formats_vendor_entry import export_files

from lasan.checkpoint import load_checkpoint
from lasan.cli import main
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


def test_lasan_score_scores_one_file_of_each_export_and_names_a_broken_one(triton_server, tmp_path, capsys):
    files = export_files(tmp_path)
    broken = tmp_path / "broken.xml"
    broken.write_bytes(_corrupt("mortara", BUILDERS["mortara"]()))
    paths = [*map(str, files.values()), str(broken)]
    code = main(["score", *paths, "--url", triton_server.grpc_url, "--json", "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 1, err  # the broken file fails alone
    rows = [json.loads(line) for line in out.splitlines()]
    assert [row["file"] for row in rows] == paths
    with TritonScorer(triton_server.grpc_url, timeout_s=60) as scorer:
        for path, row in zip(paths[:-1], rows[:-1], strict=True):
            expected = scorer.score(read_ecg(path)).probabilities
            assert row["probabilities"] == pytest.approx(expected, abs=1e-5), path
    assert rows[-1]["error_type"] == "MalformedECGError" and str(broken) in rows[-1]["error"]
    assert PATIENT_ID not in out + err
