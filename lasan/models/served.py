"""The model as it is served: calibrated probabilities and a faithful lead importance.

:class:`ServedLASAN` wraps a trained LASAN or hybrid model. Its ``forward(x)`` returns

* ``probabilities (B, C)``: ``softmax(scale * logits + bias)``; temperature scaling is
  ``scale = 1 / T``, ``bias = 0`` (vector scaling fits one scale and bias per class);
* ``lead_importance (B, 8)``: occlusion importance. With ``c`` the predicted class and
  ``d_i = p_c(x) - p_c(x with lead i zeroed in mV)``,
  ``w_i = max(0, d_i) + (eps / 8) * sigmoid(d_i / 0.1)`` and ``importance_i = w_i / sum_j w_j``,
  ``eps = 1e-3``. That is each lead's share of the drop in the predicted class's probability,
  plus a term of total mass below ``eps`` that (a) makes it uniform when no lead's removal
  changes ``p_c``, (b) keeps changes of about 0.1 percentage points or less from dominating
  the picture (they would be float noise, on which in-process and served numbers could
  disagree), and (c) orders the leads whose removal *raises* ``p_c`` by how much, instead of
  tying them at zero;
* ``aggregator_weights (B, 8)``: the paper's lead-aggregator softmax, unchanged;
* ``attention (B, layers, heads, 8, 8)``: the inter-lead attention maps.

Why occlusion is cheap here: preprocessing is per lead and maps an all-zero mV lead to an
all-zero model-input row (median, filter, z-score of zeros are zeros), and the CNN encoder
is per lead and shared, so a zeroed lead always has the same feature vector
``zero_feature = encoder(zeros)``. The 8 occlusions are therefore 8 extra passes of the
small fusion part, batched into one call, and no extra encoder pass. That equality with a
real input-level occlusion is tested (``tests/train/test_models.py``).

Hybrid models: the foundation encoder sees all leads together, so a true occlusion would
need 8 more foundation passes. The served importance occludes the lead-aware branch only
and keeps the foundation features of the full ECG: it says which leads the LASAN branch
relies on, and is an approximation of the full input-level occlusion (docs/deployment.md).

Like :class:`~lasan.models.LASAN`, the module is two exported parts: ``encoder_part()``
(unchanged) and ``fusion_part()`` (:class:`ServedFusion` / :class:`ServedHybridFusion`),
which the Triton ensemble runs, so served and in-process numbers agree by construction.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

__all__ = [
    "IMPORTANCE_EPS",
    "ServedLASAN",
    "ServedFusion",
    "ServedHybridFusion",
    "occlusion_importance",
    "calibration_params",
]

IMPORTANCE_EPS = 1e-3


def occlusion_importance(probs: torch.Tensor, occluded: torch.Tensor, eps: float = IMPORTANCE_EPS) -> torch.Tensor:
    """Importance ``(B, L)`` from ``probs (B, C)`` of the full input and ``occluded (B, L, C)``.

    ``occluded[:, i]`` are the probabilities with lead ``i`` zeroed; see the module docstring.
    """
    b, n_leads, _ = occluded.shape
    c = torch.argmax(probs, dim=-1)  # (B,) predicted class
    p = probs.gather(1, c.unsqueeze(1))  # (B, 1)
    p_occ = occluded.gather(2, c.view(b, 1, 1).expand(b, n_leads, 1)).squeeze(2)  # (B, L)
    drops = p - p_occ
    w = torch.clamp(drops, min=0.0) + (eps / n_leads) * torch.sigmoid(drops / 0.1)
    return w / w.sum(dim=-1, keepdim=True)


def _occluded_copies(lead_features: torch.Tensor, zero_feature: torch.Tensor) -> torch.Tensor:
    """``(B * (L + 1), L, D)``: the input, then one copy per lead with that lead's feature replaced."""
    b, n_leads, d = lead_features.shape
    eye = torch.eye(n_leads, dtype=torch.bool, device=lead_features.device)
    mask = eye.view(1, n_leads, n_leads, 1)  # copy k has lead k occluded
    occ = torch.where(mask, zero_feature.view(1, 1, 1, d), lead_features.unsqueeze(1))  # (B, L, L, D)
    return torch.cat([lead_features.unsqueeze(1), occ], dim=1).reshape(b * (n_leads + 1), n_leads, d)


class _Calibrated(nn.Module):
    """Shared state of the two served fusions: calibration and the zero-lead feature."""

    if TYPE_CHECKING:  # buffers, registered in __init__; not class annotations at run time (TorchScript)
        zero_feature: torch.Tensor
        scale: torch.Tensor
        bias: torch.Tensor

    def __init__(self, zero_feature: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("zero_feature", zero_feature.detach().clone().float())  # (D,)
        self.register_buffer("scale", scale.detach().clone().float())  # (C,)
        self.register_buffer("bias", bias.detach().clone().float())  # (C,)

    def _outputs(
        self, logits: torch.Tensor, weights: torch.Tensor, attention: torch.Tensor, b: int, n_leads: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        probs = torch.softmax(logits * self.scale + self.bias, dim=-1)  # (B * (L + 1), C)
        probs = probs.reshape(b, n_leads + 1, -1)
        weights = weights.reshape(b, n_leads + 1, n_leads)[:, 0]
        attention = attention.reshape((b, n_leads + 1) + attention.shape[1:])[:, 0]
        full = probs[:, 0]
        return full, occlusion_importance(full, probs[:, 1:]), weights, attention


class ServedFusion(_Calibrated):
    """``lead_features (B, L, D) -> (probabilities, lead_importance, aggregator_weights, attention)``."""

    def __init__(self, fusion: nn.Module, zero_feature: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
        super().__init__(zero_feature, scale, bias)
        self.fusion = fusion

    def forward(
        self, lead_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n_leads = lead_features.shape[0], lead_features.shape[1]
        logits, weights, attention = self.fusion(_occluded_copies(lead_features, self.zero_feature))
        return self._outputs(logits, weights, attention, b, n_leads)


class ServedHybridFusion(_Calibrated):
    """As :class:`ServedFusion` for a hybrid; the foundation features are those of the full ECG."""

    def __init__(self, fusion: nn.Module, zero_feature: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor):
        super().__init__(zero_feature, scale, bias)
        self.fusion = fusion

    def forward(
        self, lead_features: torch.Tensor, foundation_features: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        b, n_leads = lead_features.shape[0], lead_features.shape[1]
        found = foundation_features.repeat_interleave(n_leads + 1, dim=0)  # (B * (L + 1), F)
        logits, weights, attention = self.fusion(_occluded_copies(lead_features, self.zero_feature), found)
        return self._outputs(logits, weights, attention, b, n_leads)


def calibration_params(calibration: dict[str, Any] | None, n_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(scale, bias)`` per class from a checkpoint's ``calibration`` dict (identity when None/empty).

    Raises:
        ConfigError: an unknown method or a vector of the wrong length.
    """
    from ..errors import ConfigError

    cal = calibration or {}
    method = cal.get("method", "none")
    if method in ("none", None) or not cal:
        return torch.ones(n_classes), torch.zeros(n_classes)
    if method == "temperature":
        t = float(cal["temperature"])
        if not t > 0:
            raise ConfigError(f"calibration temperature must be positive, got {t}")
        return torch.full((n_classes,), 1.0 / t), torch.zeros(n_classes)
    if method == "vector":
        scale, bias = list(cal["scale"]), list(cal["bias"])
        if len(scale) != n_classes or len(bias) != n_classes:
            raise ConfigError(f"vector calibration needs {n_classes} scales and biases")
        return torch.tensor(scale, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)
    raise ConfigError(f"unknown calibration method {method!r}; expected 'temperature' or 'vector'")


class ServedLASAN(nn.Module):
    """A LASAN or hybrid model with calibration and occlusion importance (module docstring).

    ``ServedLASAN(model, temperature)``; ``calibration`` (a checkpoint's dict) overrides
    ``temperature`` when given. The wrapped model is put in eval mode: ``zero_feature`` is
    computed once here from the encoder's eval-mode statistics, so change no weights afterwards.
    """

    def __init__(self, model: nn.Module, temperature: float = 1.0, calibration: dict[str, Any] | None = None):
        super().__init__()
        model.eval()
        self.model: Any = model
        self.kind = str(getattr(model, "kind", "lasan"))
        cfg: Any = model.config
        classes = tuple(cfg.classes)
        cal = calibration if calibration else {"method": "temperature", "temperature": float(temperature)}
        scale, bias = calibration_params(cal, len(classes))
        self.calibration: dict[str, Any] = dict(cal)
        lead_cnn: Any = cast(Any, model.encoder).lead_cnn if self.kind == "hybrid" else model.encoder
        param = next(model.parameters())
        with torch.no_grad():
            zeros = torch.zeros(1, 1, cfg.input.n_samples, dtype=param.dtype, device=param.device)  # (1, 1 lead, T)
            zero_feature = lead_cnn(zeros)[0, 0]  # (D,)
        fusion_cls = ServedHybridFusion if self.kind == "hybrid" else ServedFusion
        self.fusion = fusion_cls(cast(Any, model).fusion_part(), zero_feature, scale, bias)

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def temperature(self) -> float:
        """The temperature (1 / scale) for temperature scaling; nan for vector scaling."""
        if self.calibration.get("method", "temperature") == "temperature":
            return float(self.calibration.get("temperature", 1.0))
        return float("nan")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.model.encoder_part()(x)
        if isinstance(features, (tuple, list)):
            return self.fusion(*features)
        return self.fusion(features)

    def encoder_part(self) -> nn.Module:
        """``x (B, L, T) -> lead features`` (and foundation features for a hybrid); the model's own."""
        return self.model.encoder_part()

    def fusion_part(self) -> nn.Module:
        """``features -> (probabilities, lead_importance, aggregator_weights, attention)``."""
        return self.fusion
