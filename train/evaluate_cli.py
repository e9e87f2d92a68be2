"""``lasan evaluate CHECKPOINT --data MANIFEST``: the evaluation report of a checkpoint.

Evaluates on the TEST split of the manifest (the same patient-level split function and
seed as training, read from the checkpoint) or on ``--split all`` rows for an external
dataset, and writes a report folder (see :mod:`lasan.train.report`): AUROCs with
patient-bootstrap CIs, confusion matrix, calibration before/after the checkpoint's
temperature (ECE with CIs, reliability plots) on test and on the external-validation site,
the stored operating points' sensitivity/specificity with CIs on both, faithfulness of the
served lead importance to input-level occlusion (:mod:`lasan.train.faithfulness`), the
share of independent neurokit2 normal ECGs with no disease flagged
(:mod:`lasan.train.independent_normals`), lead masking vs attention importance, and two
baselines (clinical features + logistic regression, a plain channels-CNN) trained on the
train split of the same manifest (or of ``--baseline-data``).

LASAN's probabilities in the report are the served (calibrated) ones,
``LoadedCheckpoint.served_model()``; "before calibration" numbers use the same model at T = 1.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from lasan.checkpoint import LoadedCheckpoint, load_checkpoint
from lasan.errors import ConfigError
from lasan.models import LASAN
from lasan.preprocessing import InputSpec
from lasan.train.baselines import CNNTrainConfig, PlainCNN, fit_logistic, train_plain_cnn
from lasan.train.clinical_features import FEATURE_NAMES, feature_matrix
from lasan.train.dataset import ECGArrays
from lasan.train.faithfulness import (
    faithfulness_summary,
    gallery_entries,
    gallery_indices,
    input_occlusion,
    served_predict,
)
from lasan.train.independent_normals import NormalsSpec, normals_at_operating_points, simulate_normals
from lasan.train.masking import attention_importance, compare_with_attention, lead_masking, masking_contrast, predict
from lasan.train.metrics import (
    disease_classes,
    ece_noise_floor,
    ece_with_ci,
    patient_bootstrap,
    reliability_curve,
    sens_spec_at,
)
from lasan.train.operating_points import choose_operating_points, evaluate_operating_points
from lasan.train.report import (
    REAL_DATA_CAVEAT,
    SCHEMA,
    SYNTHETIC_CAVEAT,
    masking_finding,
    model_block,
    paired_differences,
    write_report,
)

if TYPE_CHECKING:
    from lasan.models.config import LASANConfig

__all__ = [
    "configure",
    "run",
    "EvaluationData",
    "TrustOptions",
    "evaluate",
    "load_evaluation_data",
    "split_seed_of",
    "calibration_block",
    "operating_points_with_ci",
]

log = logging.getLogger(__name__)

MODEL_NAME = "LASAN"
LOGISTIC_NAME = "clinical features + LR"
CNN_NAME = "plain CNN"


@dataclass(frozen=True)
class EvaluationData:
    """What one evaluation needs: the rows to evaluate and, for the baselines, train/val rows."""

    test: ECGArrays
    split: str  # "test" or "all"
    manifest: str
    train: ECGArrays | None = None  # baselines are fitted here
    val: ECGArrays | None = None  # operating points (if the checkpoint has none) and CNN early stopping
    test_rows: tuple[Any, ...] = ()  # manifest rows of ``test``, for input-level occlusion (raw mV files)
    external: ECGArrays | None = None  # the external-validation site (manifest holdout=external)


@dataclass(frozen=True)
class TrustOptions:
    """What the trust sections of the report compute (faithfulness, independent normals)."""

    faithfulness: bool = True
    gallery: int = 6  # ECGs drawn at random from the evaluated split for the gallery
    normals: NormalsSpec | None = None  # None: skip the neurokit2 check (about 1-2 s per simulated ECG)
    normals_cache: str | None = None  # folder for the simulated normals (.npz)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a .pt checkpoint written by 'lasan train'")
    parser.add_argument("--data", required=True, help="manifest CSV of ECG files (patient_id, path, label, ...)")
    parser.add_argument(
        "--split",
        choices=("test", "all"),
        default="test",
        help="'test': the held-out patients of the training split (same seed); 'all': every row (external data)",
    )
    parser.add_argument("--out", default=None, help="report folder (default: <checkpoint folder>/report)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap replicates over patients (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap and baseline seed (default 0)")
    parser.add_argument(
        "--baselines", action=argparse.BooleanOptionalAction, default=True, help="train and report the baselines"
    )
    parser.add_argument(
        "--baseline-data",
        default=None,
        help="manifest whose train split fits the baselines (default: --data for --split test, "
        "the checkpoint's training manifest for --split all)",
    )
    parser.add_argument("--cache-dir", default=None, help="preprocessed-array cache (default: the training cache)")
    parser.add_argument(
        "--faithfulness",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="measure lead importance against input-level occlusion (reads the ECG files again)",
    )
    parser.add_argument("--gallery", type=int, default=6, help="ECGs drawn at random for the importance gallery")
    parser.add_argument(
        "--normals", type=int, default=100, help="neurokit2 normal ECGs for the specificity check (0 skips it)"
    )
    parser.add_argument("--normals-seed", type=int, default=NormalsSpec.seed, help="seed of the neurokit2 normals")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads (default 1: evaluation is small work, and on a busy machine extra "
        "threads contend for cores; measured 26 s with 1 vs 293 s with 2 on the loaded 2-core build host)",
    )


def _training_value(training: dict[str, Any], *keys: str, default: Any = None) -> Any:
    """A value from the checkpoint's training config, at top level or in its data/training sections."""
    for section in (training, training.get("data") or {}, training.get("training") or {}):
        for key in keys:
            if isinstance(section, dict) and section.get(key) is not None:
                return section[key]
    return default


def split_seed_of(ckpt: LoadedCheckpoint) -> int:
    """The patient-split seed the checkpoint was trained with (its training config, else its data summary)."""
    training = ckpt.info.training
    return int(_training_value(training, "split_seed", default=ckpt.info.data_summary.get("split_seed", 0)))


def _split_rows(rows: list[Any], seed: int) -> dict[str, list[Any]]:
    """The split ``lasan train`` made: the same function, called the same way, with the checkpoint's seed."""
    from lasan.train.split import check_no_leakage, patient_split

    parts = patient_split(rows, seed=seed)
    check_no_leakage(parts)
    return {name: list(getattr(parts, name, ())) for name in ("train", "val", "test", "external")}


def load_evaluation_data(
    manifest: str | Path,
    split: str,
    spec: InputSpec,
    classes: tuple[str, ...],
    split_seed: int,
    cache_dir: str | Path | None,
    baseline_manifest: str | Path | None,
) -> EvaluationData:
    """Read and preprocess the evaluation rows (and the baselines' train/val rows).

    Raises:
        ConfigError: the manifest is invalid or the evaluated rows are empty.
        ECGFormatError: a file cannot be read.
    """
    from lasan.train.dataset import load_arrays
    from lasan.train.manifest import read_manifest

    manifest = Path(manifest)
    rows = list(read_manifest(manifest))
    base_dir = manifest.parent
    if split == "test":
        parts = _split_rows(rows, split_seed)
        test_rows = parts["test"]
    else:
        test_rows, parts = rows, {}
    if not test_rows:
        raise ConfigError(f"no ECGs to evaluate in {manifest} (split {split!r})")
    test = load_arrays(test_rows, spec, classes, cache_dir, base_dir, progress=True)
    external_rows = parts.get("external") or []
    external = load_arrays(external_rows, spec, classes, cache_dir, base_dir) if external_rows else None
    train = val = None
    if baseline_manifest is not None:
        bpath = Path(baseline_manifest)
        if bpath.resolve() != manifest.resolve() or not parts:
            parts = _split_rows(list(read_manifest(bpath)), split_seed)
        train = load_arrays(parts["train"], spec, classes, cache_dir, bpath.parent, progress=True)
        val = load_arrays(parts["val"], spec, classes, cache_dir, bpath.parent, progress=True)
    elif parts:
        val = load_arrays(parts["val"], spec, classes, cache_dir, base_dir, progress=True)
    return EvaluationData(test, split, str(manifest), train, val, tuple(test_rows), external)


def _cnn_baseline(ckpt: LoadedCheckpoint, data: EvaluationData, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    cfg = ckpt.config
    lasan_cfg = cast("LASANConfig", getattr(cfg, "lasan", cfg))  # hybrids: compare against a CNN of LASAN's own size
    training = ckpt.info.training
    train_cfg = CNNTrainConfig(
        epochs=int(_training_value(training, "epochs", default=15)),
        batch_size=int(_training_value(training, "batch_size", default=32)),
        lr=float(_training_value(training, "lr", default=1e-3)),
        gamma=float(_training_value(training, "focal_gamma", "gamma", default=2.0)),
        patience=int(_training_value(training, "patience", default=5)),
        seed=seed,
        augment=bool(_training_value(training, "augment", default=False)),
        fs=cfg.input.fs,
    )
    torch.manual_seed(seed)
    model = PlainCNN(
        len(cfg.input.leads),
        len(cfg.classes),
        lasan_cfg.cnn_channels,
        lasan_cfg.kernel_size,
        lasan_cfg.pool,
        lasan_cfg.head_hidden,
        lasan_cfg.dropout,
    )
    assert data.train is not None and data.val is not None
    history = train_plain_cnn(model, data.train.x, data.train.y, data.val.x, data.val.y, cfg.classes, train_cfg)
    probs = predict(model, data.test.x).probs
    return probs, {"architecture": "8 leads as channels, LASAN's CNN widths, no lead attention", **history}


def calibration_block(
    raw: np.ndarray, calibrated: np.ndarray, y: np.ndarray, groups: np.ndarray, n_boot: int, seed: int
) -> dict[str, Any]:
    """ECE before (T = 1) and after calibration, each with a patient-bootstrap CI, and both reliability curves."""
    return {
        "n_ecgs": int(len(y)),
        "n_patients": int(len(set(groups.tolist()))),
        "before": ece_with_ci(y, raw, groups, n_boot, seed),
        "after": ece_with_ci(y, calibrated, groups, n_boot, seed),
        "noise_floor_after": ece_noise_floor(calibrated, seed=seed),
        "reliability_before": reliability_curve(y, raw, 15),
        "reliability_after": reliability_curve(y, calibrated, 15),
    }


def operating_points_with_ci(
    thresholds: dict[str, dict[str, float]],
    probs: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    classes: tuple[str, ...],
    n_boot: int,
    seed: int,
) -> dict[str, dict[str, dict[str, Any]]]:
    """:func:`evaluate_operating_points` plus patient-bootstrap CIs of sensitivity and specificity."""
    point_estimates: dict[str, dict[str, dict[str, Any]]] = evaluate_operating_points(thresholds, probs, y, classes)
    keys = [(point, cls) for point, per_class in point_estimates.items() for cls in per_class]

    def stat(idx: np.ndarray) -> dict[str, float]:
        out = {}
        for point, cls in keys:
            k = classes.index(cls)
            v = sens_spec_at(y[idx] == k, probs[idx, k], thresholds[point][cls])
            out[f"{point}|{cls}|sensitivity"], out[f"{point}|{cls}|specificity"] = v["sensitivity"], v["specificity"]
        return out

    cis = patient_bootstrap(stat, groups, n_boot, seed) if keys else {}
    for point, cls in keys:
        for m in ("sensitivity", "specificity"):
            ci = cis[f"{point}|{cls}|{m}"]
            point_estimates[point][cls][f"{m}_ci"] = [ci.low, ci.high]
    return point_estimates


def _faithfulness(
    served: Any,
    data: EvaluationData,
    classes: tuple[str, ...],
    n_boot: int,
    seed: int,
    gallery: int,
    reference: np.ndarray,
) -> dict[str, Any]:
    from lasan.formats import read_ecg

    spec = served.config.input
    records = [read_ecg(Path(row.path)) for row in data.test_rows]
    outputs, occluded = input_occlusion(records, lambda x: served_predict(served, x), spec)
    summary = faithfulness_summary(
        outputs, occluded, data.test.y, np.asarray(data.test.patient_ids), classes, n_boot, seed
    )
    names = [Path(row.path).name for row in data.test_rows]
    entries = gallery_entries(
        gallery_indices(len(records), gallery, seed), names, data.test.y, outputs, summary, classes, spec.leads
    )
    per = summary.pop("per_ecg")
    return summary | {
        "method": "each model lead zeroed in the mV record, re-preprocessed and rescored by the served model",
        # The files re-read here must give the cached arrays' probabilities: same reader, same preprocessing.
        "max_abs_diff_vs_cached_inputs": float(np.max(np.abs(outputs.probs - reference))) if len(reference) else 0.0,
        "per_ecg": {
            "file": names,
            "spearman": per["lead_importance_spearman_predicted"],
            "max_weight": per["lead_importance_max_weight"],
        },
        "gallery": entries,
    }


def _normals(
    served: Any, thresholds: dict[str, dict[str, float]], classes: tuple[str, ...], trust: TrustOptions
) -> dict[str, Any]:
    from dataclasses import asdict

    from lasan.preprocessing import preprocess

    assert trust.normals is not None
    records = simulate_normals(trust.normals, trust.normals_cache)
    x = np.stack([preprocess(r, served.config.input) for r in records])
    out = served_predict(served, x)
    return {
        "generator": records[0].acquisition.device,
        "spec": asdict(trust.normals),
        **normals_at_operating_points(out.probs, thresholds, classes),
        "mean_max_lead_importance": float(out.importance.max(axis=1).mean()),
    }


def evaluate(
    ckpt: LoadedCheckpoint,
    data: EvaluationData,
    n_boot: int = 1000,
    seed: int = 0,
    baselines: bool = True,
    trust: TrustOptions = TrustOptions(),
) -> dict[str, Any]:
    """Compute every number of the report (see :mod:`lasan.train.report` for the layout).

    Raises:
        ConfigError: the evaluated data hold fewer than two classes (no AUROC exists).
    """
    classes = tuple(ckpt.config.classes)
    spec = ckpt.config.input
    test = data.test
    if len(np.unique(test.y)) < 2:
        raise ConfigError("the evaluated ECGs hold a single class; AUROC needs positives and negatives")
    groups = np.asarray(test.patient_ids)
    model = ckpt.model
    timings: dict[str, float] = {}
    clock = [time.monotonic()]

    def _lap() -> float:
        now = time.monotonic()
        lap, clock[0] = now - clock[0], now
        return round(lap, 2)

    preds = predict(model, test.x)  # T = 1: "before calibration"; lead_weights = the aggregator softmax
    served = ckpt.served_model()
    served_test = served_predict(served, test.x)  # what the deployment returns
    models: dict[str, Any] = {MODEL_NAME: model_block(served_test.probs, test.y, groups, classes, n_boot, seed)}
    timings["model_and_bootstrap"] = _lap()
    all_probs = {MODEL_NAME: served_test.probs}
    baseline_info: dict[str, Any] = {}
    if baselines and data.train is not None and data.val is not None and len(data.train):
        log.info("fitting the clinical-feature baseline on %d training ECGs", len(data.train))
        f_train = feature_matrix(data.train.x, spec.fs, spec.leads)
        f_test = feature_matrix(test.x, spec.fs, spec.leads)
        lr_model = fit_logistic(f_train, data.train.y, len(classes))
        all_probs[LOGISTIC_NAME] = lr_model.predict_proba(f_test)
        models[LOGISTIC_NAME] = model_block(all_probs[LOGISTIC_NAME], test.y, groups, classes, n_boot, seed)
        timings["clinical_baseline"] = _lap()
        baseline_info[LOGISTIC_NAME] = {
            "features": list(FEATURE_NAMES),
            "n_train": len(data.train),
            "unmeasurable_fraction_test": float(np.mean(~np.isfinite(f_test))),
            "coefficients": {
                name: dict(zip(classes, row.tolist(), strict=True))
                for name, row in zip(FEATURE_NAMES, lr_model.weights, strict=True)
            },
        }
        log.info("training the plain-CNN baseline")
        cnn_probs, cnn_info = _cnn_baseline(ckpt, data, seed)
        all_probs[CNN_NAME] = cnn_probs
        models[CNN_NAME] = model_block(cnn_probs, test.y, groups, classes, n_boot, seed)
        baseline_info[CNN_NAME] = cnn_info
        timings["cnn_baseline"] = _lap()
    elif baselines:
        baseline_info["skipped"] = "no training rows for the baselines (use --baseline-data with --split all)"

    thresholds = ckpt.info.thresholds or {}
    thresholds_source = "checkpoint (chosen on validation during training)"
    if not any(thresholds.get(k) for k in ("screening", "confirmation")) and data.val is not None and len(data.val):
        thresholds = choose_operating_points(served_predict(served, data.val.x).probs, data.val.y, classes)
        thresholds_source = "chosen now on calibrated validation probabilities (the checkpoint had none)"
    operating = {
        "source": thresholds_source,
        "thresholds": thresholds,
        "test": operating_points_with_ci(thresholds, served_test.probs, test.y, groups, classes, n_boot, seed),
    }
    calibration = {
        "stored": dict(ckpt.info.calibration),
        "temperature": ckpt.info.temperature,
        "test": calibration_block(preds.probs, served_test.probs, test.y, groups, n_boot, seed),
    }
    external: dict[str, Any] | None = None
    ext = data.external
    if ext is not None and len(ext):
        ext_groups = np.asarray(ext.patient_ids)
        ext_probs = served_predict(served, ext.x).probs
        calibration["external"] = calibration_block(
            predict(model, ext.x).probs, ext_probs, ext.y, ext_groups, n_boot, seed
        )
        operating["external"] = operating_points_with_ci(
            thresholds, ext_probs, ext.y, ext_groups, classes, n_boot, seed
        )
        external = {
            "n_ecgs": len(ext),
            "n_patients": len(set(ext.patient_ids)),
            "class_counts": ext.counts(),
            "metrics": model_block(ext_probs, ext.y, ext_groups, classes, n_boot, seed)["metrics"],
        }
    timings["calibration_and_operating_points"] = _lap()
    faithfulness = None
    if trust.faithfulness and data.test_rows:
        faithfulness = _faithfulness(served, data, classes, n_boot, seed, trust.gallery, served_test.probs)
        timings["faithfulness"] = _lap()
    normals = None
    if trust.normals is not None:
        normals = _normals(served, thresholds, classes, trust)
        timings["independent_normals"] = _lap()

    _lap()  # operating points are cheap; start the masking clock here
    masking = lead_masking(model, test.x, test.y, classes, spec.leads)
    timings["lead_masking"] = _lap()
    finding = masking_finding(masking)
    if finding["available"]:
        v1_v3 = tuple(spec.leads.index(lead) for lead in cast(Any, masking[finding["group"]]["leads"]))
        masked = predict(model, test.x, mask=v1_v3).probs
        finding["drop_difference_ci"] = masking_contrast(
            preds.probs, masked, test.y, groups, classes, n_boot=n_boot, seed=seed
        )
        timings["masking_ci"] = _lap()
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "synthetic": ckpt.info.synthetic,
        "caveat": SYNTHETIC_CAVEAT if ckpt.info.synthetic else REAL_DATA_CAVEAT,
        "checkpoint": {
            "path": str(ckpt.path),
            "sha256": ckpt.sha256,
            "model_kind": ckpt.config.kind,
            "code_version": ckpt.info.code_version,
            "created_at": ckpt.info.created_at,
        },
        "data": {
            "manifest": data.manifest,
            "split": data.split,
            "n_ecgs": len(test),
            "n_patients": len(set(test.patient_ids)),
            "class_counts": test.counts(),
            "baseline_train_ecgs": len(data.train) if data.train is not None else 0,
        },
        "bootstrap": {"n": n_boot, "seed": seed, "level": 0.95, "unit": "patient"},
        "classes": list(classes),
        "disease_classes": list(disease_classes(classes)),
        "models": models,
        "macro_auroc_differences": paired_differences(MODEL_NAME, all_probs, test.y, groups, classes, n_boot, seed),
        "baselines": baseline_info,
        "operating_points": operating,
        "calibration": calibration,
        "external": external,
        "faithfulness": faithfulness,
        "independent_normals": normals,
        "lead_masking": masking,
        "masking_finding": finding,
        "timings_s": timings,
    }
    if preds.lead_weights is not None:
        importance = attention_importance(preds.lead_weights, test.y, classes, spec.leads)
        report["attention_importance"] = importance
        report["attention_vs_masking"] = compare_with_attention(masking, importance, spec.leads)
    if not isinstance(model, LASAN):
        report["notes"] = ["hybrid model: lead masking zeroes the leads for both branches"]
    return report


def run(args: argparse.Namespace) -> int:
    ckpt = load_checkpoint(args.checkpoint)
    if args.bootstrap < 1:
        raise ConfigError("--bootstrap must be at least 1")
    out = Path(args.out) if args.out else ckpt.path.parent / "report"
    training = ckpt.info.training
    if args.threads < 1:
        raise ConfigError("--threads must be at least 1")
    torch.set_num_threads(args.threads)
    split_seed = split_seed_of(ckpt)
    baseline_manifest: str | None = args.baseline_data
    if args.baselines and baseline_manifest is None:
        if args.split == "test":
            baseline_manifest = args.data
        else:
            trained_on = _training_value(training, "manifest")
            if trained_on and Path(trained_on).is_file():
                baseline_manifest = str(trained_on)
            else:
                log.warning("baselines skipped: --split all needs --baseline-data (the training manifest)")
    if not args.baselines:
        baseline_manifest = None
    cache_dir = args.cache_dir or _training_value(training, "cache_dir") or (out / "cache")
    data = load_evaluation_data(
        args.data, args.split, ckpt.config.input, tuple(ckpt.config.classes), split_seed, cache_dir, baseline_manifest
    )
    trust = TrustOptions(
        faithfulness=args.faithfulness,
        gallery=args.gallery,
        normals=NormalsSpec(n=args.normals, seed=args.normals_seed) if args.normals > 0 else None,
        normals_cache=str(cache_dir),
    )
    report = evaluate(ckpt, data, n_boot=args.bootstrap, seed=args.seed, baselines=args.baselines, trust=trust)
    write_report(report, out)
    lasan_macro = report["models"][MODEL_NAME]["metrics"]["macro_auroc"]
    print(
        f"LASAN macro-AUROC {lasan_macro['estimate']:.3f} (95% CI {lasan_macro['low']:.3f}-{lasan_macro['high']:.3f})"
    )
    print(f"report written to {out / 'report.md'}")
    return 0
