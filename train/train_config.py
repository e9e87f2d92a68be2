"""``lasan train`` configuration: one YAML file -> one validated, frozen :class:`TrainConfig`.

Layout (every key except ``output`` and one of ``data.manifest`` / ``data.synth`` is optional)::

    output: work/runs/demo           # run folder: checkpoint, training state, logs
    data:
      manifest: work/cohort/manifest.csv   # users' data: any format the readers know
      synth: {out: work/cohort, patients: 300, seed: 0}   # or: synthesise the cohort first
      cache_dir: work/cache          # preprocessed-array cache (default <output>/cache)
      split_seed: 0                  # patient-level 70/15/15 split
    model:                           # LASANConfig fields, or kind: hybrid with lasan/encoder/fusion_dim
      kind: lasan
    training: {epochs, batch_size, lr, encoder_lr, weight_decay, focal_gamma, focal_alpha,
               patience, seed, num_threads, augment, device,
               aggregator_entropy, lead_dropout, calibration}   # the last three: see TrainingConfig
    pretrain: {epochs, batch_size, lr, mask_ratio, n_masks}   # hybrid builtin encoders only
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from lasan.errors import ConfigError
from lasan.models.config import HybridConfig, LASANConfig, model_config_from_dict

__all__ = ["DataConfig", "TrainingConfig", "PretrainConfig", "TrainConfig", "load_train_config"]


@dataclass(frozen=True)
class DataConfig:
    manifest: str | None = None
    synth: dict[str, Any] | None = None  # {out, patients, seed}
    cache_dir: str | None = None
    split_seed: int = 0

    def __post_init__(self) -> None:
        if (self.manifest is None) == (self.synth is None):
            raise ConfigError(
                "data: give exactly one of 'manifest' (a CSV of your ECG files) or 'synth' (a synthetic cohort)"
            )
        if self.synth is not None:
            unknown = set(self.synth) - {"out", "patients", "seed"}
            if unknown:
                raise ConfigError(f"data.synth: unknown key(s) {sorted(unknown)}; known: out, patients, seed")
            if int(self.synth.get("patients", 300)) < 20:
                raise ConfigError("data.synth.patients must be at least 20 so that every split holds every class")


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    encoder_lr: float | None = None  # foundation encoder LR after unfreezing (lp_ft); default lr / 10
    weight_decay: float = 1e-4
    focal_gamma: float = 2.0
    # Per-class alpha weights in class order, or "balanced" (inverse training frequency, mean 1).
    focal_alpha: list[float] | str | None = "balanced"
    patience: int = 8  # epochs without a better validation macro-AUROC before stopping
    seed: int = 0
    num_threads: int | None = None  # torch CPU threads; None = torch default
    augment: bool = True
    device: str = "auto"  # auto | cpu | cuda
    # Beyond the paper (0 = the paper's plain aggregator): weight of the mean entropy of the
    # lead-aggregator softmax, normalised to [0, 1] by log(leads), added to the focal loss.
    # It pushes the aggregator to commit to few leads instead of staying near uniform.
    aggregator_entropy: float = 0.0
    # Beyond the paper (0 = off): probability that each lead of a training ECG is zeroed
    # (all-zero model-input row = a zeroed mV lead after preprocessing; at least one lead is
    # kept). Teaches the model to tolerate a missing lead, so occlusion importance measures
    # evidence rather than out-of-distribution surprise.
    lead_dropout: float = 0.0
    # Post-hoc calibration fitted on validation: temperature | vector | auto | none
    # (auto = vector scaling only where it clearly beats temperature; lasan.train.calibration).
    calibration: str = "temperature"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"training.{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.lr <= 0 or (self.encoder_lr is not None and self.encoder_lr <= 0):
            raise ConfigError("training.lr and training.encoder_lr must be positive")
        if self.focal_gamma < 0:
            raise ConfigError("training.focal_gamma must be >= 0")
        if isinstance(self.focal_alpha, str) and self.focal_alpha != "balanced":
            raise ConfigError("training.focal_alpha must be 'balanced', a list of per-class weights, or null")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"training.device must be auto, cpu or cuda, got {self.device!r}")
        if self.aggregator_entropy < 0:
            raise ConfigError("training.aggregator_entropy must be >= 0 (0 = the paper's aggregator)")
        if not 0.0 <= self.lead_dropout < 1.0:
            raise ConfigError("training.lead_dropout must be in [0, 1) (the probability of zeroing each lead)")
        if self.calibration not in ("temperature", "vector", "auto", "none"):
            raise ConfigError(
                f"training.calibration must be temperature, vector, auto or none, got {self.calibration!r}"
            )


@dataclass(frozen=True)
class PretrainConfig:
    """Self-supervised masked-segment reconstruction for a builtin hybrid encoder."""

    epochs: int = 3
    batch_size: int = 32
    lr: float = 1e-3
    mask_ratio: float = 0.3  # fraction of the window hidden, in n_masks segments
    n_masks: int = 6

    def __post_init__(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0:
            raise ConfigError("pretrain: epochs >= 0, batch_size >= 1 and lr > 0 are required")
        if not 0.0 < self.mask_ratio < 1.0 or self.n_masks < 1:
            raise ConfigError("pretrain.mask_ratio must be in (0, 1) and pretrain.n_masks >= 1")


@dataclass(frozen=True)
class TrainConfig:
    output: str
    data: DataConfig
    model: LASANConfig | HybridConfig
    training: TrainingConfig = field(default_factory=TrainingConfig)
    pretrain: PretrainConfig | None = None

    def __post_init__(self) -> None:
        if self.pretrain is not None:
            if not isinstance(self.model, HybridConfig) or self.model.encoder.kind != "builtin":
                raise ConfigError(
                    "pretrain: only a hybrid model with a builtin encoder can be pretrained by lasan train"
                )

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else Path(self.output) / "cache"

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "data": asdict(self.data),
            "model": self.model.to_dict(),
            "training": asdict(self.training),
            "pretrain": asdict(self.pretrain) if self.pretrain else None,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TrainConfig:
        """Raises: ConfigError for unknown keys, missing sections or invalid values."""
        if not isinstance(raw, dict):
            raise ConfigError("a training config must be a YAML mapping with output, data, model, training")
        _known(raw, {"output", "data", "model", "training", "pretrain"}, "top level")
        if "output" not in raw or "data" not in raw:
            raise ConfigError("a training config needs 'output' (run folder) and 'data' (manifest or synth)")
        try:
            data = DataConfig(**_section(raw, "data", DataConfig))
            model_raw = raw.get("model") or {}
            if not isinstance(model_raw, dict):
                raise ConfigError("model: must be a mapping (LASANConfig fields, or kind: hybrid)")
            model = model_config_from_dict(model_raw)
            training = TrainingConfig(**_section(raw, "training", TrainingConfig))
            pretrain = PretrainConfig(**_section(raw, "pretrain", PretrainConfig)) if raw.get("pretrain") else None
        except TypeError as exc:  # wrong value types reaching dataclass constructors
            raise ConfigError(f"invalid training config: {exc}") from exc
        return cls(output=str(raw["output"]), data=data, model=model, training=training, pretrain=pretrain)


def _known(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(allowed)}")


def _section(raw: dict[str, Any], name: str, cls: type) -> dict[str, Any]:
    section = raw.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{name}: must be a mapping")
    _known(section, {f.name for f in fields(cls)}, name)
    return dict(section)



def read_yaml(path: Path, what: str) -> Any:
    """The parsed YAML of ``path``; ``what`` names the file in errors ("training config").

    Raises:
        ConfigError: the file cannot be read or is not YAML.
    """
    try:
        return yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc

def load_train_config(path: str | Path) -> TrainConfig:
    """Read and validate a YAML training config.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid.
    """
    path = Path(path)
    raw = read_yaml(path, "training config")
    try:
        return TrainConfig.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
