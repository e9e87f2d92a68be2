"""Patient-level split: no leakage, stratified, 70/15/15, deterministic, works on users' manifests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lasan.errors import ConfigError
from lasan.train.manifest import ManifestRow, read_manifest, write_manifest
from lasan.train.split import (
    ALL_SPLIT_NAMES,
    SPLIT_NAMES,
    Split,
    check_no_leakage,
    patient_split,
    split_from_column,
)


def _rows(counts: dict[str, int], seed: int = 0) -> list[ManifestRow]:
    rng = np.random.default_rng(seed)
    rows = []
    for label, n in counts.items():
        for p in range(n):
            pid = f"{label}-{p:03d}"
            for k in range(int(rng.integers(1, 5))):
                rows.append(ManifestRow(pid, Path(f"/data/{pid}_{k}.dcm"), label, ecg_id=f"{pid}_{k}"))
    return rows


COUNTS = {"ARVC": 71, "LQTS": 68, "control": 61}


def test_no_patient_is_in_two_splits_and_every_ecg_is_kept() -> None:
    rows = _rows(COUNTS)
    split = patient_split(rows, seed=3)
    where: dict[str, set[str]] = {}
    for name in SPLIT_NAMES:
        for row in split.rows(name):
            where.setdefault(row.patient_id, set()).add(name)
        assert set(split.patients(name)) == {r.patient_id for r in split.rows(name)}
    assert all(len(v) == 1 for v in where.values())
    assert sorted(r.ecg_id for n in SPLIT_NAMES for r in split.rows(n)) == sorted(r.ecg_id for r in rows)


def test_split_is_70_15_15_on_patients_overall_and_within_each_label() -> None:
    split = patient_split(_rows(COUNTS), seed=0)
    total = sum(COUNTS.values())
    for name, fraction in zip(SPLIT_NAMES, (0.70, 0.15, 0.15), strict=True):
        assert abs(len(split.patients(name)) - fraction * total) <= 1
        per_label = split.summary()[name]["patients_per_label"]
        for label, n in COUNTS.items():
            assert abs(per_label[label] - fraction * n) < 1 + 1e-9


def test_split_is_deterministic_by_seed_and_ignores_row_order() -> None:
    rows = _rows(COUNTS)
    a = patient_split(rows, seed=5)
    shuffled = [rows[i] for i in np.random.default_rng(1).permutation(len(rows))]
    b = patient_split(shuffled, seed=5)
    assert (a.train_patients, a.val_patients, a.test_patients) == (b.train_patients, b.val_patients, b.test_patients)
    c = patient_split(rows, seed=6)
    assert c.test_patients != a.test_patients


def test_tiny_cohorts_fill_train_first_and_bad_fractions_are_refused() -> None:
    split = patient_split(_rows({"ARVC": 1, "LQTS": 2, "control": 3}), seed=0)
    assert split.summary()["train"]["patients_per_label"]["ARVC"] == 1
    with pytest.raises(ConfigError, match="fractions"):
        patient_split(_rows(COUNTS), fractions=(0.8, 0.15, 0.15))
    with pytest.raises(ConfigError, match="empty"):
        patient_split([])


def test_a_patient_with_two_labels_is_refused() -> None:
    rows = [ManifestRow("p1", Path("/a.dcm"), "ARVC"), ManifestRow("p1", Path("/b.dcm"), "LQTS")]
    with pytest.raises(ConfigError, match="labelled both"):
        patient_split(rows)


def test_leakage_check_raises_on_a_patient_in_two_splits() -> None:
    r1, r2 = ManifestRow("p1", Path("/a.dcm"), "ARVC"), ManifestRow("p1", Path("/b.dcm"), "ARVC")
    bad = Split(train=(r1,), val=(r2,), test=(), train_patients=("p1",), val_patients=("p1",), test_patients=())
    with pytest.raises(ConfigError, match="leakage"):
        check_no_leakage(bad)


def test_user_split_column_is_honoured_and_checked(tmp_path: Path) -> None:
    for name in ("a", "b", "c", "d"):
        (tmp_path / f"{name}.dcm").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(
        "patient_id,path,label,split\np1,a.dcm,ARVC,train\np1,b.dcm,ARVC,train\np2,c.dcm,LQTS,Validation\n"
        "p3,d.dcm,control,test\n"
    )
    split = split_from_column(read_manifest(tmp_path / "m.csv"))
    assert (split.train_patients, split.val_patients, split.test_patients) == (("p1",), ("p2",), ("p3",))
    (tmp_path / "m.csv").write_text("patient_id,path,label,split\np1,a.dcm,ARVC,train\np1,b.dcm,ARVC,test\n")
    with pytest.raises(ConfigError, match="both train and test"):
        split_from_column(read_manifest(tmp_path / "m.csv"))


def test_split_of_a_manifest_read_from_disk(tmp_path: Path) -> None:
    rows = _rows({"ARVC": 10, "LQTS": 10, "control": 10})
    manifest = write_manifest(rows, tmp_path / "manifest.csv")
    split = patient_split(read_manifest(manifest, check_files=False), seed=0)
    assert sum(len(split.patients(n)) for n in SPLIT_NAMES) == 30
    assert split.summary()["test"]["patients"] in (4, 5) and split.seed == 0  # 15 % of 30 = 4.5


def _with_external(rows: list[ManifestRow], n_external: int) -> list[ManifestRow]:
    ext = _rows({"ARVC": n_external, "LQTS": n_external, "control": n_external}, seed=9)
    return rows + [ManifestRow(f"X-{r.patient_id}", Path(f"/ext/{r.ecg_id}.dcm"), r.label, ecg_id=f"X-{r.ecg_id}",
                               holdout="external") for r in ext]


def test_external_patients_never_enter_train_val_or_test() -> None:
    rows = _rows(COUNTS)
    mixed = _with_external(rows, 12)
    split = patient_split(mixed, seed=4)
    external_ids = {r.patient_id for r in mixed if r.external}
    assert set(split.external_patients) == external_ids and all(r.external for r in split.rows("external"))
    for name in SPLIT_NAMES:
        assert not external_ids & set(split.patients(name))
        assert not any(r.external for r in split.rows(name))
    assert sorted(r.ecg_id for n in ALL_SPLIT_NAMES for r in split.rows(n)) == sorted(r.ecg_id for r in mixed)
    # Adding an external site changes nothing in the internal split.
    plain = patient_split(rows, seed=4)
    assert (split.train_patients, split.val_patients, split.test_patients) == (
        plain.train_patients, plain.val_patients, plain.test_patients)
    assert plain.external == () and split.summary()["external"]["patients"] == 36
    with pytest.raises(ConfigError, match="nothing is left"):
        patient_split([r for r in mixed if r.external])


def test_leakage_check_refuses_an_external_ecg_in_training() -> None:
    r = ManifestRow("x1", Path("/a.dcm"), "ARVC", holdout="external")
    bad = Split(train=(r,), val=(), test=(), train_patients=("x1",), val_patients=(), test_patients=())
    with pytest.raises(ConfigError, match="holdout=external"):
        check_no_leakage(bad)


def test_external_in_a_user_split_column(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        (tmp_path / f"{name}.dcm").write_bytes(b"x")
    (tmp_path / "m.csv").write_text(
        "patient_id,path,label,split,holdout\np1,a.dcm,ARVC,train,\np2,b.dcm,LQTS,train,external\n"
        "p3,c.dcm,control,external,\n"
    )
    split = split_from_column(read_manifest(tmp_path / "m.csv"))
    assert split.train_patients == ("p1",) and split.external_patients == ("p2", "p3")
    with pytest.raises(ConfigError, match="unknown split"):
        split.rows("holdout")
