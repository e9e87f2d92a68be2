"""Benchmarks (`lasan bench`, `make bench`; the command is in :mod:`.cli`): never part of the tests.

One run measures the model in process, the Triton ensemble and its parts with
perf_analyzer, the ECG readers, and the whole HL7 feed path, each against a baseline
measured in the same run, and prints one Markdown table. The JSON beside it holds every
number, the raw samples and the machine it ran on. docs/performance.md explains the rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lasan.benchmarks.table import Row, not_run

__all__ = ["SECTIONS", "run_benchmarks"]

log = logging.getLogger(__name__)

SECTIONS = ("model", "triton", "runtimes", "ingest", "feed", "multinode")


def _section_failed(section: str, metric: str, exc: BaseException) -> Row:
    log.exception("the %s benchmark failed", section)
    return not_run(section, metric, f"{type(exc).__name__}: {exc}".splitlines()[0][:200])


def run_benchmarks(
    work: Path, *, quick: bool = False, checkpoint: str | None = None, skip: frozenset[str] | set[str] = frozenset(), threads: int | None = None
) -> tuple[list[Row], dict[str, Any]]:
    """Run every section not in ``skip`` and return the rows and the details for the JSON."""
    from lasan.benchmarks.machine import machine_info
    from lasan.build.optimize import apply_thread_settings

    n_threads = apply_thread_settings(threads)
    rows: list[Row] = []
    details: dict[str, Any] = {"quick": quick, "skipped": sorted(skip), "timings_s": {}}
    best_ts: float | None = None
    best_batch: int | None = None

    def section(name: str, label: str, measure) -> None:
        """Run one section; a skipped or failed section is a row that says so, not a lost run."""
        if name in skip:
            rows.append(not_run(name, f"all {label}", f"skipped with --skip {name}"))
            return
        t0 = time.monotonic()
        try:
            new_rows, details[name] = measure()
            rows.extend(new_rows)
        except Exception as exc:
            rows.append(_section_failed(name, label, exc))
        details["timings_s"][name] = time.monotonic() - t0

    def model() -> tuple[Sequence[Row], Any]:
        nonlocal best_ts, best_batch
        from lasan.benchmarks.model import run_model_benchmark

        result = run_model_benchmark(quick=quick, threads=n_threads)
        best_ts, best_batch = result.best_torchscript_ecg_per_s, result.best_batch
        return result.rows, result.details

    def triton() -> tuple[Sequence[Row], Any]:
        from lasan.benchmarks.triton import run_triton_benchmark

        result = run_triton_benchmark(
            work / "bench", quick=quick, checkpoint=checkpoint, in_process_best=best_ts, in_process_batch=best_batch
        )
        return result.rows, result.details

    def runtimes() -> tuple[Sequence[Row], Any]:
        from lasan.benchmarks.runtimes import run_runtime_benchmark

        result = run_runtime_benchmark(work / "bench", quick=quick)
        return result.rows, result.details

    def ingest() -> tuple[Sequence[Row], Any]:
        from lasan.benchmarks.ingest import run_ingest_benchmark
        from lasan.benchmarks.ingest_rows import ingest_rows

        raw = run_ingest_benchmark(repeats=5 if quick else 20)
        return ingest_rows(raw, repeats=5 if quick else 20), raw

    def feed() -> tuple[Sequence[Row], Any]:
        from lasan.benchmarks.feed import run_feed_benchmark

        result = run_feed_benchmark(work / "bench", quick=quick, checkpoint=checkpoint)
        return result.rows, result.details

    def multinode() -> tuple[Sequence[Row], Any]:
        from lasan.benchmarks.multinode import run_multinode_benchmark

        result = run_multinode_benchmark(work / "bench", quick=quick, checkpoint=checkpoint)
        return result.rows, result.details

    section("model", "model rows", model)
    section("triton", "Triton rows", triton)
    section("runtimes", "runtime and precision rows", runtimes)
    section("ingest", "ingest rows", ingest)
    section("feed", "feed rows", feed)
    section("multinode", "multinode rows", multinode)

    details["machine"] = machine_info()
    return rows, details
