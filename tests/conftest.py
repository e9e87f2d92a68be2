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
    ``lasan.build.write_repository(tiny_lasan_checkpoint, ..., profile="cpu", max_batch_size=8).path``.
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
``make_single_lead_checkpoint(path, lead="V2", temperature=2.0)`` (module function)
    A tiny LASAN whose decision depends on one lead only (constructed weights, calibrated
    with ``temperature``): occlusion importance must put (nearly) all weight on that lead.
``simple_ecg(rng, n_leads, fs, seconds)`` (module function)
    A quick plausible ECG array in mV (8 or 12 rows in canonical order); all four live in ``tests/testkit.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from testkit import TINY_THRESHOLDS, make_single_lead_checkpoint, make_tiny_checkpoint, simple_ecg  # noqa: F401


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
    from lasan.build.repository import write_repository

    return write_repository(
        tiny_lasan_checkpoint, tmp_path_factory.mktemp("repo") / "model_repository", "cpu", max_batch_size=8
    ).path


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
