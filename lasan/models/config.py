"""Model configuration: one dataclass per model, every default explained."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from ..labels import CLASSES
from ..preprocessing import InputSpec

__all__ = ["CLASSES", "LASANConfig", "EncoderSpec", "HybridConfig", "model_config_from_dict"]

@dataclass(frozen=True)
class LASANConfig:
    """Lead-aware spatial attention network, as in the paper unless a comment says otherwise."""

    input: InputSpec = field(default_factory=InputSpec)
    classes: tuple[str, ...] = CLASSES
    cnn_channels: tuple[int, ...] = (32, 64, 128, 256)  # 4 blocks, shared by all leads
    kernel_size: int = 15  # secondary summary; 30 ms at 500 Hz, about a QRS upstroke
    pool: int = 2  # max-pool stride per block: 2500 -> 156 samples after 4 blocks
    d_model: int = 256  # = last CNN width; lead embeddings and transformer width
    n_layers: int = 3
    n_heads: int = 4
    ff_dim: int = 512  # transformer feed-forward width (not in the paper; 2 x d_model)
    head_hidden: int = 128  # MLP 256 -> 128 -> classes
    dropout: float = 0.1  # not in the paper; the cohort is small, so some regularisation
    # Beyond the paper (1.0 = the paper): the lead aggregator's softmax is taken of
    # scores / aggregator_temperature. Below 1 it amplifies the small score differences of a
    # freshly initialised query, which otherwise keep the weights at 1/8 (and the gradient of
    # an entropy penalty at zero); see training.aggregator_entropy and docs/training.md.
    aggregator_temperature: float = 1.0

    kind = "lasan"

    def __post_init__(self) -> None:
        if self.cnn_channels[-1] != self.d_model:
            raise ConfigError(f"the last CNN width ({self.cnn_channels[-1]}) must equal d_model ({self.d_model})")
        if self.d_model % self.n_heads:
            raise ConfigError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if not self.aggregator_temperature > 0:
            raise ConfigError(f"aggregator_temperature must be positive, got {self.aggregator_temperature}")
        if self.kernel_size % 2 == 0:
            raise ConfigError("kernel_size must be odd so that convolutions keep samples centred")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "cnn_channels", tuple(self.cnn_channels))

    @property
    def n_leads(self) -> int:
        return len(self.input.leads)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["input"] = self.input.to_dict()
        data["kind"] = self.kind
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LASANConfig:
        data = {k: v for k, v in data.items() if k != "kind"}
        _check_fields(cls, data)
        if "input" in data:
            data["input"] = InputSpec.from_dict(data["input"])
        return cls(**data)


@dataclass(frozen=True)
class EncoderSpec:
    """Which foundation encoder a hybrid uses, and how it is trained.

    ``strategy``: ``linear_probe`` freezes the encoder, ``finetune`` trains everything,
    ``lp_ft`` freezes it for ``lp_epochs`` then unfreezes (linear probing, then fine-tuning).
    """

    kind: str = "builtin"  # builtin | torchscript | hubert_ecg
    path: str | None = None  # TorchScript file or HuBERT-ECG directory (not needed for builtin)
    strategy: str = "finetune"  # linear_probe | finetune | lp_ft
    lp_epochs: int = 2
    options: dict[str, Any] = field(default_factory=dict)  # encoder-specific (width, depth, ...)

    def __post_init__(self) -> None:
        if self.kind not in ("builtin", "torchscript", "hubert_ecg"):
            raise ConfigError(f"encoder kind must be builtin, torchscript or hubert_ecg, got {self.kind!r}")
        if self.strategy not in ("linear_probe", "finetune", "lp_ft"):
            raise ConfigError(f"strategy must be linear_probe, finetune or lp_ft, got {self.strategy!r}")


@dataclass(frozen=True)
class HybridConfig:
    """A foundation encoder and LASAN in two branches joined by a learned gate."""

    lasan: LASANConfig = field(default_factory=LASANConfig)
    encoder: EncoderSpec = field(default_factory=EncoderSpec)
    fusion_dim: int = 256  # both branches are projected to this width before the gate

    kind = "hybrid"

    @property
    def input(self) -> InputSpec:
        return self.lasan.input

    @property
    def classes(self) -> tuple[str, ...]:
        return self.lasan.classes

    @property
    def n_leads(self) -> int:
        return self.lasan.n_leads

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "lasan": self.lasan.to_dict(),
            "encoder": asdict(self.encoder),
            "fusion_dim": self.fusion_dim,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HybridConfig:
        data = {k: v for k, v in data.items() if k != "kind"}
        _check_fields(cls, data)
        return cls(
            lasan=LASANConfig.from_dict(data.get("lasan", {})),
            encoder=EncoderSpec(**data.get("encoder", {})),
            fusion_dim=data.get("fusion_dim", 256),
        )


def model_config_from_dict(data: dict[str, Any]) -> LASANConfig | HybridConfig:
    """Rebuild a model config from :meth:`to_dict` output (the ``kind`` key decides)."""
    kind = data.get("kind", "lasan")
    if kind == "lasan":
        return LASANConfig.from_dict(data)
    if kind == "hybrid":
        return HybridConfig.from_dict(data)
    raise ConfigError(f"unknown model kind {kind!r}; expected 'lasan' or 'hybrid'")


def _check_fields(cls: type, data: dict[str, Any]) -> None:
    unknown = set(data) - {f.name for f in fields(cls)}
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {sorted(unknown)}")
