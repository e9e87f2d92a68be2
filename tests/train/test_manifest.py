"""Manifest CSV: round trip, users' minimal manifests, and clear errors for bad ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from lasan.errors import ConfigError
from lasan.train.manifest import ManifestRow, read_manifest, write_manifest


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def _csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_every_field_and_writes_relative_paths(tmp_path: Path) -> None:
    rows = [
        ManifestRow("P1", _touch(tmp_path / "ecgs" / "a.dcm"), "ARVC", ecg_id="P1_1", format="dicom",
                    site="site-A", sex="M", age=41.0, extra=(("qtc_ms", "402.5"), ("genotype", "PKP2"))),
        ManifestRow("P1", _touch(tmp_path / "ecgs" / "b.hea"), "ARVC", ecg_id="P1_2", format="wfdb",
                    extra=(("genotype", "PKP2"), ("note", "a, b"))),
        ManifestRow("P2", _touch(tmp_path / "ecgs" / "c.hl7"), "control", ecg_id="P2_1", format="hl7-ed", age=9.5),
    ]
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    text = manifest.read_text()
    assert "ecgs/a.dcm" in text and str(tmp_path) not in text
    back = read_manifest(manifest)
    assert [r.path for r in back] == [r.path for r in rows]
    assert back[0].get("qtc_ms") == "402.5" and back[1].get("note") == "a, b"
    assert back[2].get("qtc_ms") == "" and back[2].get("missing", "default") == "default"
    assert [(r.patient_id, r.ecg_id, r.label, r.format, r.site, r.sex, r.age) for r in back] == [
        (r.patient_id, r.ecg_id, r.label, r.format, r.site, r.sex, r.age) for r in rows
    ]


def test_minimal_user_manifest_with_loose_spelling(tmp_path: Path) -> None:
    _touch(tmp_path / "data" / "rec1.hea")
    _touch(tmp_path / "data" / "x.dcm")
    manifest = _csv(tmp_path / "m.csv", """
Patient_ID,Path,Label,Sex
p1,data/rec1,arvc,female
p2,data/x.dcm,Control,m
""")
    rows = read_manifest(manifest)
    assert [r.label for r in rows] == ["ARVC", "control"]
    assert [r.sex for r in rows] == ["F", "M"]
    assert rows[0].path == (tmp_path / "data" / "rec1").resolve()  # WFDB record base path accepted
    assert rows[0].ecg_id == "data/rec1" and rows[0].format is None and rows[0].age is None


@pytest.mark.parametrize(
    "body, message",
    [
        ("patient_id,path\np1,a.dcm", "lacks column(s) label"),
        ("patient_id,path,label\np1,a.dcm,Brugada", "unknown label 'Brugada'"),
        ("patient_id,path,label\np1,missing.dcm,LQTS", "do not exist"),
        ("patient_id,path,label\np1,a.dcm,LQTS\np2,./a.dcm,LQTS", "listed twice"),
        ("patient_id,path,label\np1,a.dcm,LQTS\np1,b.dcm,ARVC", "labelled both"),
        ("patient_id,path,label\n,a.dcm,LQTS", "empty patient_id"),
        ("patient_id,path,label,age\np1,a.dcm,LQTS,forty", "not a number"),
        ("patient_id,path,label,format\np1,a.dcm,LQTS,pdf", "unknown format"),
        ("patient_id,path,label", "no rows"),
        ("patient_id,ecg_id,path,label\np1,e1,a.dcm,LQTS\np2,e1,b.dcm,LQTS", "ecg_id 'e1' is used by two rows"),
        ("patient_id,path,label,holdout\np1,a.dcm,LQTS,maybe", "holdout 'maybe' is not understood"),
        ("patient_id,path,label,holdout\np1,a.dcm,LQTS,external\np1,b.dcm,LQTS,", "with and without holdout"),
    ],
)
def test_bad_manifests_raise_clear_config_errors(tmp_path: Path, body: str, message: str) -> None:
    _touch(tmp_path / "a.dcm")
    _touch(tmp_path / "b.dcm")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(_csv(tmp_path / "m.csv", body))


def test_missing_manifest_file_says_how_to_make_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="lasan synth"):
        read_manifest(tmp_path / "nope.csv")


def test_check_files_can_be_skipped(tmp_path: Path) -> None:
    rows = read_manifest(_csv(tmp_path / "m.csv", "patient_id,path,label\np1,elsewhere/a.dcm,LQTS"), check_files=False)
    assert rows[0].path == tmp_path.resolve() / "elsewhere" / "a.dcm"


def test_holdout_external_round_trips_and_is_only_written_when_used(tmp_path: Path) -> None:
    plain = [ManifestRow("P1", _touch(tmp_path / "a.dcm"), "ARVC")]
    assert "holdout" not in write_manifest(plain, tmp_path / "plain.csv").read_text().splitlines()[0]
    rows = [*plain, ManifestRow("P9", _touch(tmp_path / "b.dcm"), "control", holdout="external", extra=(("x", "1"),))]
    back = read_manifest(write_manifest(rows, tmp_path / "m.csv"))
    assert [(r.holdout, r.external) for r in back] == [(None, False), ("external", True)]
    assert back[1].get("x") == "1" and back[1].get("holdout") is None  # a known column, not an extra
    loose = read_manifest(_csv(tmp_path / "u.csv", "patient_id,path,label,Holdout\np1,a.dcm,LQTS,External\np2,b.dcm,LQTS,none"))
    assert [r.holdout for r in loose] == ["external", None]
