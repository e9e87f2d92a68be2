"""Self-describing checkpoints: weights plus everything needed to rebuild and serve the model.

One ``.pt`` file holds a plain dict (nanoGPT style, loadable with ``weights_only=True``):

    format, format_version   "lasan-checkpoint", 1
    model_config             LASANConfig / HybridConfig ``to_dict()`` (includes the InputSpec:
                             lead order, rate, window, filters, normalisation)
    classes                  class names in logit order
    state_dict               model weights
    assets                   bytes the model needs beyond weights (e.g. a TorchScript encoder)
    thresholds               {"screening": {class: p}, "confirmation": {class: p}} chosen on validation,
                             on calibrated probabilities
    calibration              {"method": "temperature", "temperature": T, "fitted_on": "val", ...}
                             (or "vector" with per-class "scale"/"bias"); absent in older
                             checkpoints, which then serve uncalibrated (T = 1)
    metrics                  validation / test numbers
    data_summary             cohort description; ``synthetic: true`` for the synthetic cohort
    training                 the training configuration used
    code_version, created_at
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__
from .errors import CheckpointError, ConfigError
from .models import ServedLASAN, build_model, model_config_from_dict
from .models.config import HybridConfig, LASANConfig

__all__ = ["CheckpointInfo", "LoadedCheckpoint", "save_checkpoint", "load_checkpoint", "file_sha256"]

FORMAT = "lasan-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointInfo:
    """Everything in a checkpoint except the weights."""

    thresholds: dict[str, dict[str, float]] = field(default_factory=dict)
    # {"method": "temperature", "temperature": T, "fitted_on": "val", "nll_before": .., "nll_after": ..}
    calibration: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    data_summary: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    code_version: str = __version__
    created_at: str = ""

    @property
    def synthetic(self) -> bool:
        return bool(self.data_summary.get("synthetic", False))

    @property
    def temperature(self) -> float:
        """The calibration temperature (1.0 when the checkpoint has none, nan for vector scaling)."""
        if not self.calibration:
            return 1.0
        if self.calibration.get("method") == "temperature":
            return float(self.calibration["temperature"])
        return float("nan")


@dataclass(frozen=True)
class LoadedCheckpoint:
    model: nn.Module  # in eval mode, on CPU
    config: LASANConfig | HybridConfig
    info: CheckpointInfo
    sha256: str
    path: Path

    def served_model(self) -> ServedLASAN:
        """The model as served: stored calibration (T = 1 when there is none) and occlusion importance.

        Raises:
            CheckpointError: the stored calibration is not one this LASAN understands.
        """
        try:
            return ServedLASAN(self.model, calibration=self.info.calibration or None)
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{self.path}: unusable calibration {self.info.calibration!r}: {exc}") from exc


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    info: CheckpointInfo = CheckpointInfo(),
    assets: dict[str, bytes] | None = None,
) -> Path:
    """Write ``model`` (LASAN or hybrid) and ``info`` to ``path`` atomically."""
    cfg = getattr(model, "config", None)
    if not isinstance(cfg, (LASANConfig, HybridConfig)):
        raise CheckpointError("only LASAN and hybrid models (with a .config) can be checkpointed")
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_config": cfg.to_dict(),
        "classes": list(cfg.classes),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "assets": dict(assets or {}),
        "thresholds": info.thresholds,
        "calibration": info.calibration,
        "metrics": info.metrics,
        "data_summary": info.data_summary,
        "training": info.training,
        "code_version": info.code_version,
        "created_at": info.created_at or datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(path: str | Path) -> LoadedCheckpoint:
    """Rebuild the model from a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: the file is missing, not a LASAN checkpoint, or does not match its config.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    data = path.read_bytes()
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a LASAN checkpoint (no '{FORMAT}' marker)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format {payload.get('format_version')}; this LASAN reads {FORMAT_VERSION}"
        )
    try:
        cfg = model_config_from_dict(payload["model_config"])
        model = build_model(cfg, payload.get("assets") or {})
        model.load_state_dict(payload["state_dict"])
    except (ConfigError, RuntimeError, KeyError) as exc:
        raise CheckpointError(f"{path} does not match its own model config: {exc}") from exc
    model.eval()
    info = CheckpointInfo(
        thresholds=payload.get("thresholds", {}),
        calibration=payload.get("calibration") or {},
        metrics=payload.get("metrics", {}),
        data_summary=payload.get("data_summary", {}),
        training=payload.get("training", {}),
        code_version=payload.get("code_version", "unknown"),
        created_at=payload.get("created_at", ""),
    )
    return LoadedCheckpoint(model, cfg, info, hashlib.sha256(data).hexdigest(), path)


def file_sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
