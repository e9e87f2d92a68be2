"""Foundation encoders for the hybrid model, behind one small interface.

An encoder is an ``nn.Module`` with an integer ``out_dim`` whose ``forward`` takes the
preprocessed ``(B, 8, T)`` model input and returns ``(B, out_dim)`` features. Anything
an encoder needs beyond that (its own rate, 12 leads) it derives inside ``forward``, so
the exported encoder part stays self-contained.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import ConfigError
from ..preprocessing import InputSpec
from .config import EncoderSpec

__all__ = ["BuiltinEncoder", "build_foundation_encoder"]


class BuiltinEncoder(nn.Module):
    """A compact multi-lead CNN (all leads as channels) that ``lasan train`` can pretrain
    self-supervised on unlabelled ECGs, so that a hybrid trains on a fresh machine."""

    def __init__(self, n_leads: int = 8, width: int = 64, depth: int = 4, out_dim: int = 128):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = n_leads
        for i in range(depth):
            c_out = width * 2 ** min(i, 2)
            layers += [
                nn.Conv1d(c_in, c_out, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm1d(c_out),
                nn.GELU(),
            ]
            c_in = c_out
        self.body = nn.Sequential(*layers)
        self.proj = nn.Linear(c_in, out_dim)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)  # (B, C, T / 2**depth)
        return self.proj(h.mean(dim=-1))  # (B, out_dim)


def build_foundation_encoder(
    spec: EncoderSpec, input_spec: InputSpec, assets: dict[str, bytes] | None = None
) -> nn.Module:
    """Instantiate the encoder named by ``spec`` (weights are loaded by the caller or checkpoint).

    ``assets`` holds files a checkpoint carries for its encoder (e.g. a TorchScript
    encoder's bytes), so that a checkpoint rebuilds without the original paths.

    Raises:
        ConfigError: unknown kind, or options the encoder does not take.
    """
    if spec.kind == "builtin":
        try:
            return BuiltinEncoder(n_leads=len(input_spec.leads), **spec.options)
        except TypeError as exc:
            raise ConfigError(f"bad builtin encoder options {spec.options}: {exc}") from exc
    raise ConfigError(f"encoder kind {spec.kind!r} is not available in this build")
