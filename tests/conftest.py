"""Shared pytest fixtures (owned by build/; every test package may use them).

Checkpoints (session-scoped, built in a few seconds, no training):

``tiny_lasan_checkpoint`` -> Path
    A small LASAN (CNN widths 8-16-16-32, d_model 32, 2 inter-lead layers, 4 heads) with
    seeded random weights, non-trivial BatchNorm statistics and a sharpened lead query so
    that probabilities (about 0.29-0.40) and lead importance vary between ECGs. Carries
    thresholds ``TINY_THRESHOLDS`` (screening 0.3/0.33/0.3, confirmation 0.34/0.35/0.34) and
    ``data_summary = {"synthetic": True, ...}``.
``tiny_hybrid_checkpoint`` -> Path
    The same LASAN branch plus the builtin foundation encoder (width 8, depth 2, 16 features).

Repository and server (session-scoped):

``cpu_repository`` -> Path
    ``lasan.build.build_repository(tiny_lasan_checkpoint, ..., profile="cpu", max_batch_size=8)``.
``triton_server`` -> :class:`ServedRepository`
    The embedded Triton 2.51 serving ``cpu_repository`` on free loopback ports:
    ``.grpc_url`` ("127.0.0.1:PORT"), ``.http_url`` ("http://127.0.0.1:PORT"), ``.metrics_url``,
    ``.checkpoint`` (Path of the checkpoint it serves), ``.repository``, ``.server``
    (the :class:`lasan.build.serve.TritonServer`). Started once, stopped at session end.
    Tests that use it should be marked ``@pytest.mark.slow``.

Helpers:

``free_tcp_port`` -> callable ``() -> int``
    A port that is free on 127.0.0.1 (same as :func:`lasan.build.serve.free_port`).
``make_tiny_checkpoint(path, kind="lasan", thresholds=True, seed=0)`` (module function)
    Write another tiny checkpoint (e.g. one without thresholds).
``simple_ecg(rng, n_leads, fs, seconds)`` (module function)
    A quick plausible ECG array in mV (8 or 12 rows in canonical order); ``from conftest import simple_ecg``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

TINY_THRESHOLDS = {
    # Close to the tiny models' probabilities (about 0.29-0.40), so decisions differ between ECGs.
    "screening": {"ARVC": 0.3, "LQTS": 0.33, "control": 0.3},
    "confirmation": {"ARVC": 0.34, "LQTS": 0.35, "control": 0.34},
}


def simple_ecg(rng: np.random.Generator, n_leads: int, fs: float, seconds: float) -> np.ndarray:
    """A plausible ECG ``(n_leads, samples)`` in mV, float32: Gaussian P-QRS-T beats at a random
    heart rate with per-lead amplitudes and polarity, baseline wander and noise."""
    t = np.arange(int(fs * seconds)) / fs
    rr = 60.0 / rng.uniform(50, 110)
    phase = (t % rr) / rr
    sig = np.empty((n_leads, t.size))
    for i in range(n_leads):
        g = rng.uniform(0.3, 1.5, 3) * rng.choice([-1, 1], 3)
        sig[i] = (
            g[0] * 0.15 * np.exp(-(((phase - 0.15) / 0.03) ** 2))
            + g[1] * np.exp(-(((phase - 0.3) / 0.012) ** 2))
            + g[2] * 0.3 * np.exp(-(((phase - 0.6) / 0.06) ** 2))
            + 0.1 * np.sin(2 * np.pi * 0.25 * t + i)
            + rng.normal(0, 0.02, t.size)
        )
    return sig.astype(np.float32)


def make_tiny_checkpoint(path: Path, kind: str = "lasan", thresholds: bool = True, seed: int = 0) -> Path:
    """Write a tiny LASAN or hybrid checkpoint with seeded, deliberately non-uniform weights."""
    import torch

    from lasan.checkpoint import CheckpointInfo, save_checkpoint
    from lasan.models import EncoderSpec, HybridConfig, LASANConfig, build_model
    from lasan.preprocessing import preprocess_array

    torch.manual_seed(seed)
    lasan_cfg = LASANConfig(cnn_channels=(8, 16, 16, 32), d_model=32, ff_dim=64, head_hidden=16, n_layers=2)
    if kind == "lasan":
        cfg = lasan_cfg
    elif kind == "hybrid":
        cfg = HybridConfig(
            lasan=lasan_cfg, encoder=EncoderSpec(options={"width": 8, "depth": 2, "out_dim": 16}), fusion_dim=32
        )
    else:
        raise ValueError(kind)
    model = build_model(cfg).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        # Random init gives near-uniform lead weights; sharpen them so lead-importance tests can fail.
        branch = model.fusion.branch
        branch.query.normal_(0.0, 3.0)
        branch.key.weight.mul_(5.0)
        # ... and centre and amplify the logits (k * (logits - mean) on simple ECGs), so that
        # different ECGs get visibly different probabilities instead of one bias-dominated answer.
        last = model.fusion.head.net[-1]
        rng = np.random.default_rng(seed)
        calib = [preprocess_array(simple_ecg(rng, 12, 500.0, 10.0), 500.0) for _ in range(16)]
        logits = model(torch.from_numpy(np.stack(calib)))[0]
        k = min(100.0, 1.0 / float(logits.std(dim=0).mean().clamp_min(1e-6)))
        last.weight.mul_(k)
        last.bias.sub_(logits.mean(dim=0)).mul_(k)
    info = CheckpointInfo(
        thresholds=TINY_THRESHOLDS if thresholds else {},
        data_summary={"synthetic": True, "description": "untrained tiny test model", "n_records": 0},
        metrics={},
    )
    return save_checkpoint(path, model, info)


@dataclass(frozen=True)
class ServedRepository:
    grpc_url: str
    http_url: str
    metrics_url: str
    checkpoint: Path
    repository: Path
    server: object  # lasan.build.serve.TritonServer


@pytest.fixture(scope="session")
def tiny_lasan_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_lasan.pt", "lasan")


@pytest.fixture(scope="session")
def tiny_hybrid_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_hybrid.pt", "hybrid", seed=1)


@pytest.fixture(scope="session")
def cpu_repository(tiny_lasan_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lasan.build.repository import build_repository

    return build_repository(
        tiny_lasan_checkpoint, tmp_path_factory.mktemp("repo") / "model_repository", "cpu", max_batch_size=8
    )


@pytest.fixture(scope="session")
def free_tcp_port() -> Callable[[], int]:
    from lasan.build.serve import free_port

    return free_port


@pytest.fixture(scope="session")
def triton_server(
    cpu_repository: Path, tiny_lasan_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServedRepository]:
    from lasan.build.serve import TritonServer, free_port

    work = tmp_path_factory.mktemp("triton")
    server = TritonServer(
        cpu_repository,
        http_port=free_port(),
        grpc_port=free_port(),
        metrics_port=free_port(),
        work_dir=work,
        startup_timeout=300,
    )
    with server:
        yield ServedRepository(
            server.grpc_url, server.http_url, server.metrics_url, tiny_lasan_checkpoint, cpu_repository, server
        )
