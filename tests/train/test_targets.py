"""``lasan targets`` against the real embedded Triton server serving the tiny checkpoint."""

from __future__ import annotations

import json

import pytest

from lasan.cli import main
from lasan.train.synth import generate_cohort


@pytest.mark.slow  # starts (or shares) the session's Triton server; simulates neurokit2 normals
def test_targets_are_measured_on_the_served_ensemble_and_written(triton_server, tmp_path, capsys):
    manifest = generate_cohort(tmp_path / "cohort", n_patients=21, seed=0)
    out = tmp_path / "docs" / "targets.md"
    argv = ["targets", "--url", triton_server.grpc_url, "--checkpoint", str(triton_server.checkpoint)]
    argv += ["--data", str(manifest), "--out", str(out), "--work", str(tmp_path / "work")]
    argv += ["--fresh-patients", "3", "--normals", "2", "--bootstrap", "20"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    lines = [line for line in printed.splitlines() if line.startswith("[")]
    names = [line.split("] ", 1)[1].split(":")[0] for line in lines]
    assert len(lines) == 7, printed  # 2 importance, 2 ECE, normals, screening sensitivity for ARVC and LQTS
    assert all(line.startswith(("[MET   ]", "[MISSED]")) for line in lines)
    assert any(n.startswith("lead importance vs occlusion") for n in names)
    assert any(n.startswith("ECE, freshly generated patients") for n in names)
    md = out.read_text()
    assert "| target | measured | 95 % CI | bar | verdict | n | CI |" in md
    assert md.count("**MET**") + md.count("**MISSED**") == 7
    details = json.loads(out.with_suffix(".json").read_text())
    parity = details["parity_with_in_process"]
    # Served and in-process ServedLASAN agree within tolerance (never compared for equality).
    assert parity["max_abs_diff_probabilities"] <= parity["tolerance"]
    assert parity["max_abs_diff_lead_importance"] <= 1e-3
    assert details["normals"]["n"] == 2
    assert details["fresh_cohort"]["patients"] == 3
