"""``lasan train --config FILE.yaml [--resume] [--device auto|cpu|cuda]``.

One run: (synthesise the cohort if the config asks) -> read the manifest -> patient-level
70/15/15 split -> preprocess and cache -> (pretrain a builtin hybrid encoder) -> train
with early stopping -> fit the calibration (temperature scaling) on validation logits ->
choose the operating points on calibrated validation probabilities -> write one
self-contained checkpoint (``<output>/checkpoint.pt``) that ``lasan build`` and
``lasan evaluate`` read. ``<output>/train_state.pt`` holds the per-epoch training state
for ``--resume``; ``<output>/history.json`` the per-epoch numbers.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from lasan.checkpoint import CheckpointInfo, save_checkpoint
from lasan.errors import ConfigError
from lasan.models import HybridConfig, build_model
from lasan.models.encoders import HUBERT_LICENSE, self_contained_spec
from lasan.train.dataset import ECGArrays, load_arrays
from lasan.train.pretrain import pretrain_encoder
from lasan.train.train_config import TrainConfig, load_train_config
from lasan.train.trainer import predict_logits, resolve_device, seed_everything, train_model

__all__ = ["configure", "run", "train_from_config", "CHECKPOINT_NAME", "STATE_NAME"]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
STATE_NAME = "train_state.pt"
DEFAULT_SYNTH_OUT = "work/cohort"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="training YAML (see configs/demo.yaml)")
    parser.add_argument("--resume", action="store_true", help="continue from <output>/train_state.pt")
    parser.add_argument(
        "--device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="overrides training.device (auto: CUDA if present)",
    )
    parser.add_argument("--output", default=None, help="overrides the config's output folder")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (logs only)")


def run(args: argparse.Namespace) -> int:
    cfg = load_train_config(args.config)
    if args.output:
        cfg = replace(cfg, output=args.output)
    path = train_from_config(cfg, resume=args.resume, device=args.device, progress=not args.no_progress)
    print(f"checkpoint written to {path}")
    return 0


def _manifest_path(cfg: TrainConfig) -> tuple[Path, bool]:
    """The manifest to train on and whether it is the synthetic cohort (synthesised here if needed)."""
    if cfg.data.manifest is not None:
        path = Path(cfg.data.manifest)
        if not path.is_file():
            raise ConfigError(f"data.manifest {path} does not exist; write one or use data.synth")
        return path, _looks_synthetic(path)
    synth = dict(cfg.data.synth or {})
    out = Path(synth.get("out", DEFAULT_SYNTH_OUT))
    manifest = out / "manifest.csv"
    if manifest.is_file():
        log.info("reusing the synthetic cohort in %s", out)
        return manifest, True
    from lasan.cli import main as lasan_main  # the same command a user runs: one definition of the cohort

    argv = [
        "synth",
        "--out",
        str(out),
        "--patients",
        str(int(synth.get("patients", 300))),
        "--seed",
        str(int(synth.get("seed", 0))),
    ]
    log.info("synthesising the cohort: lasan %s", " ".join(argv))
    if lasan_main(argv) != 0 or not manifest.is_file():
        raise ConfigError(f"lasan synth did not write {manifest}")
    return manifest, True


def _looks_synthetic(manifest: Path) -> bool:
    # `lasan synth` writes a `synthetic` column; a hospital's manifest has none (or says false).
    from lasan.train.manifest import read_manifest

    rows = list(read_manifest(manifest))
    return bool(rows) and all(str(r.get("synthetic", "") or "").lower() in ("1", "true", "yes") for r in rows)


def _split(rows: list[Any], seed: int) -> dict[str, list[Any]]:
    from lasan.train.split import patient_split  # checks that no patient is in two splits

    parts = patient_split(rows, seed=seed)
    return {name: list(getattr(parts, name)) for name in ("train", "val", "test")}


def _counts(rows: list[Any], classes: tuple[str, ...]) -> dict[str, Any]:
    labels = [str(r.label) for r in rows]
    return {
        "ecgs": len(rows),
        "patients": len({str(r.patient_id) for r in rows}),
        "per_label": {c: labels.count(c) for c in classes},
    }


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN; an undefined AUROC is reported as null
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def train_from_config(cfg: TrainConfig, resume: bool = False, device: str | None = None, progress: bool = True) -> Path:
    """Run one training as described in the module docstring; returns the checkpoint path.

    Raises:
        ConfigError: invalid data, manifest or settings.
        ECGFormatError: an ECG in the manifest cannot be read.
        CheckpointError: ``resume`` without a training state.
    """
    started = time.monotonic()
    tcfg = cfg.training
    dev = resolve_device(device or tcfg.device)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    if tcfg.num_threads:
        torch.set_num_threads(int(tcfg.num_threads))
    log.info("training on %s with %d CPU threads", dev, torch.get_num_threads())

    from lasan.train.manifest import read_manifest

    manifest, synthetic = _manifest_path(cfg)
    rows = list(read_manifest(manifest))
    classes = tuple(cfg.model.classes)
    split = _split(rows, cfg.data.split_seed)
    spec = cfg.model.input
    arrays: dict[str, ECGArrays] = {
        name: load_arrays(split[name], spec, classes, cfg.cache_dir, manifest.parent, progress=progress)
        for name in ("train", "val")
    }
    log.info("train %d ECGs, validation %d ECGs (%s)", len(arrays["train"]), len(arrays["val"]), manifest)

    seed_everything(tcfg.seed)
    model: Any = build_model(cfg.model)  # a hubert_ecg / torchscript encoder is read from its path here
    assets: dict[str, bytes] = {}
    model_cfg = cfg.model
    if isinstance(model_cfg, HybridConfig):
        stored_spec, assets = self_contained_spec(model_cfg.encoder, model.foundation)
        model_cfg = replace(model_cfg, encoder=stored_spec)
        model.config = model_cfg  # the checkpoint rebuilds from this, without the original files
        if model_cfg.encoder.kind == "hubert_ecg":
            log.warning("this model contains HuBERT-ECG weights, licensed %s", HUBERT_LICENSE)

    state_path = out / STATE_NAME
    pretrain_losses: list[float] = []
    if cfg.pretrain is not None and not (resume and state_path.is_file()):
        log.info("self-supervised pretraining of the builtin encoder on %d unlabelled ECGs", len(arrays["train"]))
        pretrain_losses = pretrain_encoder(
            model.foundation, arrays["train"].x, cfg.pretrain, seed=tcfg.seed, device=dev, progress=progress
        )

    result = train_model(
        model, arrays["train"], arrays["val"], tcfg, state_path=state_path, resume=resume, device=dev, progress=progress
    )
    model = result.model.cpu()
    from lasan.train.calibration import calibrated_probs, choose_calibration
    from lasan.train.metrics import summary_metrics
    from lasan.train.operating_points import choose_operating_points

    val_logits = predict_logits(model, arrays["val"])
    calibration: dict[str, Any] = {}
    if tcfg.calibration != "none":
        calibration = choose_calibration(val_logits, arrays["val"].y, tcfg.calibration)
        log.info(
            "calibration (%s) on %d validation ECGs: NLL %.3f -> %.3f, ECE %.3f -> %.3f%s",
            calibration["method"],
            calibration["n"],
            calibration["nll_before"],
            calibration["nll_after"],
            calibration["ece_before"],
            calibration["ece_after"],
            f", T = {calibration['temperature']:.3f}" if calibration["method"] == "temperature" else "",
        )
    val_probs = calibrated_probs(val_logits, calibration or None)  # what is served
    thresholds = choose_operating_points(val_probs, arrays["val"].y, classes)
    val_metrics = summary_metrics(arrays["val"].y, val_probs, classes)
    training = cfg.to_dict()
    training["data"]["manifest"] = str(manifest)  # resolved, so evaluate finds the same split
    training["data"]["cache_dir"] = str(cfg.cache_dir)
    training["model"] = model_cfg.to_dict()
    data_summary = {
        "synthetic": synthetic,
        "manifest": str(manifest),
        "split_seed": cfg.data.split_seed,
        "classes": list(classes),
        "splits": {name: _counts(part, classes) for name, part in split.items()},
    }
    metrics = {
        "validation": val_metrics,
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "history": result.history,
        "pretrain_loss": pretrain_losses,
        "train_seconds": round(time.monotonic() - started, 1),
        "device": str(dev),
    }
    info = CheckpointInfo(
        thresholds=thresholds,
        calibration=_finite(calibration),
        metrics=_finite(metrics),
        data_summary=data_summary,
        training=_finite(training),
    )
    path = save_checkpoint(out / CHECKPOINT_NAME, model, info, assets)
    (out / "history.json").write_text(json.dumps(_finite(metrics), indent=2))
    log.info(
        "best validation macro-AUROC %.4f at epoch %d; %.0f s in total; checkpoint %s",
        result.best_val_auroc,
        result.best_epoch,
        time.monotonic() - started,
        path,
    )
    return path
