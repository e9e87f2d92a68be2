"""LASAN: per-lead CNN, anatomical lead embeddings, inter-lead transformer, lead aggregator.

The model is written as two parts that the Triton ensemble chains (``lasan build``
exports them separately): the *encoder* turns preprocessed leads into one feature
vector per lead, the *fusion* relates the leads and classifies. ``forward`` is simply
``fusion(encoder(x))``, so in-process and served numbers agree by construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import LASANConfig

__all__ = ["PerLeadCNN", "InterLeadLayer", "LeadBranch", "ClassifierHead", "LASANFusion", "LASAN"]


class PerLeadCNN(nn.Module):
    """4 blocks of conv(k=15) -> BN -> ReLU -> max-pool(2), shared across leads, then mean over time."""

    def __init__(self, cfg: LASANConfig):
        super().__init__()
        blocks: list[nn.Module] = []
        c_in = 1
        for c_out in cfg.cnn_channels:
            blocks += [
                nn.Conv1d(c_in, c_out, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=False),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(cfg.pool),
            ]
            c_in = c_out
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n_leads, t = x.shape  # (B, L, T)
        h = self.blocks(x.reshape(b * n_leads, 1, t))  # (B*L, D, T')
        return h.mean(dim=-1).reshape(b, n_leads, -1)  # (B, L, D)


class InterLeadLayer(nn.Module):
    """Pre-norm transformer layer over the lead axis that also returns its attention map."""

    def __init__(self, d_model: int, n_heads: int, ff_dim: int, dropout: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = nn.MultiheadAttention(d_model, n_heads, dropout=dropout, batch_first=True)
        self.norm2 = nn.LayerNorm(d_model)
        self.ff = nn.Sequential(
            nn.Linear(d_model, ff_dim), nn.GELU(), nn.Dropout(dropout), nn.Linear(ff_dim, d_model)
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.norm1(x)  # (B, L, D)
        a, weights = self.attn(h, h, h, need_weights=True, average_attn_weights=False)  # weights (B, H, L, L)
        assert weights is not None  # refines Optional for TorchScript
        x = x + self.dropout(a)
        x = x + self.dropout(self.ff(self.norm2(x)))
        return x, weights


class LeadBranch(nn.Module):
    """Lead embeddings + inter-lead transformer + single-head importance aggregator.

    Input ``(B, L, D)`` per-lead features; output the pooled ``(B, D)`` vector, the
    ``(B, L)`` lead-importance weights (softmax, sum to 1) and the stacked inter-lead
    attention maps ``(B, layers, heads, L, L)``.
    """

    def __init__(self, cfg: LASANConfig):
        super().__init__()
        # One learnable vector per anatomical lead position (I, II, V1..V6): the
        # transformer sees which electrode a feature came from, not just its index.
        self.lead_embedding = nn.Parameter(torch.randn(cfg.n_leads, cfg.d_model) * 0.02)
        self.layers = nn.ModuleList(
            [InterLeadLayer(cfg.d_model, cfg.n_heads, cfg.ff_dim, cfg.dropout) for _ in range(cfg.n_layers)]
        )
        self.norm = nn.LayerNorm(cfg.d_model)
        # Single-head attention pooling with a learned query: its softmax over leads
        # is the lead-importance vector that the deployment shows clinicians.
        self.query = nn.Parameter(torch.randn(cfg.d_model) * 0.02)
        self.key = nn.Linear(cfg.d_model, cfg.d_model)
        self.value = nn.Linear(cfg.d_model, cfg.d_model)
        self.scale = 1.0 / (math.sqrt(cfg.d_model) * cfg.aggregator_temperature)

    def forward(self, lead_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = lead_features + self.lead_embedding  # (B, L, D)
        maps = []
        for layer in self.layers:
            x, weights = layer(x)
            maps.append(weights)
        x = self.norm(x)
        scores = torch.matmul(self.key(x), self.query) * self.scale  # (B, L)
        lead_weights = torch.softmax(scores, dim=-1)
        pooled = torch.sum(lead_weights.unsqueeze(-1) * self.value(x), dim=1)  # (B, D)
        return pooled, lead_weights, torch.stack(maps, dim=1)  # attention (B, layers, H, L, L)


class ClassifierHead(nn.Module):
    """MLP d_model -> head_hidden -> classes."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LASANFusion(nn.Module):
    """The second exported part of LASAN: lead features -> (logits, lead weights, attention)."""

    def __init__(self, branch: LeadBranch, head: ClassifierHead):
        super().__init__()
        self.branch = branch
        self.head = head

    def forward(self, lead_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pooled, lead_weights, attention = self.branch(lead_features)
        return self.head(pooled), lead_weights, attention


class LASAN(nn.Module):
    """Lead-aware spatial attention network.

    ``forward(x)`` with ``x`` the ``(B, 8, 2500)`` output of
    :func:`lasan.preprocessing.preprocess_array` returns ``(logits (B, C),
    lead_weights (B, 8), attention (B, layers, heads, 8, 8))``.
    """

    kind = "lasan"
    encoder_outputs: tuple[str, ...] = ("lead_features",)

    def __init__(self, cfg: LASANConfig):
        super().__init__()
        self.config = cfg
        self.encoder = PerLeadCNN(cfg)
        self.fusion = LASANFusion(
            LeadBranch(cfg), ClassifierHead(cfg.d_model, cfg.head_hidden, len(cfg.classes), cfg.dropout)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.fusion(self.encoder(x))

    def encoder_part(self) -> nn.Module:
        """Module ``x (B, L, T) -> lead_features (B, L, D)``; shares parameters with self."""
        return self.encoder

    def fusion_part(self) -> nn.Module:
        """Module ``lead_features -> (logits, lead_weights, attention)``; shares parameters."""
        return self.fusion
