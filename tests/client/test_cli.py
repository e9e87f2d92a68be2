"""``lasan score`` end to end against the shared Triton server."""

from __future__ import annotations

import json
import re

import pytest

from lasan.cli import main
from lasan.client.api import TritonScorer
from lasan.client.cli import EXIT_FILE_FAILED, EXIT_OK
from lasan.formats import read_ecg

pytestmark = pytest.mark.slow


def _score(argv, capsys):
    code = main(["score", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_lists_each_file_with_probabilities_flags_and_top_leads(triton_server, ecg_files, capsys):
    files = [str(ecg_files[k]) for k in ("wfdb", "dicom")]
    code, out, err = _score([*files, "--url", triton_server.grpc_url, "--no-progress"], capsys)
    assert code == EXIT_OK, err
    lines = out.splitlines()
    assert re.split(r"\s{2,}", lines[0].strip()) == [
        "file",
        "predicted",
        "P(ARVC)",
        "P(LQTS)",
        "P(control)",
        "screening+",
        "confirmation+",
        "top leads",
    ]
    with TritonScorer(triton_server.grpc_url) as scorer:
        for path, line in zip(files, lines[1:3], strict=True):
            assert line.startswith(path)
            expected = scorer.score(read_ecg(path))
            assert f"{expected.probabilities['ARVC']:.3f}" in line
            assert expected.top_leads(1)[0][0] + "(" in line
    assert "not a medical device" in lines[-1]


def test_json_lines_match_the_api_and_a_bad_file_fails_alone(triton_server, ecg_files, capsys):
    files = [str(ecg_files["wfdb"]), str(ecg_files["bad"]), str(ecg_files["hl7"]), "/no/such/file.dcm"]
    code, out, err = _score([*files, "--url", triton_server.grpc_url, "--json", "--concurrency", "3"], capsys)
    assert code == EXIT_FILE_FAILED
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in rows] == files  # input order, one line per file
    with TritonScorer(triton_server.grpc_url) as scorer:
        for i in (0, 2):
            expected = scorer.score(read_ecg(files[i])).probabilities
            assert rows[i]["probabilities"] == pytest.approx(expected, abs=1e-6)
            assert set(rows[i]) >= {"predicted_class", "screening", "confirmation", "lead_importance", "model"}
    assert rows[1]["error_type"] == "UnsupportedFormatError" and "error" in rows[1]
    assert "error" in rows[3]
    for bad in (files[1], files[3]):  # one line each, with the reason
        lines = [line for line in err.splitlines() if bad in line]
        assert len(lines) == 1 and lines[0].startswith(f"lasan score: {bad}: ")
    assert "not an ECG format" in err and "no such file" in err.lower()


def test_missing_leads_are_a_per_file_reason(triton_server, tmp_path, capsys):
    from lasan.formats import write_ecg
    from lasan.formats.sample import sample_ecg

    path = write_ecg(sample_ecg(leads=("I", "II", "V1", "V2", "V4", "V5", "V6")), tmp_path / "no_v3.hea")
    code, out, err = _score([str(path), "--url", triton_server.grpc_url], capsys)
    assert code == EXIT_FILE_FAILED
    assert "MissingLeadsError" in err and "V3" in err


def test_report_png_and_multipage_pdf(triton_server, ecg_files, tmp_path, capsys):
    png = tmp_path / "one.png"
    code, _, err = _score([str(ecg_files["dicom"]), "--url", triton_server.grpc_url, "--report", str(png)], capsys)
    assert code == EXIT_OK, err
    assert png.stat().st_size > 50_000 and str(png) in err
    pdf = tmp_path / "all.pdf"
    files = [str(ecg_files[k]) for k in ("wfdb", "bad", "dicom")]
    code, _, err = _score([*files, "--url", triton_server.grpc_url, "--report", str(pdf)], capsys)
    assert code == EXIT_FILE_FAILED
    data = pdf.read_bytes()
    assert data.startswith(b"%PDF") and len(re.findall(rb"/Type\s*/Page\b", data)) == 2  # the two good files
