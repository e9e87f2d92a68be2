"""Shared pytest fixtures (owned by build/; every test package may use them).

Checkpoints (session-scoped, built in a few seconds, no training):

``tiny_lasan_checkpoint`` -> Path
    A small LASAN (CNN widths 8-16-16-32, d_model 32, 2 inter-lead layers, 4 heads) with
    seeded random weights, non-trivial BatchNorm statistics and a sharpened lead query so
    that probabilities and lead importance vary between ECGs. Carries thresholds
    (screening ARVC/LQTS 0.2, control 0.5; confirmation ARVC/LQTS 0.6, control 0.9) and
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
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

TINY_THRESHOLDS = {
    "screening": {"ARVC": 0.2, "LQTS": 0.2, "control": 0.5},
    "confirmation": {"ARVC": 0.6, "LQTS": 0.6, "control": 0.9},
}


def make_tiny_checkpoint(path: Path, kind: str = "lasan", thresholds: bool = True, seed: int = 0) -> Path:
    """Write a tiny LASAN or hybrid checkpoint with seeded, deliberately non-uniform weights."""
    import torch

    from lasan.checkpoint import CheckpointInfo, save_checkpoint
    from lasan.models import EncoderSpec, HybridConfig, LASANConfig, build_model

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
        # Random init gives near-uniform lead weights; sharpen them so lead-importance tests can fail.
        branch = model.fusion.branch
        branch.query.normal_(0.0, 3.0)
        branch.key.weight.mul_(5.0)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 2.0)
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
