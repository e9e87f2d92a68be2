"""``lasan experiments`` configuration: one YAML file -> one validated, frozen :class:`GridConfig`.

Layout (see ``configs/experiments.yaml``; every key except ``data`` has a default)::

    output: work/experiments         # run folder (``--out`` overrides): cohort, cache, runs, table
    data:                            # lasan.train.train_config.DataConfig, the same keys as lasan train
      synth: {patients: 300, seed: 0}    # out defaults to <output>/cohort; or  manifest: FILE.csv
      split_seed: 0                  # cache_dir defaults to <output>/cache
    bootstrap: {n: 1000, seed: 0}    # patient-bootstrap replicates for every CI
    seeds: [0]                       # training seeds; a row's probabilities are the mean over its seeds
    lasan: {...LASANConfig fields...}    # LASAN, the LASAN branch of the hybrids, the plain CNN's widths
    training: {...TrainingConfig...}     # LASAN and the plain CNN
    foundation:                      # the foundation encoder of the transfer-learning rows
      encoder: {kind: builtin, options: {...}}   # builtin = the project's self-supervised encoder
      hubert_ecg_path: null          # a LOCAL HuBERT-ECG folder adds the hubert_* rows
      lp_epochs: 3                   # lp_ft: epochs with the encoder frozen
      fusion_dim: 32                 # hybrid gate width
      training: {...}                # overrides of ``training`` for the foundation and hybrid rows
      pretrain: {...PretrainConfig...}   # self-supervised pretraining of the builtin encoder
    experiments: [lasan, plain_cnn, clinical_lr, fm_linear_probe, ...]   # default: all of EXPERIMENTS
    masking: {model: lasan, groups: ["V1-V3", ...]}   # lead groups of lasan.train.masking.LEAD_GROUPS
    label: null                      # e.g. "SMOKE RUN": a banner above the generated table
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from lasan.errors import ConfigError
from lasan.models.config import EncoderSpec, HybridConfig, LASANConfig
from lasan.train.masking import LEAD_GROUPS
from lasan.train.train_config import DataConfig, PretrainConfig, TrainConfig, TrainingConfig, read_yaml

__all__ = [
    "EXPERIMENTS",
    "STRATEGIES",
    "DEFAULT_MASKING_GROUPS",
    "GridConfig",
    "load_grid_config",
    "spec_digest",
]

STRATEGIES: tuple[str, ...] = ("linear_probe", "finetune", "lp_ft")
# Every row the grid knows, in table order. fm_* = foundation encoder + linear head alone;
# hybrid_* = foundation encoder and LASAN joined by the gate (lasan.models.HybridLASAN);
# hubert_* run only when a local HuBERT-ECG folder is configured.
EXPERIMENTS: tuple[str, ...] = (
    "lasan",
    "plain_cnn",
    "clinical_lr",
    *(f"fm_{s}" for s in STRATEGIES),
    *(f"hybrid_{s}" for s in STRATEGIES),
    *(f"hubert_fm_{s}" for s in STRATEGIES),
    *(f"hubert_hybrid_{s}" for s in STRATEGIES),
)
DEFAULT_MASKING_GROUPS: tuple[str, ...] = ("V1-V3", "lateral (I, V5, V6)", "limb (I, II)", "precordial (V1-V6)")
_MASKABLE = ("lasan", *(f"hybrid_{s}" for s in STRATEGIES))


@dataclass(frozen=True)
class GridConfig:
    data: DataConfig
    output: str = "work/experiments"
    bootstrap: int = 1000
    bootstrap_seed: int = 0
    # Training seeds (init, shuffling, augmentation, SSL pretraining). Every trained row is trained once
    # per seed and scored with the mean of its seeds' probabilities, so that a difference between rows
    # is less a matter of one lucky initialisation; the single-seed AUROCs are reported beside it.
    seeds: tuple[int, ...] = (0,)
    lasan: LASANConfig = field(default_factory=LASANConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)  # strategy is set per row
    hubert_ecg_path: str | None = None
    lp_epochs: int = 3
    fusion_dim: int = 32
    foundation_training: TrainingConfig = field(default_factory=TrainingConfig)
    pretrain: PretrainConfig | None = field(default_factory=PretrainConfig)
    experiments: tuple[str, ...] = EXPERIMENTS
    masking_model: str = "lasan"
    masking_groups: tuple[str, ...] = DEFAULT_MASKING_GROUPS
    label: str | None = None  # e.g. "SMOKE RUN": shown as a banner above the table

    def __post_init__(self) -> None:
        unknown = [e for e in self.experiments if e not in EXPERIMENTS]
        if unknown:
            raise ConfigError(f"experiments: unknown name(s) {unknown}; known: {list(EXPERIMENTS)}")
        bad = [g for g in self.masking_groups if g not in LEAD_GROUPS]
        if bad:
            raise ConfigError(f"masking.groups: unknown group(s) {bad}; known: {list(LEAD_GROUPS)}")
        if self.masking_groups and self.masking_model not in self.experiments:
            raise ConfigError(f"masking.model {self.masking_model!r} must be one of the experiments that run")
        if self.masking_groups and self.masking_model not in _MASKABLE:
            raise ConfigError(f"masking.model must be one of {list(_MASKABLE)}, got {self.masking_model!r}")
        if self.bootstrap < 1:
            raise ConfigError("bootstrap.n must be at least 1")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ConfigError("seeds must be a non-empty list of distinct integers, e.g. [0, 1]")
        if self.encoder.kind != "builtin":
            raise ConfigError(
                "foundation.encoder.kind must be builtin (the project's self-supervised encoder); "
                "give a local HuBERT-ECG folder as foundation.hubert_ecg_path instead"
            )
        if self.lp_epochs < 1:
            raise ConfigError("foundation.lp_epochs must be at least 1")

    @property
    def out(self) -> Path:
        return Path(self.output)

    @property
    def cohort_dir(self) -> Path:
        synth = self.data.synth or {}
        return Path(synth["out"]) if synth.get("out") else self.out / "cohort"

    @property
    def cache_dir(self) -> Path:
        return Path(self.data.cache_dir) if self.data.cache_dir else self.out / "cache"

    def runs(self) -> tuple[str, ...]:
        """The experiments that will run: hubert_* only with a configured local folder."""
        return tuple(e for e in self.experiments if not e.startswith("hubert_") or self.hubert_ecg_path)

    def with_output(self, output: str | Path) -> GridConfig:
        return replace(self, output=str(output))

    def encoder_for(self, name: str) -> EncoderSpec:
        """The foundation encoder spec of experiment ``name`` (fm_*, hybrid_*, hubert_*)."""
        strategy_name = next((s for s in STRATEGIES if name.endswith(s)), None)
        if strategy_name is None or not ("fm_" in name or "hybrid_" in name):
            raise ConfigError(f"experiment {name!r} has no foundation encoder")
        if name.startswith("hubert_"):
            return EncoderSpec(kind="hubert_ecg", path=self.hubert_ecg_path, strategy=strategy_name,
                               lp_epochs=self.lp_epochs, options={"out_dim": self.fusion_dim})
        return replace(self.encoder, strategy=strategy_name, lp_epochs=self.lp_epochs)

    def for_seed(self, seed: int) -> GridConfig:
        """This config with training seed ``seed`` for every trained row."""
        return replace(self, training=replace(self.training, seed=seed),
                       foundation_training=replace(self.foundation_training, seed=seed))

    def train_config(self, name: str, manifest: Path, run_dir: Path | str | None = None) -> TrainConfig:
        """The ``lasan train`` config of a LASAN or hybrid row (``lasan`` / ``*hybrid_*``)."""
        data = DataConfig(manifest=str(manifest), cache_dir=str(self.cache_dir), split_seed=self.data.split_seed)
        run_dir = str(run_dir or self.out / "runs" / name)
        if name == "lasan":
            return TrainConfig(output=run_dir, data=data, model=self.lasan, training=self.training)
        if "hybrid_" not in name:
            raise ConfigError(f"experiment {name!r} is not trained by lasan train")
        spec = self.encoder_for(name)
        model = HybridConfig(lasan=self.lasan, encoder=spec, fusion_dim=self.fusion_dim)
        pretrain = self.pretrain if spec.kind == "builtin" else None
        return TrainConfig(output=run_dir, data=data, model=model, training=self.foundation_training, pretrain=pretrain)

    def to_dict(self) -> dict[str, Any]:
        return {
            "output": self.output,
            "data": asdict(self.data),
            "bootstrap": {"n": self.bootstrap, "seed": self.bootstrap_seed},
            "seeds": list(self.seeds),
            "lasan": self.lasan.to_dict(),
            "training": asdict(self.training),
            "foundation": {
                "encoder": asdict(self.encoder),
                "hubert_ecg_path": self.hubert_ecg_path,
                "lp_epochs": self.lp_epochs,
                "fusion_dim": self.fusion_dim,
                "training": asdict(self.foundation_training),
                "pretrain": asdict(self.pretrain) if self.pretrain else None,
            },
            "experiments": list(self.experiments),
            "masking": {"model": self.masking_model, "groups": list(self.masking_groups)},
            "label": self.label,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> GridConfig:
        """Raises: ConfigError for unknown keys, a missing ``data`` section or invalid values."""
        if not isinstance(raw, dict) or "data" not in raw:
            raise ConfigError("an experiments config must be a YAML mapping with at least a 'data' section")
        allowed = {"output", "data", "bootstrap", "seeds", "lasan", "training", "foundation", "experiments", "masking",
                   "label"}
        _known(raw, allowed, "")
        try:
            data_raw = _mapping(raw, "data")
            synth = dict(data_raw.get("synth") or {}) or None
            data = DataConfig(**{**data_raw, "synth": synth}) if synth is not None else DataConfig(**data_raw)
            boot = _mapping(raw, "bootstrap")
            _known(boot, {"n", "seed"}, "bootstrap")
            training = TrainingConfig(**_mapping(raw, "training"))
            found = _mapping(raw, "foundation")
            _known(found, {"encoder", "hubert_ecg_path", "lp_epochs", "fusion_dim", "training", "pretrain"}, "foundation")
            found_training = TrainingConfig(**{**asdict(training), **dict(found.get("training") or {})})
            pretrain_raw = found.get("pretrain", {})
            masking = _mapping(raw, "masking")
            _known(masking, {"model", "groups"}, "masking")
            return cls(
                data=data,
                output=str(raw.get("output", "work/experiments")),
                bootstrap=int(boot.get("n", 1000)),
                bootstrap_seed=int(boot.get("seed", 0)),
                seeds=tuple(int(v) for v in (raw.get("seeds") or (training.seed,))),
                lasan=LASANConfig.from_dict(_mapping(raw, "lasan")),
                training=training,
                encoder=EncoderSpec(**dict(found.get("encoder") or {})),
                hubert_ecg_path=found.get("hubert_ecg_path"),
                lp_epochs=int(found.get("lp_epochs", 3)),
                fusion_dim=int(found.get("fusion_dim", 32)),
                foundation_training=found_training,
                pretrain=PretrainConfig(**pretrain_raw) if pretrain_raw is not None else None,
                experiments=tuple(raw.get("experiments") or EXPERIMENTS),
                masking_model=str(masking.get("model", "lasan")),
                masking_groups=tuple(masking.get("groups", DEFAULT_MASKING_GROUPS) or ()),
                label=str(raw["label"]) if raw.get("label") else None,
            )
        except TypeError as exc:  # wrong keys or value types reaching dataclass constructors
            raise ConfigError(f"invalid experiments config: {exc}") from exc


def _known(raw: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = set(raw) - allowed
    if unknown:
        raise ConfigError(f"{where or 'top level'}: unknown key(s) {sorted(unknown)}; known: {sorted(allowed)}")


def _mapping(raw: dict[str, Any], name: str) -> dict[str, Any]:
    section = raw.get(name) or {}
    if not isinstance(section, dict):
        raise ConfigError(f"{name}: must be a mapping")
    return dict(section)


def load_grid_config(path: str | Path) -> GridConfig:
    """Read and validate an experiments YAML.

    Raises:
        ConfigError: the file is missing, not YAML, or invalid (the message names the key).
    """
    path = Path(path)
    raw = read_yaml(path, "experiments config")
    try:
        return GridConfig.from_dict(raw)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def spec_digest(value: Any) -> str:
    """A short stable hash of a JSON-able value: a cached result is reused only for the same settings."""
    text = json.dumps(value, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
