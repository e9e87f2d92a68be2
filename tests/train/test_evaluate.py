"""``lasan evaluate`` end to end on a tiny checkpoint and a tiny manifest of real WFDB files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from lasan.checkpoint import CheckpointInfo, load_checkpoint, save_checkpoint
from lasan.cli import main
from lasan.formats import write_ecg
from lasan.leads import MODEL_LEADS
from lasan.models import EncoderSpec, HybridConfig, LASANConfig, build_model
from lasan.preprocessing import preprocess_array
from lasan.record import Acquisition, ECGRecord
from lasan.train.dataset import ECGArrays
from lasan.train.evaluate_cli import (
    CNN_NAME,
    LOGISTIC_NAME,
    MODEL_NAME,
    EvaluationData,
    evaluate,
    load_evaluation_data,
)
from lasan.train.manifest import read_manifest
from lasan.train.report import masking_finding, paired_differences, write_report
from lasan.train.split import patient_split

FS = 500.0
CLASSES = ("ARVC", "LQTS", "control")
TINY = {"cnn_channels": (4, 8, 8, 16), "d_model": 16, "n_heads": 2, "ff_dim": 32, "head_hidden": 8}


def _gauss(t, mu, sigma, amp):
    return amp * np.exp(-((t - mu) ** 2) / (2 * sigma**2))


def tiny_ecg(rng: np.random.Generator, label: str, seconds: float = 6.0) -> np.ndarray:
    """8 leads of Gaussian beats: ARVC inverts T in V1-V3, LQTS delays T; plus noise."""
    t = np.arange(int(seconds * FS)) / FS
    rr = rng.uniform(0.8, 1.1)
    t_peak = 0.38 if label == "LQTS" else 0.28
    t_amp = np.full((8, 1), 0.3)
    if label == "ARVC":
        t_amp[2:5] = -0.25
    x = np.zeros((8, t.size))
    for r in np.arange(rng.uniform(0.2, 0.6), seconds - 0.2, rr):
        x += _gauss(t, r, 0.01, 1.0) + _gauss(t, r + 0.025, 0.008, -0.2) + t_amp * _gauss(t, r + t_peak, 0.04, 1.0)
    return x + rng.normal(0, 0.03, x.shape)


@pytest.fixture(autouse=True)
def one_thread():
    # The build machines share 2 cores among many jobs; torch's default of one thread per
    # core makes tiny convolutions contend (and `lasan evaluate` sets threads from the checkpoint).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    rng = np.random.default_rng(0)
    rows = []
    for p in range(30):
        label = CLASSES[p % 3]
        for k in range(2):
            record = ECGRecord(tiny_ecg(rng, label).astype(np.float32), FS, MODEL_LEADS, Acquisition("synthetic"))
            rel = f"ecg/p{p:03d}_{k}"
            write_ecg(record, root / rel, "wfdb")
            rows.append(
                {"patient_id": f"P{p:03d}", "path": rel + ".hea", "label": label, "site": "A", "sex": "F", "age": 40}
            )
    with open(root / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root / "manifest.csv"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(LASANConfig(**TINY))
    info = CheckpointInfo(
        thresholds={"screening": {"ARVC": 0.2, "LQTS": 0.2}, "confirmation": {"ARVC": 0.6, "LQTS": 0.6}},
        data_summary={"synthetic": True},
        training={
            "data": {"split_seed": 3},
            "training": {"epochs": 2, "batch_size": 8, "num_threads": 1, "augment": True},
        },
    )
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "model.pt", model, info)


def _arrays(rng, n_patients, per_patient=2):
    xs, ys, pids = [], [], []
    for p in range(n_patients):
        for _ in range(per_patient):
            sig = tiny_ecg(rng, CLASSES[p % 3])
            xs.append(preprocess_array(sig, FS, MODEL_LEADS))
            ys.append(p % 3)
            pids.append(f"P{p}")
    return ECGArrays(np.stack(xs), np.array(ys), tuple(pids), CLASSES)


@pytest.mark.slow  # trains the plain-CNN baseline
def test_evaluate_reports_model_and_baselines_side_by_side(checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    data = EvaluationData(_arrays(rng, 9), "test", "in-memory", train=_arrays(rng, 15), val=_arrays(rng, 6))
    report = evaluate(load_checkpoint(checkpoint), data, n_boot=20, seed=0)
    assert list(report["models"]) == [MODEL_NAME, LOGISTIC_NAME, CNN_NAME]
    for block in report["models"].values():
        m = block["metrics"]["macro_auroc"]
        assert m["low"] <= m["estimate"] <= m["high"]
        assert np.array(block["confusion_matrix"]).sum() == 18
    # T inversion in V1-V3 and a late T are what the clinical features measure: near-perfect baseline.
    assert report["models"][LOGISTIC_NAME]["metrics"]["macro_auroc"]["estimate"] > 0.9
    assert set(report["operating_points"]["test"]["screening"]) == {"ARVC", "LQTS"}
    assert report["operating_points"]["thresholds"]["screening"]["ARVC"] == 0.2
    assert {"V1-V3", "V1-V2", "lateral (I, V5, V6)", "limb (I, II)", "precordial (V1-V6)", "V1", "none"} <= set(
        report["lead_masking"]
    )
    assert set(report["attention_importance"]) == set(CLASSES)
    ci = report["masking_finding"]["drop_difference_ci"]
    assert ci["low"] <= ci["estimate"] <= ci["high"]
    assert {"model_and_bootstrap", "clinical_baseline", "cnn_baseline", "lead_masking"} <= set(report["timings_s"])
    assert set(report["macro_auroc_differences"]) == {f"{MODEL_NAME} - {LOGISTIC_NAME}", f"{MODEL_NAME} - {CNN_NAME}"}
    out = write_report(report, tmp_path / "r")
    assert json.loads((out / "report.json").read_text())["synthetic"] is True


@pytest.mark.slow  # reads WFDB files, trains the plain-CNN baseline
def test_lasan_evaluate_cli_writes_the_report_folder(cohort, checkpoint, tmp_path):
    out = tmp_path / "report"
    argv = ["evaluate", str(checkpoint), "--data", str(cohort), "--out", str(out), "--bootstrap", "25"]
    rc = main([*argv, "--normals", "4", "--gallery", "3"])
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    for key in (
        "schema",
        "caveat",
        "checkpoint",
        "data",
        "bootstrap",
        "classes",
        "models",
        "baselines",
        "operating_points",
        "lead_masking",
        "masking_finding",
        "attention_importance",
        "attention_vs_masking",
        "plots",
    ):
        assert key in report, key
    assert report["data"]["split"] == "test"
    assert 0 < report["data"]["n_ecgs"] < 60  # only the held-out patients
    assert report["bootstrap"] == {"n": 25, "seed": 0, "level": 0.95, "unit": "patient"}
    assert set(report["models"]) == {MODEL_NAME, LOGISTIC_NAME, CNN_NAME}
    lasan = report["models"][MODEL_NAME]
    assert {
        "macro_auroc",
        "auroc_ARVC",
        "auroc_LQTS",
        "auroc_control",
        "auroc_ARVC_vs_control",
        "auroc_LQTS_vs_control",
    } <= set(lasan["metrics"])
    assert set(lasan) >= {"confusion_matrix", "ece", "reliability", "roc"}
    for png in ("roc_curves.png", "reliability.png", "lead_masking.png", "attention_importance.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "LASAN vs baselines" in md and "not clinical evidence" in md and "V1–V3" in md
    assert "plain CNN" in md and "clinical features + LR" in md


def test_lasan_evaluate_all_rows_without_baselines(cohort, checkpoint, tmp_path):
    out = tmp_path / "ext"
    rc = main(
        [
            "evaluate",
            str(checkpoint),
            "--data",
            str(cohort),
            "--split",
            "all",
            "--out",
            str(out),
            "--bootstrap",
            "5",
            "--no-baselines",
            "--normals",
            "0",
        ]
    )
    assert rc == 0
    report = json.loads((out / "report.json").read_text())
    assert report["data"]["n_ecgs"] == 60 and report["data"]["n_patients"] == 30
    assert list(report["models"]) == [MODEL_NAME]


def test_evaluate_missing_checkpoint_is_a_clear_error(cohort, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.pt"), "--data", str(cohort)]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_a_hybrid_checkpoint_evaluates_with_full_forward_masking(cohort, tmp_path):
    torch.manual_seed(0)
    cfg = HybridConfig(
        lasan=LASANConfig(**TINY),
        encoder=EncoderSpec(kind="builtin", options={"width": 4, "depth": 2, "out_dim": 8}),
        fusion_dim=8,
    )
    ckpt = save_checkpoint(tmp_path / "hybrid.pt", build_model(cfg), CheckpointInfo(data_summary={"synthetic": True}))
    out = tmp_path / "hybrid_report"
    argv = ["evaluate", str(ckpt), "--data", str(cohort), "--split", "all", "--out", str(out), "--bootstrap", "5"]
    argv += ["--normals", "0"]
    assert main([*argv, "--no-baselines"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["checkpoint"]["model_kind"] == "hybrid"
    assert report["lead_masking"]["V1-V3"]["leads"] == ["V1", "V2", "V3"]
    assert set(report["attention_importance"]) == set(CLASSES)


def test_paired_difference_ci_is_zero_for_identical_models_and_positive_for_a_better_one():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20)
    groups = np.repeat(np.arange(30), 2)
    perfect = np.eye(3)[y] * 0.9 + 0.1 / 3
    noise = rng.dirichlet(np.ones(3), size=60)
    diffs = paired_differences("A", {"A": perfect, "B": perfect, "C": noise}, y, groups, CLASSES, 200, 0)
    assert diffs["A - B"]["low"] == diffs["A - B"]["high"] == 0.0
    assert diffs["A - C"]["low"] > 0.2


def test_masking_finding_needs_both_diseases():
    entry = {"V1-V3": {"delta": {"ARVC": -0.2, "LQTS": -0.05, "control": 0.0}}}
    assert masking_finding(entry)["arvc_drop_exceeds_lqts"] is True
    entry["V1-V3"]["delta"]["LQTS"] = float("nan")
    assert masking_finding(entry) == {"group": "V1-V3", "available": False}


def test_the_test_split_is_the_training_split_for_the_checkpoint_seed(cohort, tmp_path):
    rows = read_manifest(cohort)
    spec = LASANConfig(**TINY).input
    data = load_evaluation_data(cohort, "test", spec, CLASSES, 3, tmp_path / "cache", cohort)
    expected = patient_split(rows, seed=3)
    assert set(data.test.patient_ids) == {r.patient_id for r in expected.test}
    assert set(data.train.patient_ids) == {r.patient_id for r in expected.train}
    assert not set(data.test.patient_ids) & set(data.train.patient_ids)
    assert len(data.test) == len(expected.test)
