"""The training loop: focal loss, Adam, cosine annealing, early stopping on validation macro-AUROC.

Reproducible: one seed fixes initialisation, shuffling, augmentation and dropout (same
seed and thread count -> same weights on CPU). Resumable: after every epoch the whole
state (model, optimizer, scheduler, epoch, best metric and weights, every RNG) is written
atomically to ``state_path``, and ``resume=True`` continues from it exactly.

Transfer strategies (hybrid models, ``EncoderSpec.strategy``): ``linear_probe`` keeps
the foundation encoder frozen, ``finetune`` trains it at ``lr``, ``lp_ft`` keeps it frozen
for ``lp_epochs`` and then trains it at ``encoder_lr`` (default ``lr / 10``) so that the
pretrained features are not destroyed by the large early gradients of a fresh head.

Beyond the paper (both off by default, ``TrainingConfig``): an entropy penalty on the
lead-aggregator softmax (``aggregator_entropy``) and lead dropout (``lead_dropout``).
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from lasan.errors import CheckpointError, ConfigError
from lasan.train.dataset import Augment, ECGArrays, batches
from lasan.train.losses import FocalLoss
from lasan.train.metrics import macro_auroc
from lasan.train.train_config import TrainingConfig

__all__ = [
    "TrainResult",
    "resolve_device",
    "seed_everything",
    "focal_alpha",
    "foundation_frozen",
    "predict",
    "predict_logits",
    "drop_leads",
    "aggregator_entropy",
    "train_model",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    model: nn.Module  # best-validation weights, eval mode, on the training device
    best_val_auroc: float
    best_epoch: int  # 1-based
    epochs_run: int
    stopped_early: bool
    history: list[dict[str, float]] = field(default_factory=list)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU.

    Raises:
        ConfigError: ``cuda`` was asked for on a machine without a usable GPU.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was requested but no CUDA GPU is available; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ConfigError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (HuBERT's time masking draws from numpy)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def focal_alpha(cfg: TrainingConfig, y: np.ndarray, n_classes: int) -> list[float] | None:
    """Per-class weights: as configured, or ``balanced`` = inverse frequency scaled to mean 1.

    Raises:
        ConfigError: a configured list has the wrong length.
    """
    if cfg.focal_alpha is None:
        return None
    if cfg.focal_alpha == "balanced":
        counts = np.bincount(y, minlength=n_classes).astype(np.float64)
        inv = 1.0 / np.maximum(counts, 1.0)
        return [float(v) for v in inv / inv.mean()]
    alpha = [float(a) for a in cfg.focal_alpha]
    if len(alpha) != n_classes:
        raise ConfigError(f"training.focal_alpha has {len(alpha)} weights but the model has {n_classes} classes")
    return alpha


def foundation_frozen(model: nn.Module, epoch: int) -> bool:
    """Whether the foundation encoder is frozen during 0-based ``epoch`` (False for LASAN)."""
    if getattr(model, "kind", "lasan") != "hybrid":
        return False
    spec = cast(Any, model).config.encoder
    if spec.strategy == "linear_probe":
        return True
    if spec.strategy == "lp_ft":
        return epoch < spec.lp_epochs
    return False


def _set_mode(model: nn.Module, training: bool, frozen: bool) -> None:
    model.train(training)
    if getattr(model, "kind", "lasan") == "hybrid":
        cast(Any, model).set_foundation_trainable(not frozen)


def _optimizer(model: nn.Module, cfg: TrainingConfig) -> torch.optim.Optimizer:
    groups: list[dict[str, Any]]
    if getattr(model, "kind", "lasan") == "hybrid":
        found = {id(p) for p in cast(nn.Module, model.foundation).parameters()}
        rest = [p for p in model.parameters() if id(p) not in found]
        enc_lr = cfg.lr if cast(Any, model).config.encoder.strategy == "finetune" else (cfg.encoder_lr or cfg.lr / 10.0)
        groups = [{"params": rest, "lr": cfg.lr}, {"params": list(cast(nn.Module, model.foundation).parameters()), "lr": enc_lr}]
    else:
        groups = [{"params": list(model.parameters()), "lr": cfg.lr}]
    return torch.optim.Adam(groups, weight_decay=cfg.weight_decay)


@torch.no_grad()
def predict_logits(
    model: nn.Module, data: ECGArrays, batch_size: int = 64, device: torch.device | None = None
) -> np.ndarray:
    """Logits ``(N, C)`` in eval mode (the caller's mode is restored); what calibration is fitted on."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [model(x.to(device))[0].cpu() for x, _ in batches(data, batch_size)]
    model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros((0, len(data.classes)))


def drop_leads(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Zero each lead of ``x (B, L, T)`` with probability ``p``, keeping at least one lead per ECG.

    A zero model-input row is exactly what preprocessing makes of a zeroed mV lead, so this
    trains on the inputs that occlusion importance scores.
    """
    b, n_leads, _ = x.shape
    drop = torch.rand(b, n_leads, generator=gen) < p  # (B, L)
    keep = torch.randint(0, n_leads, (b,), generator=gen)
    drop[torch.arange(b), keep] = False
    return x * (~drop).unsqueeze(-1).to(x.dtype)


def aggregator_entropy(weights: torch.Tensor) -> torch.Tensor:
    """Mean entropy of the aggregator softmax ``(B, L)``, divided by log L (1 = uniform, 0 = one lead)."""
    h = -(weights * torch.log(weights.clamp_min(1e-12))).sum(dim=-1)
    return h.mean() / math.log(weights.shape[-1])


@torch.no_grad()
def predict(model: nn.Module, data: ECGArrays, batch_size: int = 64, device: torch.device | None = None) -> np.ndarray:
    """Softmax probabilities ``(N, C)`` in eval mode (the caller's mode is restored)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = [torch.softmax(model(x.to(device))[0], dim=-1).cpu() for x, _ in batches(data, batch_size)]
    model.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, len(data.classes)), np.float32)


def _rng_state(gen: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "generator": gen.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    gen.set_state(state["generator"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_state(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(payload, tmp)
    tmp.replace(path)  # a run killed mid-write keeps the previous epoch's state


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def train_model(
    model: nn.Module,
    train: ECGArrays,
    val: ECGArrays,
    cfg: TrainingConfig,
    state_path: str | Path | None = None,
    resume: bool = False,
    device: torch.device | None = None,
    stop_after_epoch: int | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` (LASAN or hybrid) in place and return it with its best validation weights.

    ``stop_after_epoch`` ends this call after that many epochs in total, as an
    interruption would (the state file allows ``resume`` later); for time-boxed runs.

    Raises:
        ConfigError: empty splits or bad loss settings.
        CheckpointError: ``resume`` without a readable state file at ``state_path``.
    """
    if len(train) == 0 or len(val) == 0:
        raise ConfigError("training and validation sets must both contain ECGs")
    device = device or torch.device("cpu")
    if cfg.num_threads:
        torch.set_num_threads(int(cfg.num_threads))
    model.to(device)
    n_classes = len(train.classes)
    criterion = FocalLoss(cfg.focal_gamma, focal_alpha(cfg, train.y, n_classes)).to(device)
    optimizer = _optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    gen = torch.Generator().manual_seed(cfg.seed)  # shuffling and augmentation
    augment = Augment(fs=float(cast(Any, model).config.input.fs)) if cfg.augment else None
    state_file = Path(state_path) if state_path else None

    start, best, best_epoch, bad, history = 0, -math.inf, 0, 0, []
    best_state = _cpu_state(model)
    if resume:
        if state_file is None or not state_file.is_file():
            raise CheckpointError(f"cannot resume: no training state at {state_file}; start without --resume")
        st = torch.load(state_file, map_location="cpu", weights_only=False)  # our own file: RNG states are pickled
        model.load_state_dict(st["model"])
        optimizer.load_state_dict(st["optimizer"])
        scheduler.load_state_dict(st["scheduler"])
        start, best, best_epoch, bad = st["epoch"], st["best"], st["best_epoch"], st["bad_epochs"]
        best_state, history = st["best_state"], st["history"]
        _set_rng_state(st["rng"], gen)
        log.info("resuming after epoch %d (best validation macro-AUROC %.4f)", start, best)

    end = cfg.epochs if stop_after_epoch is None else min(cfg.epochs, stop_after_epoch)
    stopped_early = bad >= cfg.patience
    for epoch in range(start, end):
        if stopped_early:
            break
        frozen = foundation_frozen(model, epoch)
        _set_mode(model, True, frozen)
        total, count = 0.0, 0
        epoch_batches = batches(train, cfg.batch_size, gen)
        if progress:
            from tqdm import tqdm

            epoch_batches = tqdm(epoch_batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False)
        for x, y in epoch_batches:
            if augment is not None:
                x = augment(x, gen)
            if cfg.lead_dropout > 0:
                x = drop_leads(x, cfg.lead_dropout, gen)
            x, y = x.to(device), y.to(device)
            logits, lead_weights, _ = model(x)
            loss = criterion(logits, y)
            if cfg.aggregator_entropy > 0:
                loss = loss + cfg.aggregator_entropy * aggregator_entropy(lead_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
            count += len(y)
        scheduler.step()
        val_probs = predict(model, val, device=device)
        auroc = macro_auroc(val.y, val_probs, val.classes)
        with torch.no_grad():
            val_loss = float(
                criterion(
                    torch.log(torch.from_numpy(val_probs).clamp_min(1e-12)).to(device),
                    torch.from_numpy(val.y).to(device),
                )
            )
        score = auroc if math.isfinite(auroc) else -math.inf
        if score > best:
            best, best_epoch, bad = score, epoch + 1, 0
            best_state = _cpu_state(model)
        else:
            bad += 1
        history.append(
            {
                "epoch": epoch + 1,
                "train_loss": total / max(count, 1),
                "val_loss": val_loss,
                "val_macro_auroc": auroc,
                "encoder_frozen": float(frozen),
            }
        )
        log.info(
            "epoch %d/%d  train loss %.4f  val loss %.4f  val macro-AUROC %.4f%s",
            epoch + 1,
            cfg.epochs,
            history[-1]["train_loss"],
            val_loss,
            auroc,
            "  (encoder frozen)" if frozen else "",
        )
        stopped_early = bad >= cfg.patience and epoch + 1 < cfg.epochs
        if state_file is not None:
            _save_state(
                state_file,
                {
                    "model": _cpu_state(model),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "epoch": epoch + 1,
                    "best": best,
                    "best_epoch": best_epoch,
                    "bad_epochs": bad,
                    "best_state": best_state,
                    "history": history,
                    "rng": _rng_state(gen),
                },
            )
        if stopped_early:
            log.info("early stop: no better validation macro-AUROC for %d epochs", cfg.patience)
    model.load_state_dict(best_state)
    _set_mode(model, False, False)
    return TrainResult(model, best, best_epoch, len(history), stopped_early, history)
