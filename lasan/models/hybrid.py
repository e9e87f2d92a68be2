"""Hybrid LASAN: a foundation encoder and LASAN in two branches joined by a learned gate.

Exported as two parts like LASAN: the encoder part returns per-lead features *and*
the foundation features; the fusion part relates leads, gates the two branches and
classifies. Lead-importance weights come from the LASAN branch.
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn

from .config import HybridConfig
from .lasan_net import ClassifierHead, LeadBranch, PerLeadCNN

__all__ = ["HybridEncoder", "HybridFusion", "HybridLASAN"]


class HybridEncoder(nn.Module):
    """``x (B, L, T) -> (lead_features (B, L, D), foundation_features (B, F))``."""

    def __init__(self, lead_cnn: PerLeadCNN, foundation: nn.Module):
        super().__init__()
        self.lead_cnn = lead_cnn
        self.foundation = foundation

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lead_cnn(x), self.foundation(x)


class HybridFusion(nn.Module):
    """Gated fusion: ``h = g * lasan + (1 - g) * foundation`` with ``g = sigmoid(W [lasan; foundation])``."""

    def __init__(self, cfg: HybridConfig, foundation_dim: int):
        super().__init__()
        lc = cfg.lasan
        self.branch = LeadBranch(lc)
        self.project_lasan = nn.Linear(lc.d_model, cfg.fusion_dim)
        self.project_foundation = nn.Sequential(nn.LayerNorm(foundation_dim), nn.Linear(foundation_dim, cfg.fusion_dim))
        self.gate = nn.Linear(2 * cfg.fusion_dim, cfg.fusion_dim)
        self.head = ClassifierHead(cfg.fusion_dim, lc.head_hidden, len(lc.classes), lc.dropout)

    def forward(
        self, lead_features: torch.Tensor, foundation_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled, lead_weights, attention = self.branch(lead_features)
        h_lasan = self.project_lasan(pooled)  # (B, fusion_dim)
        h_found = self.project_foundation(foundation_features)  # (B, fusion_dim)
        g = torch.sigmoid(self.gate(torch.cat([h_lasan, h_found], dim=-1)))
        return self.head(g * h_lasan + (1.0 - g) * h_found), lead_weights, attention


class HybridLASAN(nn.Module):
    """Hybrid model; ``forward`` has LASAN's signature and outputs."""

    kind = "hybrid"
    encoder_outputs: tuple[str, ...] = ("lead_features", "foundation_features")

    def __init__(self, cfg: HybridConfig, foundation: nn.Module):
        super().__init__()
        self.config = cfg
        self.foundation_dim = int(cast(int, foundation.out_dim))
        self.encoder = HybridEncoder(PerLeadCNN(cfg.lasan), foundation)
        self.fusion = HybridFusion(cfg, self.foundation_dim)

    @property
    def foundation(self) -> nn.Module:
        return self.encoder.foundation

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        lead_features, foundation_features = self.encoder(x)
        return self.fusion(lead_features, foundation_features)

    def encoder_part(self) -> nn.Module:
        return self.encoder

    def fusion_part(self) -> nn.Module:
        return self.fusion

    def set_foundation_trainable(self, trainable: bool) -> None:
        """Freeze (linear probing) or unfreeze (fine-tuning) the foundation encoder."""
        for p in self.foundation.parameters():
            p.requires_grad_(trainable)
        # A frozen encoder also keeps its normalisation statistics fixed.
        self.foundation.train(trainable and self.training)
