"""The two baselines LASAN is compared against in every evaluation report.

* Clinical features + multinomial logistic regression (numpy, standardised inputs,
  L2 penalty): what QTc and V1-V3 T-wave measurements alone achieve.
* A plain CNN that stacks the 8 leads as input channels: same depth and widths as
  LASAN's per-lead CNN, but no lead embeddings, no inter-lead attention, no lead
  aggregator. Trained with the same focal loss and optimiser, so the gap between it
  and LASAN is the value of the lead-aware design on this data.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lasan.train.dataset import Augment
from lasan.train.losses import FocalLoss
from lasan.train.masking import predict
from lasan.train.metrics import macro_auroc

__all__ = [
    "LogisticModel",
    "fit_logistic",
    "PlainCNN",
    "CNNTrainConfig",
    "train_plain_cnn",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LogisticModel:
    """A fitted multinomial logistic regression; imputation and scaling are part of it."""

    median: np.ndarray  # (F,) training medians, replace nan features
    mean: np.ndarray  # (F,)
    scale: np.ndarray  # (F,)
    weights: np.ndarray  # (F, C)
    bias: np.ndarray  # (C,)

    def _design(self, x: np.ndarray) -> np.ndarray:
        x = np.where(np.isfinite(x), x, self.median)
        return (x - self.mean) / self.scale

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        """``(N, C)`` class probabilities for raw features ``(N, F)``."""
        return _softmax(self._design(np.asarray(x, dtype=np.float64)) @ self.weights + self.bias)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_logistic(
    x: np.ndarray,
    y: np.ndarray,
    n_classes: int,
    l2: float = 1e-2,
    class_weight: str | None = "balanced",
    max_iter: int = 3000,
    tol: float = 1e-8,
) -> LogisticModel:
    """Fit multinomial logistic regression by gradient descent on the (convex) penalised loss.

    Features are median-imputed (nan -> training median) and standardised; the
    bias is not penalised. ``class_weight="balanced"`` weights each class by
    ``N / (C * n_c)`` like the focal-loss alpha, so a rare class is not ignored.

    Raises:
        ValueError: ``x`` and ``y`` disagree in length, or ``x`` is empty.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) == 0:
        raise ValueError(f"need a non-empty (N, F) feature matrix and N labels, got {x.shape} and {y.shape}")
    median = np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0)
    median = np.where(np.isfinite(median), median, 0.0)
    xi = np.where(np.isfinite(x), x, median)
    mean, scale = xi.mean(axis=0), xi.std(axis=0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (xi - mean) / scale
    n, f = z.shape
    onehot = np.eye(n_classes)[y]
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    if class_weight == "balanced":
        cw = np.where(counts > 0, n / (n_classes * np.maximum(counts, 1)), 0.0)
    else:
        cw = np.ones(n_classes)
    sw = cw[y] / cw[y].sum()  # (N,) sample weights summing to 1
    w, b = np.zeros((f, n_classes)), np.zeros(n_classes)
    # Standardised inputs make the Hessian's largest eigenvalue at most about (f + 1) / 2 + l2,
    # so this step size converges without a line search.
    lr = 1.0 / (0.5 * (f + 1) + l2)
    prev = np.inf
    for _ in range(max_iter):
        p = _softmax(z @ w + b)
        loss = -(sw * np.log(np.maximum((p * onehot).sum(axis=1), 1e-300))).sum() + 0.5 * l2 * (w * w).sum()
        g = sw[:, None] * (p - onehot)  # (N, C)
        w -= lr * (z.T @ g + l2 * w)
        b -= lr * g.sum(axis=0)
        if abs(prev - loss) < tol:
            break
        prev = loss
    return LogisticModel(median, mean, scale, w, b)


class PlainCNN(nn.Module):
    """8 leads as channels -> 4 x (conv, BN, ReLU, max-pool) -> global mean -> MLP.

    Returns logits ``(B, C)`` only: it has no notion of a lead, hence no lead weights.
    """

    def __init__(
        self,
        n_leads: int = 8,
        n_classes: int = 3,
        channels: tuple[int, ...] = (32, 64, 128, 256),
        kernel_size: int = 15,
        pool: int = 2,
        hidden: int = 128,
        dropout: float = 0.1,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = n_leads
        for c_out in channels:
            layers += [
                nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
                nn.BatchNorm1d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool1d(pool),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(c_in, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (B, C', T')
        return self.head(h.mean(dim=-1))  # (B, classes)


@dataclass(frozen=True)
class CNNTrainConfig:
    """Training settings for the plain CNN; defaults mirror LASAN's demo training."""

    epochs: int = 15
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-4
    gamma: float = 2.0  # focal loss focusing
    balanced_alpha: bool = True  # alpha_c = N / (C * n_c), like the trainer's default
    patience: int = 5  # early stopping on validation macro-AUROC
    seed: int = 0
    augment: bool = False  # the trainer's augmentation (lasan.train.dataset.Augment), as LASAN had
    fs: float = 500.0  # input rate, for the augmentation's time shift


def train_plain_cnn(
    model: nn.Module,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    classes: tuple[str, ...],
    cfg: CNNTrainConfig = CNNTrainConfig(),
) -> dict[str, object]:
    """Train ``model`` in place (focal loss, Adam, cosine annealing, early stopping); keep the best epoch.

    Returns a small history dict (epochs run, best validation macro-AUROC, best epoch).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    n_classes = len(classes)
    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
    alpha = (len(y_train) / (n_classes * np.maximum(counts, 1))).tolist() if cfg.balanced_alpha else None
    loss_fn = FocalLoss(cfg.gamma, alpha)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    xt = torch.as_tensor(x_train, dtype=torch.float32)
    augment = Augment(fs=cfg.fs) if cfg.augment else None
    gen = torch.Generator().manual_seed(cfg.seed)
    yt = torch.as_tensor(y_train, dtype=torch.int64)
    best, best_state, best_epoch, stale, epoch = -np.inf, copy.deepcopy(model.state_dict()), -1, 0, 0
    for epoch in range(cfg.epochs):
        model.train()
        order = rng.permutation(len(xt))
        for start in range(0, len(order), cfg.batch_size):
            idx = torch.as_tensor(order[start : start + cfg.batch_size])
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            opt.zero_grad()
            xb = augment(xt[idx], gen) if augment is not None else xt[idx]  # (B, L, T)
            loss = loss_fn(model(xb), yt[idx])
            loss.backward()
            opt.step()
        sched.step()
        model.eval()
        probs = predict(model, x_val, cfg.batch_size).probs
        score = macro_auroc(y_val, probs, classes)
        score = -np.inf if not np.isfinite(score) else score
        log.info("plain CNN epoch %d: validation macro-AUROC %.3f", epoch + 1, score)
        if score > best:
            best, best_state, best_epoch, stale = score, copy.deepcopy(model.state_dict()), epoch + 1, 0
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return {"epochs_run": epoch + 1, "best_epoch": best_epoch, "best_val_macro_auroc": float(best)}
