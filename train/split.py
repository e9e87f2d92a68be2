"""Patient-level train/validation/test split, stratified by label, deterministic by seed.

Every ECG of a patient lands in the same split: a model that saw one of a patient's
ECGs in training would recognise the person, not the disease, and the test AUROC would
be inflated (the paper splits 70:15:15 by patient for this reason). The split is
checked after it is made, and a manifest that brings its own ``split`` column is
checked the same way.

ECGs whose manifest row says ``holdout=external`` (an external-validation site) are
never split: they go, whole patients at a time, to :attr:`Split.external`, which no
training, early stopping, calibration or threshold choice may read. They are reported
separately, as the paper's open question about other countries' equipment asks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from lasan.errors import ConfigError
from lasan.labels import CLASSES
from lasan.train.manifest import ManifestRow

__all__ = [
    "DEFAULT_FRACTIONS",
    "SPLIT_NAMES",
    "ALL_SPLIT_NAMES",
    "EXTERNAL",
    "Split",
    "patient_split",
    "split_from_column",
    "check_no_leakage",
]

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)
SPLIT_NAMES: tuple[str, str, str] = ("train", "val", "test")
EXTERNAL = "external"
ALL_SPLIT_NAMES: tuple[str, ...] = (*SPLIT_NAMES, EXTERNAL)


@dataclass(frozen=True)
class Split:
    """ECG rows and patient ids of each split (patient ids sorted).

    ``external`` holds the external-validation ECGs (manifest ``holdout=external``),
    empty when the manifest has none; they are in none of train/val/test.
    """

    train: tuple[ManifestRow, ...]
    val: tuple[ManifestRow, ...]
    test: tuple[ManifestRow, ...]
    train_patients: tuple[str, ...]
    val_patients: tuple[str, ...]
    test_patients: tuple[str, ...]
    seed: int | None = None  # None when the split came from a manifest column
    external: tuple[ManifestRow, ...] = ()
    external_patients: tuple[str, ...] = ()

    def rows(self, name: str) -> tuple[ManifestRow, ...]:
        """Rows of split ``name`` ("train", "val", "test" or "external"). Raises ConfigError otherwise."""
        if name not in ALL_SPLIT_NAMES:
            raise ConfigError(f"unknown split {name!r}; use one of {', '.join(ALL_SPLIT_NAMES)}")
        return getattr(self, name)

    def patients(self, name: str) -> tuple[str, ...]:
        """Patient ids of split ``name``."""
        self.rows(name)
        return getattr(self, f"{name}_patients")

    def summary(self) -> dict[str, Any]:
        """Patients and ECGs per split and label, for reports and checkpoints."""
        out: dict[str, Any] = {}
        for name in ALL_SPLIT_NAMES:
            rows = self.rows(name)
            first: dict[Any, Any] = {}
            for row in rows:
                first.setdefault(row.patient_id, row.label)
            out[name] = {
                "patients": len(self.patients(name)),
                "ecgs": len(rows),
                "patients_per_label": dict(sorted(Counter(first.values()).items())),
            }
        out["seed"] = self.seed
        return out


def _patients_by_label(rows: list[ManifestRow] | tuple[ManifestRow, ...]) -> dict[str, list[str]]:
    label_of: dict[str, str] = {}
    for row in rows:
        if label_of.setdefault(row.patient_id, row.label) != row.label:
            raise ConfigError(
                f"patient {row.patient_id!r} has ECGs labelled both {label_of[row.patient_id]} and {row.label}; "
                "a patient has one diagnosis, fix the manifest"
            )
    by_label: dict[str, list[str]] = {}
    for pid, label in sorted(label_of.items()):
        by_label.setdefault(label, []).append(pid)
    return by_label


def _allocate(sizes: dict[str, int], fractions: tuple[float, ...]) -> dict[str, list[int]]:
    """Patients per (label, split): each cell within 1 of its ideal, and the split totals
    equal the rounded global targets (largest remainders), so the split is 70/15/15 on
    patients overall and within every label."""
    total = sum(sizes.values())
    targets = [int(round(total * f)) for f in fractions[1:]]
    targets.insert(0, total - sum(targets))
    counts = {lab: [int(np.floor(n * f)) for f in fractions] for lab, n in sizes.items()}
    need_label = {lab: n - sum(counts[lab]) for lab, n in sizes.items()}
    need_split = [t - sum(counts[lab][s] for lab in sizes) for s, t in enumerate(targets)]
    remainders = sorted(
        ((n * f - np.floor(n * f), lab, s) for lab, n in sizes.items() for s, f in enumerate(fractions)),
        key=lambda item: (-item[0], item[2], item[1]),
    )
    for _, lab, s in remainders + [(0.0, lab, s) for lab in sizes for s in range(len(fractions))]:
        if need_label[lab] > 0 and need_split[s] > 0:
            counts[lab][s] += 1
            need_label[lab] -= 1
            need_split[s] -= 1
    return counts


def patient_split(
    rows: list[ManifestRow] | tuple[ManifestRow, ...],
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Split:
    """Split ``rows`` by patient into train/val/test, stratified by label.

    Rows marked ``holdout=external`` are set aside in ``Split.external`` before the
    split, so the train/val/test assignment of the other patients is the same as
    without them. The result depends only on the set of (patient, label) pairs and
    ``seed``, not on row order. A label with too few patients for every split fills
    train first.

    Raises:
        ConfigError: fractions are not three non-negative numbers summing to 1, there are
            no rows, a patient carries two labels, or (a bug) a patient ends up in two splits.
    """
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if not rows:
        raise ConfigError("cannot split an empty manifest")
    internal = [row for row in rows if not row.external]
    if not internal:
        raise ConfigError("every ECG of the manifest is marked holdout=external; nothing is left to train on")
    by_label = _patients_by_label(internal)
    counts = _allocate({lab: len(p) for lab, p in by_label.items()}, tuple(fractions))
    assignment: dict[str, str] = {}
    order = sorted(by_label, key=lambda lab: (CLASSES.index(lab) if lab in CLASSES else len(CLASSES), lab))
    for index, label in enumerate(order):
        patients = by_label[label]
        perm = np.random.default_rng([seed, index]).permutation(len(patients))
        start = 0
        for name, k in zip(SPLIT_NAMES, counts[label], strict=True):
            for i in perm[start : start + k]:
                assignment[patients[i]] = name
            start += k
    for row in rows:
        if row.external:
            assignment[row.patient_id] = EXTERNAL
    return _build(rows, assignment, seed)



def split_from_column(rows: list[ManifestRow] | tuple[ManifestRow, ...], column: str = "split") -> Split:
    """A split a user fixed in the manifest (column values train / val / test / external).

    A row marked ``holdout=external`` is external whatever its ``column`` says.

    Raises:
        ConfigError: a row lacks the column or has another value, or a patient's ECGs
            are in two splits.
    """
    assignment: dict[str, str] = {}
    for row in rows:
        value = (row.get(column) or "").strip().lower()
        value = {"validation": "val", "valid": "val"}.get(value, value)
        if row.external:
            value = EXTERNAL
        if value not in ALL_SPLIT_NAMES:
            raise ConfigError(
                f"ECG {row.ecg_id}: column {column!r} is {row.get(column)!r}; use train, val, test or external"
            )
        if assignment.setdefault(row.patient_id, value) != value:
            raise ConfigError(
                f"patient {row.patient_id!r} has ECGs in both {assignment[row.patient_id]} and {value} "
                f"(column {column!r}); all ECGs of a patient must be in one split to avoid leakage"
            )
    return _build(rows, assignment, None)


def _build(rows: list[ManifestRow] | tuple[ManifestRow, ...], assignment: dict[str, str], seed: int | None) -> Split:
    parts: dict[str, list[ManifestRow]] = {name: [] for name in ALL_SPLIT_NAMES}
    for row in rows:
        parts[assignment[row.patient_id]].append(row)
    patients = {name: tuple(sorted({r.patient_id for r in parts[name]})) for name in ALL_SPLIT_NAMES}
    split = Split(
        train=tuple(parts["train"]), val=tuple(parts["val"]), test=tuple(parts["test"]),
        train_patients=patients["train"], val_patients=patients["val"], test_patients=patients["test"],
        seed=seed, external=tuple(parts[EXTERNAL]), external_patients=patients[EXTERNAL],
    )
    check_no_leakage(split)
    return split


def check_no_leakage(split: Split) -> None:
    """Raise unless every patient is in exactly one split (external included; checked on
    rows, not just ids) and no external-validation ECG is in train/val/test.

    Raises:
        ConfigError: a patient id appears in two splits, or a ``holdout=external`` row is
            outside ``Split.external``.
    """
    for name in SPLIT_NAMES:
        for row in split.rows(name):
            if row.external:
                raise ConfigError(
                    f"data leakage: ECG {row.ecg_id} is marked holdout=external but is in the {name} split; "
                    "external-validation ECGs must never be used for training or model selection"
                )
    seen: dict[str, str] = {}
    for name in ALL_SPLIT_NAMES:
        for pid in {row.patient_id for row in split.rows(name)} | set(split.patients(name)):
            if seen.setdefault(pid, name) != name:
                raise ConfigError(
                    f"data leakage: patient {pid!r} is in both the {seen[pid]} and {name} splits; "
                    "all ECGs of a patient must be in one split"
                )
