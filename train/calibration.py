"""Post-hoc calibration fitted on validation logits: temperature scaling, and vector scaling.

Temperature scaling (Guo et al. 2017, "On calibration of modern neural networks") divides
the logits by one scalar ``T`` that minimises the validation negative log-likelihood. It
cannot change the predicted class or any ranking (AUROC), only how confident the
probabilities are. Vector scaling fits one scale and one bias per class; it can fix a
class-specific bias but has ``2C`` parameters to fit on a small validation split, so it is
only worth it where it is clearly better (:func:`choose_calibration` asks for a margin).

The result is stored in the checkpoint (``CheckpointInfo.calibration``) and applied by
:class:`lasan.models.ServedLASAN`, in process and inside the served Triton ensemble.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from lasan.errors import ConfigError
from lasan.train.metrics import expected_calibration_error

__all__ = [
    "fit_temperature",
    "fit_vector_scaling",
    "nll",
    "calibrated_probs",
    "choose_calibration",
    "VECTOR_MARGIN",
]

# Vector scaling must lower the validation NLL by this much more than temperature scaling
# before it is used: with ~100 validation ECGs, smaller gains are within the noise of a
# 6-parameter fit (and would be fitted noise on the test set).
VECTOR_MARGIN = 0.02
T_RANGE = (0.05, 20.0)


def _check(logits: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    logits = np.asarray(logits, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if logits.ndim != 2 or y.shape != (logits.shape[0],) or logits.shape[0] == 0:
        raise ConfigError(
            f"calibration needs logits (N, C) and labels (N,) for N > 0 ECGs, got {logits.shape} and {y.shape}"
        )
    if not np.all(np.isfinite(logits)):
        raise ConfigError("calibration logits contain NaN or infinite values; check the model")
    return torch.from_numpy(logits), torch.from_numpy(y)


def nll(logits: np.ndarray, y: np.ndarray, scale: Any = 1.0, bias: Any = 0.0) -> float:
    """Mean negative log-likelihood of ``softmax(scale * logits + bias)``."""
    z, t = _check(logits, y)
    z = z * torch.as_tensor(scale, dtype=torch.float64) + torch.as_tensor(bias, dtype=torch.float64)
    return float(torch.nn.functional.cross_entropy(z, t))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature ``T`` minimising the NLL of ``softmax(logits / T)`` on ``(logits, y)``.

    The NLL is convex in ``1 / T``, so a bounded 1-D search finds the optimum: a coarse
    log-spaced grid, then golden-section refinement around the best grid point.

    Raises:
        ConfigError: malformed or non-finite inputs.
    """
    z, t = _check(logits, y)

    def loss(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), t))

    lo, hi = math.log(T_RANGE[0]), math.log(T_RANGE[1])
    grid = np.linspace(lo, hi, 61)
    k = int(np.argmin([loss(g) for g in grid]))
    a, b = grid[max(k - 1, 0)], grid[min(k + 1, len(grid) - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = loss(c), loss(d)
    for _ in range(60):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = loss(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = loss(d)
    return float(math.exp((a + b) / 2))


def fit_vector_scaling(logits: np.ndarray, y: np.ndarray, l2: float = 1e-3) -> tuple[list[float], list[float]]:
    """Per-class ``(scale, bias)`` minimising NLL (+ a small L2 pull towards scale 1/T0, bias 0).

    Starts from temperature scaling, so it is never worse than it on the fitted data by
    more than the regularisation.

    Raises:
        ConfigError: malformed or non-finite inputs.
    """
    z, t = _check(logits, y)
    c = z.shape[1]
    t0 = fit_temperature(logits, y)
    scale = torch.full((c,), 1.0 / t0, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(c, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([scale, bias], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z * scale + bias, t)
        loss = loss + l2 * (((scale - 1.0 / t0) ** 2).sum() + (bias**2).sum())
        loss.backward()
        return loss

    opt.step(closure)
    return [float(v) for v in scale.detach()], [float(v) for v in bias.detach()]


def calibrated_probs(logits: np.ndarray, calibration: dict[str, Any] | None) -> np.ndarray:
    """Probabilities ``(N, C)`` after ``calibration`` (a checkpoint dict; None = plain softmax)."""
    from lasan.models.served import calibration_params

    z = np.asarray(logits, dtype=np.float64)
    scale, bias = calibration_params(calibration, z.shape[1])
    z = z * scale.double().numpy() + bias.double().numpy()
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def choose_calibration(logits: np.ndarray, y: np.ndarray, method: str = "auto") -> dict[str, Any]:
    """Fit the calibration for a checkpoint on validation ``(logits, y)``.

    ``method``: ``temperature``, ``vector``, or ``auto`` (vector scaling only when its
    validation NLL is lower than temperature scaling's by :data:`VECTOR_MARGIN`).
    Returns the dict stored as ``CheckpointInfo.calibration`` (with NLL and ECE before and
    after, measured on the same validation data, so they are optimistic by construction).

    Raises:
        ConfigError: unknown method or malformed inputs.
    """
    if method not in ("temperature", "vector", "auto"):
        raise ConfigError(f"training.calibration must be temperature, vector or auto, got {method!r}")
    y = np.asarray(y, dtype=np.int64)
    t = fit_temperature(logits, y)
    cal: dict[str, Any] = {"method": "temperature", "temperature": t}
    nll_t = nll(logits, y, 1.0 / t)
    if method in ("vector", "auto"):
        scale, bias = fit_vector_scaling(logits, y)
        nll_v = nll(logits, y, scale, bias)
        if method == "vector" or nll_v < nll_t - VECTOR_MARGIN:
            cal = {"method": "vector", "scale": scale, "bias": bias, "temperature_alternative": t}
    before = calibrated_probs(logits, None)
    after = calibrated_probs(logits, cal)
    cal.update(
        {
            "fitted_on": "val",
            "n": int(len(y)),
            "nll_before": nll(logits, y),
            "nll_after": float(-np.mean(np.log(np.clip(after[np.arange(len(y)), y], 1e-300, None)))),
            "ece_before": expected_calibration_error(y, before),
            "ece_after": expected_calibration_error(y, after),
        }
    )
    return cal
