"""The cohort manifest: one CSV row per ECG file, the only way train/ learns what data exists.

Required columns: ``patient_id``, ``path``, ``label``. Optional: ``ecg_id``, ``format``,
``site``, ``sex``, ``age``, ``holdout``; any other column (the synthetic cohort writes genotype, QTc,
TAD, ...) is kept verbatim in :attr:`ManifestRow.extra`. Column names are matched
case-insensitively. ``path`` is relative to the manifest's folder (or absolute); a
WFDB record may be named by its ``.hea`` file or its base path.

``holdout`` = ``external`` marks the ECGs of an external-validation site: they are never
used for training or model selection (:func:`lasan.train.split.patient_split` puts them in
``Split.external``) and are reported separately. All ECGs of a patient must agree on it.

Labels are the model's classes (:data:`lasan.models.config.CLASSES`), matched
case-insensitively, so ``arvc`` and ``Control`` are accepted.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from lasan.errors import ConfigError
from lasan.formats import FORMATS
from lasan.labels import CLASSES

__all__ = ["ManifestRow", "REQUIRED_COLUMNS", "KNOWN_COLUMNS", "HOLDOUT_EXTERNAL", "read_manifest", "write_manifest"]

REQUIRED_COLUMNS: tuple[str, ...] = ("patient_id", "path", "label")
KNOWN_COLUMNS: tuple[str, ...] = ("patient_id", "ecg_id", "path", "format", "label", "site", "sex", "age", "holdout")
HOLDOUT_EXTERNAL = "external"
_HOLDOUT = {"": None, "none": None, "no": None, "false": None, "external": HOLDOUT_EXTERNAL}
# The optional format column names any format read_ecg reads (the vendor exports and FHIR too);
# the file's content still decides how it is read.
_FORMATS = (*FORMATS, "hl7-na", "hl7-ed")
_SEX = {"m": "M", "male": "M", "f": "F", "female": "F"}
_LABELS = {c.lower(): c for c in CLASSES}


@dataclass(frozen=True)
class ManifestRow:
    """One ECG of the cohort.

    Attributes:
        patient_id: groups ECGs of one person (splits never cut a patient in two).
        path: absolute path of the ECG file (a WFDB ``.hea`` or base path, DICOM, HL7).
        label: one of :data:`lasan.models.config.CLASSES`.
        ecg_id: unique id of the ECG; defaults to the manifest-relative path.
        format: "wfdb", "dicom", "hl7", "hl7-na" or "hl7-ed"; None = detect from the file.
        site, sex ("M"/"F" or as given), age (years): optional metadata.
        holdout: ``"external"`` for an external-validation ECG (never trained or selected
            on), else None.
        extra: every other column as ``(name, text)`` pairs, in file order.
    """

    patient_id: str
    path: Path
    label: str
    ecg_id: str = ""
    format: str | None = None
    site: str | None = None
    sex: str | None = None
    age: float | None = None
    extra: tuple[tuple[str, str], ...] = ()
    holdout: str | None = None

    @property
    def external(self) -> bool:
        """True for an ECG of the external-validation site."""
        return self.holdout == HOLDOUT_EXTERNAL

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if not self.ecg_id:
            object.__setattr__(self, "ecg_id", self.path.with_suffix("").name)

    def get(self, column: str, default: str | None = None) -> str | None:
        """The value of an extra column (e.g. ``row.get("qtc_ms")``), or ``default``."""
        for key, value in self.extra:
            if key == column:
                return value
        return default


def _existing(path: Path) -> bool:
    return path.exists() or path.with_name(path.name + ".hea").exists()


def read_manifest(path: str | os.PathLike[str], *, check_files: bool = True) -> list[ManifestRow]:
    """Read and validate a manifest CSV; paths come back absolute.

    Args:
        path: the CSV file.
        check_files: also require every ECG file to exist.

    Raises:
        ConfigError: the file is missing or empty, a required column is missing, a
            row lacks a value, a label or format is unknown, an age is not a number,
            a ``holdout`` value is not ``external`` or empty, one patient carries two labels
            or is external in some rows only, two rows name the same ECG file or
            ``ecg_id``, or (with ``check_files``) an ECG file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"manifest {path} does not exist; create it with 'lasan synth' or write a CSV "
                          f"with columns {', '.join(REQUIRED_COLUMNS)}")
    base = path.resolve().parent
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames:
            raise ConfigError(f"manifest {path} is empty; it needs a header with {', '.join(REQUIRED_COLUMNS)}")
        columns = {name.strip().lower(): name for name in reader.fieldnames if name}
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ConfigError(f"manifest {path} lacks column(s) {', '.join(missing)} "
                              f"(found: {', '.join(reader.fieldnames)})")
        extra_columns = [(key, raw) for key, raw in columns.items() if key not in KNOWN_COLUMNS]
        rows = [_row(raw_row, columns, extra_columns, base, path, line) for line, raw_row in enumerate(reader, 2)]
    if not rows:
        raise ConfigError(f"manifest {path} has a header but no rows")
    _check_consistency(rows, path, check_files)
    return rows


def _row(raw: dict, columns: dict[str, str], extra: list[tuple[str, str]], base: Path, path: Path, line: int) -> ManifestRow:
    def value(key: str) -> str:
        name = columns.get(key)
        return (raw.get(name) or "").strip() if name else ""

    where = f"manifest {path} line {line}"
    for key in REQUIRED_COLUMNS:
        if not value(key):
            raise ConfigError(f"{where}: empty {key}")
    label = _LABELS.get(value("label").lower())
    if label is None:
        raise ConfigError(f"{where}: unknown label {value('label')!r}; use one of {', '.join(CLASSES)}")
    fmt = value("format").lower() or None
    if fmt is not None and fmt not in _FORMATS:
        raise ConfigError(f"{where}: unknown format {fmt!r}; use one of {', '.join(_FORMATS)} or leave it empty")
    age: float | None = None
    if value("age"):
        try:
            age = float(value("age"))
        except ValueError:
            raise ConfigError(f"{where}: age {value('age')!r} is not a number of years") from None
    holdout_text = value("holdout").lower()
    if holdout_text not in _HOLDOUT:
        raise ConfigError(f"{where}: holdout {value('holdout')!r} is not understood; write 'external' for an "
                          "external-validation ECG or leave it empty")
    ecg_path = Path(value("path"))
    ecg_path = ecg_path if ecg_path.is_absolute() else base / ecg_path
    sex = value("sex")
    return ManifestRow(
        patient_id=value("patient_id"),
        path=Path(os.path.normpath(ecg_path)),
        label=label,
        ecg_id=value("ecg_id") or Path(value("path")).with_suffix("").as_posix(),
        format=fmt,
        site=value("site") or None,
        sex=_SEX.get(sex.lower(), sex) or None,
        age=age,
        extra=tuple((key, (raw.get(name) or "").strip()) for key, name in extra),
        holdout=_HOLDOUT[holdout_text],
    )


def _check_consistency(rows: list[ManifestRow], path: Path, check_files: bool) -> None:
    seen_paths: dict[Path, str] = {}
    seen_ids: set[str] = set()
    labels: dict[str, str] = {}
    external: dict[str, bool] = {}
    missing: list[str] = []
    for row in rows:
        key = row.path.with_suffix("") if row.path.suffix.lower() in (".hea", ".dat") else row.path
        if key in seen_paths:
            raise ConfigError(f"manifest {path}: ECG file {row.path} is listed twice "
                              f"({seen_paths[key]} and {row.ecg_id}); each ECG must appear once")
        seen_paths[key] = row.ecg_id
        if row.ecg_id in seen_ids:
            raise ConfigError(f"manifest {path}: ecg_id {row.ecg_id!r} is used by two rows")
        seen_ids.add(row.ecg_id)
        if labels.setdefault(row.patient_id, row.label) != row.label:
            raise ConfigError(f"manifest {path}: patient {row.patient_id!r} has ECGs labelled both "
                              f"{labels[row.patient_id]} and {row.label}; a patient has one diagnosis")
        if external.setdefault(row.patient_id, row.external) != row.external:
            raise ConfigError(f"manifest {path}: patient {row.patient_id!r} has ECGs with and without "
                              "holdout=external; mark all of the patient's ECGs or none, or the external "
                              "validation would share a patient with training")
        if check_files and not _existing(row.path):
            missing.append(str(row.path))
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise ConfigError(f"manifest {path}: {len(missing)} ECG file(s) do not exist: {shown}")


def write_manifest(rows: list[ManifestRow] | tuple[ManifestRow, ...], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` as CSV with paths relative to the manifest's folder; returns ``path``.

    Extra columns are written after the known ones, in the order first seen. The
    ``holdout`` column is written only when some row has a holdout, so manifests without
    an external site look as they always did.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    extra_keys: list[str] = []
    for row in rows:
        for key, _ in row.extra:
            if key not in extra_keys:
                extra_keys.append(key)
    known_columns = [c for c in KNOWN_COLUMNS if c != "holdout" or any(r.holdout for r in rows)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*known_columns, *extra_keys])
        for row in rows:
            rel = Path(os.path.relpath(Path(row.path).resolve(), base)).as_posix()
            age = "" if row.age is None else f"{row.age:g}"
            known = [row.patient_id, row.ecg_id, rel, row.format or "", row.label, row.site or "", row.sex or "", age]
            if "holdout" in known_columns:
                known.append(row.holdout or "")
            extras = dict(row.extra)
            writer.writerow([*known, *(extras.get(k, "") for k in extra_keys)])
    return path
