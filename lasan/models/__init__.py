"""Model definitions shared by train/ and build/."""

from __future__ import annotations

from torch import nn

from .config import CLASSES, EncoderSpec, HybridConfig, LASANConfig, model_config_from_dict
from .encoders import build_foundation_encoder
from .hybrid import HybridLASAN
from .lasan_net import LASAN
from .served import ServedLASAN

__all__ = [
    "CLASSES",
    "EncoderSpec",
    "HybridConfig",
    "LASANConfig",
    "LASAN",
    "HybridLASAN",
    "ServedLASAN",
    "build_model",
    "model_config_from_dict",
]


def build_model(cfg: LASANConfig | HybridConfig, assets: dict[str, bytes] | None = None) -> nn.Module:
    """A freshly initialised model for ``cfg`` (LASAN or hybrid); see :func:`build_foundation_encoder`."""
    if isinstance(cfg, HybridConfig):
        return HybridLASAN(cfg, build_foundation_encoder(cfg.encoder, cfg.input, assets))
    return LASAN(cfg)
