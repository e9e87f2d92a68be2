"""The accuracy gate for lower-precision builds, and the CPU features a build measured on.

A bf16 or int8 repository is written only if, on the checkpoint's validation split, no
class's one-vs-rest AUROC drops by more than :data:`MAX_AUROC_DROP` and no calibrated
probability moves by more than :data:`MAX_PROBABILITY_SHIFT` against the fp32 model; otherwise
:class:`~lasan.errors.PrecisionGateError` says which class, by how much, and what to do.
Calibration data for int8 comes from the training split, never from the split it is judged on.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lasan.errors import ConfigError, PrecisionGateError

__all__ = [
    "MAX_AUROC_DROP",
    "MAX_PROBABILITY_SHIFT",
    "ISA_FLAGS",
    "PrecisionData",
    "GateResult",
    "isa_features",
    "load_precision_data",
    "compare_precision",
    "check_precision",
]

MAX_AUROC_DROP = 0.005
MAX_PROBABILITY_SHIFT = 0.02
# What oneDNN and ONNX Runtime dispatch bf16/int8 work to (absent flags mean slower fallbacks).
ISA_FLAGS: tuple[str, ...] = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_bf16", "amx_int8",
)


@dataclass(frozen=True)
class PrecisionData:
    """Model inputs for a lower-precision build: calibration (training split) and the gate's validation set."""

    calibration: np.ndarray  # (N, leads, T) float32, training split
    validation: np.ndarray  # (M, leads, T) float32, validation split
    labels: np.ndarray  # (M,) class indices of ``validation``
    source: str = ""  # where they came from, for the build record


@dataclass(frozen=True)
class GateResult:
    """fp32 vs lower precision on the validation split."""

    precision: str
    n_validation: int
    auroc_fp32: dict[str, float]
    auroc: dict[str, float]
    max_probability_shift: float
    limits: dict[str, float] = field(
        default_factory=lambda: {"auroc_drop": MAX_AUROC_DROP, "probability_shift": MAX_PROBABILITY_SHIFT}
    )

    @property
    def auroc_drop(self) -> dict[str, float]:
        return {c: self.auroc_fp32[c] - self.auroc[c] for c in self.auroc_fp32}

    def problems(self) -> list[str]:
        out = []
        for c, drop in self.auroc_drop.items():
            if math.isfinite(drop) and drop > MAX_AUROC_DROP:
                out.append(
                    f"validation AUROC of {c} dropped by {drop:.4f} ({self.auroc_fp32[c]:.4f} -> {self.auroc[c]:.4f}; "
                    f"limit {MAX_AUROC_DROP})"
                )
        if self.max_probability_shift > MAX_PROBABILITY_SHIFT:
            out.append(
                f"a calibrated probability moved by {self.max_probability_shift:.4f} (limit {MAX_PROBABILITY_SHIFT})"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "precision": self.precision,
            "n_validation": self.n_validation,
            "auroc_fp32": self.auroc_fp32,
            "auroc": self.auroc,
            "auroc_drop": self.auroc_drop,
            "max_probability_shift": self.max_probability_shift,
            "limits": self.limits,
            "passed": not self.problems(),
        }


def isa_features(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU's model, the bf16/int8-relevant ISA flags from ``/proc/cpuinfo``, and torch's dispatch level."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    flags: set[str] = set()
    model = ""
    for line in cpuinfo.splitlines():
        if line.startswith("flags") and not flags:
            flags = set(line.split(":", 1)[1].split())
        elif line.startswith("model name") and not model:
            model = line.split(":", 1)[1].strip()
    out: dict[str, Any] = {"cpu_model": model, "flags": [f for f in ISA_FLAGS if f in flags]}
    try:
        import torch

        out["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except (ImportError, AttributeError):
        pass
    return out


def _auroc_per_class(probs: np.ndarray, labels: np.ndarray, classes: Sequence[str]) -> dict[str, float]:
    from lasan.train.metrics import auroc

    return {c: auroc(labels == k, probs[:, k]) for k, c in enumerate(classes)}


def compare_precision(
    fp32_probs: np.ndarray, probs: np.ndarray, labels: np.ndarray, classes: Sequence[str], precision: str
) -> GateResult:
    """Per-class AUROC of both and the largest probability change; raises nothing."""
    fp32_probs, probs = np.asarray(fp32_probs, np.float64), np.asarray(probs, np.float64)
    return GateResult(
        precision=precision,
        n_validation=int(len(labels)),
        auroc_fp32=_auroc_per_class(fp32_probs, labels, classes),
        auroc=_auroc_per_class(probs, labels, classes),
        max_probability_shift=float(np.abs(fp32_probs - probs).max()) if len(probs) else 0.0,
    )


def check_precision(
    fp32: Callable[[np.ndarray], np.ndarray],
    candidate: Callable[[np.ndarray], np.ndarray],
    data: PrecisionData,
    classes: Sequence[str],
    precision: str,
    batch: int = 16,
) -> GateResult:
    """Run both models (input -> calibrated probabilities) over the validation split and apply the gate.

    Raises:
        PrecisionGateError: a class's AUROC dropped by more than 0.005 or a probability moved by more than 0.02.
    """
    x = data.validation

    def probs(fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)])

    result = compare_precision(probs(fp32), probs(candidate), data.labels, classes, precision)
    problems = result.problems()
    if problems:
        raise PrecisionGateError(
            f"the {precision} build was not written: on {result.n_validation} validation ECGs "
            + "; ".join(problems)
            + ". Serve fp32 (the default), or try the other lower precision (--precision bf16 / int8)."
        )
    return result


def load_precision_data(
    manifest: str | Path,
    ckpt: Any,
    cache_dir: str | Path | None = None,
    n_calibration: int = 128,
    max_validation: int | None = None,
    seed: int = 0,
) -> PrecisionData:
    """The checkpoint's own patient split of ``manifest``: ``n_calibration`` training ECGs and the validation ECGs.

    Raises:
        ConfigError: the manifest has no training or no validation ECGs for this checkpoint's split.
        ECGFormatError: an ECG cannot be read.
    """
    from lasan.train.dataset import load_arrays
    from lasan.train.evaluate_cli import split_seed_of
    from lasan.train.manifest import read_manifest
    from lasan.train.split import patient_split

    manifest = Path(manifest)
    split_seed = split_seed_of(ckpt)
    parts = patient_split(read_manifest(manifest), seed=split_seed)
    train, val = list(parts.train), list(parts.val)
    if not train or not val:
        raise ConfigError(
            f"{manifest} has {len(train)} training and {len(val)} validation ECGs under split seed {split_seed}; "
            "a lower-precision build needs both (calibration from training, the accuracy gate on validation)"
        )
    rng = np.random.default_rng(seed)
    picked = sorted(rng.choice(len(train), size=min(n_calibration, len(train)), replace=False).tolist())
    if max_validation is not None and len(val) > max_validation:
        val = [val[i] for i in sorted(rng.choice(len(val), size=max_validation, replace=False).tolist())]
    spec, classes = ckpt.config.input, tuple(ckpt.config.classes)
    calib = load_arrays([train[i] for i in picked], spec, classes, cache_dir, manifest.parent)
    valid = load_arrays(val, spec, classes, cache_dir, manifest.parent)
    return PrecisionData(
        calib.x, valid.x, valid.y,
        source=f"{manifest} (split seed {split_seed}): {len(calib)} training ECGs to calibrate, "
        f"{len(valid)} validation ECGs for the gate",
    )
