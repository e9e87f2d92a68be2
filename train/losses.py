"""Focal loss for the three-class task (Lin et al. 2017, multi-class form).

``FL = -alpha_y * (1 - p_y) ** gamma * log p_y``, averaged over the batch with the
alpha weights as the normaliser, so ``gamma = 0`` equals
``torch.nn.functional.cross_entropy(logits, y, weight=alpha)`` exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from lasan.errors import ConfigError

__all__ = ["FocalLoss"]


class FocalLoss(nn.Module):
    """Focal loss with per-class ``alpha`` weights (None = all ones) and focusing ``gamma``.

    Raises:
        ConfigError: negative gamma, or alpha weights that are not positive.
    """

    if TYPE_CHECKING:  # a buffer, registered in __init__; no run-time annotation (TorchScript)
        alpha: torch.Tensor | None

    def __init__(self, gamma: float = 2.0, alpha: Sequence[float] | None = None):
        super().__init__()
        if gamma < 0:
            raise ConfigError(f"focal loss gamma must be >= 0, got {gamma}")
        if alpha is not None and (len(alpha) == 0 or any(a <= 0 for a in alpha)):
            raise ConfigError(f"focal loss alpha weights must be positive numbers, got {list(alpha)}")
        self.gamma = float(gamma)
        self.register_buffer("alpha", torch.tensor(list(alpha), dtype=torch.float32) if alpha is not None else None)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = torch.log_softmax(logits, dim=-1)  # (B, C)
        log_pt = log_p.gather(1, target[:, None]).squeeze(1)  # (B,)
        focus = (1.0 - log_pt.exp()).clamp_min(0.0) ** self.gamma if self.gamma else torch.ones_like(log_pt)
        w = self.alpha[target] if self.alpha is not None else torch.ones_like(log_pt)
        return -(w * focus * log_pt).sum() / w.sum()
