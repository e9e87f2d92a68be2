"""The demo's showcase draw and score table: random test ECGs, file names, truth beside prediction."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from lasan.demo import ShowcaseECG, headline, score_table, showcase_ecgs
from lasan.train.manifest import read_manifest
from lasan.train.split import patient_split

CLASSES = ("ARVC", "LQTS", "control")


@pytest.fixture()
def manifest(tmp_path) -> Path:
    rows = []
    deep = tmp_path / "a" / "very" / "long" / "folder" / "that" / "nobody" / "wants" / "to" / "read"
    deep.mkdir(parents=True)
    for p in range(60):
        for k in range(2):
            path = deep / f"SYN{p:05d}_{k + 1}.hea"
            path.write_text("")
            rows.append({"patient_id": f"SYN{p:05d}", "path": str(path), "label": CLASSES[p % 3]})
    with open(tmp_path / "manifest.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return tmp_path / "manifest.csv"


def test_showcase_is_a_seeded_random_draw_per_class_from_the_test_split(manifest):
    items = showcase_ecgs(manifest, split_seed=0, per_class=2, seed=0)
    assert items[0].true_label is None and Path(items[0].path).name == "waveform_ecg.dcm"
    synthetic = items[1:]
    assert sorted(i.true_label for i in synthetic) == sorted(CLASSES * 2)
    test_paths = {str(r.path) for r in patient_split(read_manifest(manifest), seed=0).test}
    assert {i.path for i in synthetic} <= test_paths  # never a training ECG
    assert showcase_ecgs(manifest, 0, 2, seed=0) == items  # seeded
    draws = {tuple(i.path for i in showcase_ecgs(manifest, 0, 2, seed=s)[1:]) for s in range(6)}
    assert len(draws) > 1  # random: not simply the first ECGs of each class
    first_per_class = []
    for label in sorted(CLASSES):
        first_per_class += [
            str(r.path) for r in patient_split(read_manifest(manifest), seed=0).test if r.label == label
        ][:2]
    assert any(d != tuple(first_per_class) for d in draws)


def _score(path: str, predicted: str) -> dict:
    probs = {c: (0.8 if c == predicted else 0.1) for c in CLASSES}
    return {
        "file": path,
        "predicted_class": predicted,
        "probabilities": probs,
        "screening": {"ARVC": predicted == "ARVC", "LQTS": predicted == "LQTS"},
        "lead_importance": {"I": 0.1, "II": 0.1, "V1": 0.4, "V2": 0.2, "V3": 0.05, "V4": 0.05, "V5": 0.05, "V6": 0.05},
    }


def test_score_table_shows_file_names_and_the_true_label_beside_the_prediction():
    long = "/a/very/long/folder/that/nobody/wants/to/read/cohort/wfdb"
    items = [
        ShowcaseECG("/site-packages/pydicom/data/waveform_ecg.dcm", "real ECG"),
        ShowcaseECG(f"{long}/SYN00001_1.hea", "synthetic", "ARVC"),
        ShowcaseECG(f"{long}/SYN00002_1.hea", "synthetic", "LQTS"),
    ]
    scores = [_score(items[0].path, "control"), _score(items[1].path, "ARVC"), _score(items[2].path, "control")]
    table = score_table(items, scores)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["file", "true", "predicted"]
    assert "/" not in table.split("synthetic test ECGs")[0]  # file names, not paths
    assert lines[1].split()[:3] == ["waveform_ecg.dcm", "unknown", "control"]
    assert lines[2].split()[:4] == ["SYN00001_1.hea", "ARVC", "ARVC", "ok"]
    assert lines[3].split()[:4] == ["SYN00002_1.hea", "LQTS", "control", "WRONG"]
    assert "V1(0.40)" in lines[2]
    assert lines[-1].startswith("1 of 2 synthetic test ECGs")


def test_headline_reports_auroc_and_ece_before_and_after(tmp_path):
    report = {
        "data": {"n_ecgs": 120},
        "models": {"LASAN": {"metrics": {"macro_auroc": {"estimate": 0.91, "low": 0.87, "high": 0.94}}}},
        "calibration": {
            "temperature": 0.41,
            "test": {
                "before": {"estimate": 0.18, "low": 0.14, "high": 0.23},
                "after": {"estimate": 0.04, "low": 0.03, "high": 0.08},
            },
        },
    }
    (tmp_path / "report.json").write_text(json.dumps(report))
    line = headline(tmp_path / "report.json")
    assert "macro-AUROC 0.910 (0.870-0.940)" in line
    assert "ECE 0.180 before, 0.040 after calibration (T = 0.41" in line
    assert "\n" not in line
