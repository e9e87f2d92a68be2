"""Foundation encoders for the hybrid model, behind one small interface.

An encoder is an ``nn.Module`` with an integer ``out_dim`` whose ``forward`` takes the
preprocessed ``(B, 8, T)`` model input and returns ``(B, out_dim)`` features. Anything
an encoder needs beyond that (its own rate, 12 leads) it derives inside ``forward`` with
fixed torch ops, so the exported encoder part stays self-contained (traceable with
``torch.jit.trace``; the built-in encoder is also scriptable).

Three kinds (``EncoderSpec.kind``):

* ``builtin`` -- :class:`BuiltinEncoder`, a compact CNN that ``lasan train`` can
  pretrain self-supervised (``lasan.train.pretrain``) so a hybrid trains anywhere.
* ``torchscript`` -- any TorchScript file mapping ``(B, 8, T) -> (B, F)``; its bytes
  travel in the checkpoint's ``assets`` under :data:`TORCHSCRIPT_ASSET`.
* ``hubert_ecg`` -- HuBERT-ECG (Coppola et al.) loaded from a *local* directory with
  ``transformers``. Its weights are licensed CC BY-NC 4.0 (non-commercial use only).

Checkpoints must rebuild without the original files: :func:`self_contained_spec`
turns a spec that points at files into one that carries what it needs (the
transformers config dict in ``options["hf_config"]``, the TorchScript bytes in assets).
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError
from ..preprocessing import InputSpec
from .config import EncoderSpec

__all__ = [
    "BuiltinEncoder",
    "TorchScriptEncoder",
    "HubertECGEncoder",
    "TORCHSCRIPT_ASSET",
    "HUBERT_LICENSE",
    "build_foundation_encoder",
    "self_contained_spec",
    "twelve_from_eight",
    "lowpass_fir",
]

log = logging.getLogger(__name__)

TORCHSCRIPT_ASSET = "foundation_encoder.pt"
HUBERT_LICENSE = "CC BY-NC 4.0 (non-commercial use only)"
HUBERT_FS = 100.0  # HuBERT-ECG input: 12 leads x 5 s at 100 Hz
HUBERT_SECONDS = 5.0


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


class TorchScriptEncoder(nn.Module):
    """Wraps a loaded TorchScript module ``(B, 8, T) -> (B, F)``; its parameters train as usual."""

    def __init__(self, module: torch.jit.ScriptModule, out_dim: int):
        super().__init__()
        self.module = module
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


def twelve_from_eight(x: torch.Tensor) -> torch.Tensor:
    """``(B, 8, T)`` leads I, II, V1-V6 -> ``(B, 12, T)`` in standard order.

    Einthoven and Goldberger: III = II - I, aVR = -(I + II) / 2, aVL = I - II / 2,
    aVF = II - I / 2. Exact for raw voltages; on per-lead z-scored input it is the same
    combination of the normalised leads (HuBERT-ECG rescales every lead afterwards).
    """
    lead_i, lead_ii = x[:, 0:1], x[:, 1:2]
    derived = [lead_ii - lead_i, -(lead_i + lead_ii) / 2.0, lead_i - lead_ii / 2.0, lead_ii - lead_i / 2.0]
    return torch.cat([lead_i, lead_ii] + derived + [x[:, 2:8]], dim=1)


def lowpass_fir(factor: int, taps_per_side: int = 60) -> np.ndarray:
    """Hamming-windowed sinc low-pass for decimation by ``factor`` (cutoff 0.76 x new Nyquist).

    At 500 -> 100 Hz: cutoff 38 Hz, 121 taps, so the transition band (about 3.3 / 121 x
    500 Hz = 14 Hz wide) ends below 45 Hz and the stopband (Hamming, about -53 dB) covers
    everything that would alias; unity gain at DC.
    """
    n = np.arange(-taps_per_side, taps_per_side + 1)
    cutoff = 0.76 / factor  # cycles/sample x 2 (fraction of the input Nyquist)
    h = cutoff * np.sinc(cutoff * n) * np.hamming(len(n))
    return (h / h.sum()).astype(np.float32)


class HubertECGEncoder(nn.Module):
    """HuBERT-ECG on LASAN's input. Weights: CC BY-NC 4.0, non-commercial use only.

    ``forward``: 8 -> 12 leads, anti-aliased decimation to 100 Hz (fixed FIR conv with
    stride), crop/pad to 5 s (500 samples), per-lead min-max scaling to [-1, 1] (the
    rescaling HuBERT-ECG was pretrained with), the 12 leads concatenated into one
    6,000-sample sequence (lead-major, as the public model expects), then the mean of
    the last hidden states, optionally projected to ``out_dim``.
    """

    if TYPE_CHECKING:  # a non-persistent buffer, registered in __init__; no run-time annotation (TorchScript)
        fir: torch.Tensor

    def __init__(self, hubert: nn.Module, input_fs: float, hidden_size: int, out_dim: int | None = None):
        super().__init__()
        factor = input_fs / HUBERT_FS
        if abs(factor - round(factor)) > 1e-6 or round(factor) < 1:
            raise ConfigError(
                f"HuBERT-ECG needs 100 Hz input; the model input rate {input_fs:g} Hz is not an integer multiple of 100"
            )
        self.factor = int(round(factor))
        self.n_out = int(HUBERT_FS * HUBERT_SECONDS)
        fir = torch.from_numpy(lowpass_fir(self.factor)).reshape(1, 1, -1)
        self.register_buffer("fir", fir, persistent=False)
        self.pad = fir.shape[-1] // 2
        self.hubert = hubert
        self.proj = nn.Linear(hidden_size, out_dim) if out_dim else nn.Identity()
        self.out_dim = int(out_dim or hidden_size)

    def to_hubert_input(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 8, T)`` model input -> ``(B, 6000)`` HuBERT-ECG input."""
        x12 = twelve_from_eight(x)  # (B, 12, T)
        b, n_leads, t = x12.shape
        y = nn.functional.conv1d(x12.reshape(b * n_leads, 1, t), self.fir, stride=self.factor, padding=self.pad)
        y = y.reshape(b, n_leads, -1)  # (B, 12, T / factor)
        if y.shape[-1] >= self.n_out:
            y = y[..., : self.n_out]
        else:
            y = nn.functional.pad(y, (0, self.n_out - y.shape[-1]))
        lo = y.amin(dim=-1, keepdim=True)
        hi = y.amax(dim=-1, keepdim=True)
        y = 2.0 * (y - lo) / (hi - lo + 1e-6) - 1.0
        return y.reshape(b, n_leads * self.n_out)  # (B, 6000), lead after lead

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.hubert(self.to_hubert_input(x)).last_hidden_state  # (B, frames, H)
        return self.proj(hidden.mean(dim=1))  # (B, out_dim)


def _hubert_from_spec(spec: EncoderSpec, input_spec: InputSpec) -> HubertECGEncoder:
    try:
        from transformers import HubertConfig, HubertModel
    except ImportError as exc:  # optional extra
        raise ConfigError(
            "the hubert_ecg encoder needs the 'transformers' package (pip install lasan[hubert])"
        ) from exc
    opts = dict(spec.options)
    hf_config = opts.pop("hf_config", None)
    out_dim = opts.pop("out_dim", None)
    opts.pop("source", None)
    if opts:
        raise ConfigError(f"unknown hubert_ecg encoder option(s) {sorted(opts)}; known: hf_config, out_dim")
    if spec.path:
        path = Path(spec.path)
        if not (path / "config.json").is_file():
            raise ConfigError(
                f"HuBERT-ECG directory {path} has no config.json; download the model once "
                "(e.g. Edoardo-BS/hubert-ecg-small) and point encoder.path at that local folder"
            )
        log.info("loading HuBERT-ECG from %s (weights licensed %s)", path, HUBERT_LICENSE)
        # HubertModel (not AutoModel with trust_remote_code): the public HuBERT-ECG class
        # subclasses HubertModel, so its encoder weights load without running downloaded code.
        hubert = HubertModel.from_pretrained(str(path), local_files_only=True)
    elif hf_config is not None:
        log.info("building HuBERT-ECG from its stored config (weights licensed %s)", HUBERT_LICENSE)
        hubert = HubertModel(HubertConfig.from_dict(dict(hf_config)))
    else:
        raise ConfigError("a hubert_ecg encoder needs encoder.path (a local HuBERT-ECG directory)")
    return HubertECGEncoder(hubert, input_spec.fs, int(hubert.config.hidden_size), out_dim)


def _torchscript_from_spec(spec: EncoderSpec, input_spec: InputSpec, assets: dict[str, bytes]) -> TorchScriptEncoder:
    if TORCHSCRIPT_ASSET in assets:
        source: Any = io.BytesIO(assets[TORCHSCRIPT_ASSET])
    elif spec.path and Path(spec.path).is_file():
        source = str(spec.path)
    else:
        raise ConfigError(
            f"TorchScript encoder file {spec.path!r} not found and the checkpoint carries no '{TORCHSCRIPT_ASSET}' asset"
        )
    try:
        module = torch.jit.load(source, map_location="cpu")
    except Exception as exc:  # torch raises RuntimeError / ValueError for non-TorchScript files
        raise ConfigError(f"{spec.path or TORCHSCRIPT_ASSET} is not a TorchScript file: {exc}") from exc
    out_dim = spec.options.get("out_dim")
    if out_dim is None:
        # Probe once on a zero input of the model's shape; eval() so BatchNorm accepts B=1.
        was_training = module.training
        module.eval()
        with torch.no_grad():
            out = module(torch.zeros(1, len(input_spec.leads), input_spec.n_samples))
        module.train(was_training)
        if not isinstance(out, torch.Tensor) or out.dim() != 2:
            raise ConfigError("a TorchScript encoder must return one (B, F) tensor for a (B, 8, T) input")
        out_dim = int(out.shape[1])
    return TorchScriptEncoder(module, int(out_dim))


def build_foundation_encoder(
    spec: EncoderSpec, input_spec: InputSpec, assets: dict[str, bytes] | None = None
) -> nn.Module:
    """Instantiate the encoder named by ``spec``.

    ``builtin`` and stored-config ``hubert_ecg`` encoders are freshly initialised (the
    caller or checkpoint loads weights); a ``hubert_ecg`` spec with ``path`` loads the
    pretrained weights from that local directory (CC BY-NC 4.0); a ``torchscript`` spec
    loads the file, or the bytes in ``assets[TORCHSCRIPT_ASSET]`` when a checkpoint
    carries them.

    Raises:
        ConfigError: unknown kind, missing files, or options the encoder does not take.
    """
    assets = assets or {}
    if spec.kind == "builtin":
        try:
            return BuiltinEncoder(n_leads=len(input_spec.leads), **spec.options)
        except TypeError as exc:
            raise ConfigError(f"bad builtin encoder options {spec.options}: {exc}") from exc
    if spec.kind == "torchscript":
        return _torchscript_from_spec(spec, input_spec, assets)
    if spec.kind == "hubert_ecg":
        return _hubert_from_spec(spec, input_spec)
    raise ConfigError(f"encoder kind {spec.kind!r} is not available in this build")


def self_contained_spec(spec: EncoderSpec, encoder: nn.Module) -> tuple[EncoderSpec, dict[str, bytes]]:
    """A spec (and assets) that rebuild ``encoder``'s architecture without the original files.

    The original path is kept as ``options["source"]`` for provenance only.

    Raises:
        ConfigError: the TorchScript file named by the spec cannot be read.
    """
    if spec.kind == "torchscript":
        if not spec.path:
            return spec, {}
        try:
            data = Path(spec.path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read TorchScript encoder {spec.path}: {exc}") from exc
        options = {**spec.options, "out_dim": int(cast(int, encoder.out_dim))}
        return replace(spec, path=None, options=options), {TORCHSCRIPT_ASSET: data}
    if spec.kind == "hubert_ecg" and isinstance(encoder, HubertECGEncoder):
        hf_config = cast(Any, encoder.hubert).config.to_dict()
        options = {**spec.options, "hf_config": _plain(hf_config)}
        if spec.path:
            options["source"] = str(spec.path)
        return replace(spec, path=None, options=options), {}
    return spec, {}


def _plain(value: Any) -> Any:
    """Config dicts as plain JSON-like values (checkpoints load with ``weights_only=True``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)
