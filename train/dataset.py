"""Manifest rows -> preprocessed model input, cached on disk, plus training augmentation.

Every ECG goes through :func:`lasan.formats.read_ecg` and
:func:`lasan.preprocessing.preprocess` with the model's own :class:`InputSpec` -- the
same code the served pipeline runs -- and the result is cached as ``.npy`` keyed by the
file's SHA-256 and the InputSpec, so epochs, evaluation and later runs never re-read or
re-filter a file, and a changed file or spec never reuses a stale array.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lasan.errors import ConfigError, ECGFormatError
from lasan.preprocessing import InputSpec, preprocess

__all__ = ["ECGArrays", "Augment", "load_arrays", "cache_key", "file_digest", "batches"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ECGArrays:
    """A split in memory: ``x (N, L, T)`` float32 model input, ``y (N,)`` class indices."""

    x: np.ndarray
    y: np.ndarray
    patient_ids: tuple[str, ...]
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def counts(self) -> dict[str, int]:
        return {c: int((self.y == k).sum()) for k, c in enumerate(self.classes)}


def cache_key(file_sha256: str, spec: InputSpec) -> str:
    """Cache file stem for one ECG under one InputSpec."""
    spec_hash = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()
    return f"{file_sha256[:32]}-{spec_hash[:16]}"


def file_digest(path: Path) -> str:
    """SHA-256 of an ECG's bytes; for a WFDB record (``.hea`` or base path) of all its files.

    Raises:
        OSError: the file (or every file of the WFDB record) is missing.
    """
    h = hashlib.sha256()
    if path.is_file() and path.suffix != ".hea":
        h.update(path.read_bytes())
        return h.hexdigest()
    base = path.with_suffix("") if path.suffix == ".hea" else path
    files = sorted(base.parent.glob(base.name + ".*"))  # header + signal files (.dat, ...)
    if not files:
        raise FileNotFoundError(f"no such ECG file or WFDB record: {path}")
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _preprocessed(path: Path, spec: InputSpec, cache_dir: Path | None) -> np.ndarray:
    from lasan.formats import read_ecg  # the readers import pydicom/wfdb; only needed on a cache miss path

    target = cache_dir / f"{cache_key(file_digest(path), spec)}.npy" if cache_dir else None
    if target is not None and target.is_file():
        return np.load(target)
    x = preprocess(read_ecg(path), spec)
    if target is not None:
        tmp = target.with_suffix(".tmp.npy")
        np.save(tmp, x)
        tmp.replace(target)  # atomic: a killed run never leaves a half-written cache entry
    return x


def load_arrays(
    rows: Sequence[Any],
    spec: InputSpec,
    classes: Sequence[str],
    cache_dir: str | Path | None = None,
    base_dir: str | Path | None = None,
    progress: bool = False,
) -> ECGArrays:
    """Read and preprocess the ECGs of manifest ``rows`` (each with ``path``, ``label``, ``patient_id``).

    Relative paths are resolved against ``base_dir`` (the manifest's folder).

    Raises:
        ConfigError: a row's label is not one of ``classes``.
        ECGFormatError: a file cannot be read or preprocessed (the message names the file).
    """
    cache = Path(cache_dir) if cache_dir else None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
    xs, ys, pids = [], [], []
    iterator: Any = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="preprocess", unit="ecg", leave=False)
    for row in iterator:
        label = str(row.label)
        if label not in classes:
            raise ConfigError(f"manifest label {label!r} (patient {row.patient_id}) is not one of {list(classes)}")
        path = Path(row.path)
        if not path.is_absolute() and base_dir is not None:
            path = Path(base_dir) / path
        try:
            xs.append(_preprocessed(path, spec, cache))
        except (ECGFormatError, OSError) as exc:
            raise ECGFormatError(f"{path}: {exc}") from exc
        ys.append(list(classes).index(label))
        pids.append(str(row.patient_id))
    x = np.stack(xs) if xs else np.zeros((0, len(spec.leads), spec.n_samples), np.float32)
    return ECGArrays(x.astype(np.float32), np.asarray(ys, dtype=np.int64), tuple(pids), tuple(classes))


@dataclass(frozen=True)
class Augment:
    """Light augmentation of the *preprocessed* array (so the input contract is unchanged).

    Per ECG: amplitude scale in ``[1 - scale, 1 + scale]`` (per lead), circular time shift
    up to ``shift_s`` seconds (the window start is arbitrary within a resting ECG), and
    Gaussian noise of ``noise_std`` (input is z-scored, so this is relative to lead SD).
    """

    scale: float = 0.1
    shift_s: float = 0.2
    noise_std: float = 0.05
    fs: float = 500.0

    def __call__(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        b, n_leads, t = x.shape  # (B, L, T)
        gain = 1.0 + (torch.rand(b, n_leads, 1, generator=gen) * 2.0 - 1.0) * self.scale
        max_shift = int(self.shift_s * self.fs)
        if max_shift > 0:
            shifts = torch.randint(-max_shift, max_shift + 1, (b,), generator=gen)
            idx = (torch.arange(t)[None, :] - shifts[:, None]) % t  # (B, T)
            x = torch.gather(x, 2, idx[:, None, :].expand(b, n_leads, t))
        return x * gain + torch.randn(x.shape, generator=gen) * self.noise_std


def batches(
    data: ECGArrays, batch_size: int, gen: torch.Generator | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Mini-batches as tensors; shuffled when ``gen`` is given (training), in order otherwise."""
    n = len(data)
    order = torch.randperm(n, generator=gen) if gen is not None else torch.arange(n)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    return [(x[idx], y[idx]) for idx in order.split(batch_size)]
