"""Self-supervised pretraining of the built-in hybrid encoder: masked-segment reconstruction.

Several segments of every (unlabelled, preprocessed) ECG are zeroed in all leads at
once, and the encoder's convolutional body plus a throw-away linear decoder must
rebuild the hidden samples; the loss is the mean squared error on hidden samples only.
Filling a gap from the beats around it and from the other leads needs a model of beat
morphology and of the fixed relations between leads -- the features the classifier
wants -- and it needs no labels, so any hospital archive (or the synthetic cohort) can
be used. The decoder is discarded; only the encoder's weights are kept.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from lasan.errors import ConfigError
from lasan.models.encoders import BuiltinEncoder
from lasan.train.train_config import PretrainConfig

__all__ = ["MaskedReconstruction", "segment_mask", "pretrain_encoder"]

log = logging.getLogger(__name__)


class MaskedReconstruction(nn.Module):
    """Encoder body + per-step linear decoder that un-strides back to ``(B, L, T)``."""

    def __init__(self, encoder: BuiltinEncoder, n_leads: int):
        super().__init__()
        self.encoder = encoder
        convs = [m for m in encoder.body if isinstance(m, nn.Conv1d)]
        self.stride = int(np.prod([m.stride[0] for m in convs]))
        self.n_leads = n_leads
        self.decoder = nn.Conv1d(convs[-1].out_channels, n_leads * self.stride, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n_leads, t = x.shape  # (B, L, T)
        h = self.decoder(self.encoder.body(x))  # (B, L * s, T')
        t_out = h.shape[-1]
        h = h.reshape(b, n_leads, self.stride, t_out).permute(0, 1, 3, 2)  # (B, L, T', s)
        return h.reshape(b, n_leads, t_out * self.stride)[..., :t]  # (B, L, T)


def segment_mask(batch: int, t: int, ratio: float, n_segments: int, gen: torch.Generator) -> torch.Tensor:
    """``(B, 1, T)`` bool mask with ``n_segments`` segments covering about ``ratio`` of each row."""
    seg = max(1, int(ratio * t / n_segments))
    starts = torch.randint(0, max(1, t - seg), (batch, n_segments), generator=gen)
    pos = torch.arange(t)
    hit = (pos[None, None, :] >= starts[..., None]) & (pos[None, None, :] < starts[..., None] + seg)
    return hit.any(dim=1, keepdim=True)  # (B, 1, T)


def pretrain_encoder(
    encoder: nn.Module,
    x: np.ndarray,
    cfg: PretrainConfig,
    seed: int = 0,
    device: torch.device | None = None,
    progress: bool = True,
) -> list[float]:
    """Pretrain ``encoder`` in place on unlabelled model inputs ``x (N, L, T)``; returns loss per epoch.

    Raises:
        ConfigError: the encoder is not a :class:`BuiltinEncoder`, or ``x`` is empty.
    """
    if not isinstance(encoder, BuiltinEncoder):
        raise ConfigError("self-supervised pretraining is available for the builtin encoder only")
    if len(x) == 0:
        raise ConfigError("pretraining needs at least one unlabelled ECG")
    device = device or torch.device("cpu")
    gen = torch.Generator().manual_seed(seed + 1)  # its own stream: fine-tuning draws stay as without pretraining
    net = MaskedReconstruction(encoder, x.shape[1]).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    data = torch.from_numpy(np.asarray(x, dtype=np.float32))
    losses: list[float] = []
    net.train()
    for epoch in range(cfg.epochs):
        order = torch.randperm(len(data), generator=gen).split(cfg.batch_size)
        if progress:
            from tqdm import tqdm

            order = tqdm(order, desc=f"pretrain {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        total, count = 0.0, 0
        for idx in order:
            target = data[idx]
            mask = segment_mask(len(idx), target.shape[-1], cfg.mask_ratio, cfg.n_masks, gen)
            target, mask = target.to(device), mask.to(device)
            recon = net(target.masked_fill(mask, 0.0))
            m = mask.expand_as(target)
            loss = ((recon - target) ** 2)[m].mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            count += len(idx)
        losses.append(total / count)
        log.info("pretrain epoch %d/%d  masked reconstruction MSE %.4f", epoch + 1, cfg.epochs, losses[-1])
    return losses
