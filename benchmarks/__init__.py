"""Benchmarks (`lasan bench`, `make bench`): never part of the tests.

One run measures the model in process, the Triton ensemble and its parts with
perf_analyzer, the ECG readers, and the whole HL7 feed path, each against a baseline
measured in the same run, and prints one Markdown table. The JSON beside it holds every
number, the raw samples and the machine it ran on. docs/performance.md explains the rows.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from lasan.benchmarks.table import Row, not_run, render_markdown, rows_to_json

__all__ = ["configure", "run", "SECTIONS", "run_benchmarks"]

log = logging.getLogger(__name__)

SECTIONS = ("model", "triton", "ingest", "feed")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter windows (a smoke run)")
    parser.add_argument("--work", default="work", help="work folder; results go to WORK/bench (default: work)")
    parser.add_argument("--checkpoint", help="checkpoint to serve (default: the paper architecture, random weights)")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the usable CPUs)")
    parser.add_argument("--results", help="results folder (default: WORK/bench)")


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

    def ingest() -> tuple[Sequence[Row], Any]:
        from lasan.benchmarks.ingest import run_ingest_benchmark
        from lasan.benchmarks.ingest_rows import ingest_rows

        raw = run_ingest_benchmark(repeats=5 if quick else 20)
        return ingest_rows(raw, repeats=5 if quick else 20), raw

    def feed() -> tuple[Sequence[Row], Any]:
        from lasan.benchmarks.feed import run_feed_benchmark

        result = run_feed_benchmark(work / "bench", quick=quick, checkpoint=checkpoint)
        return result.rows, result.details

    section("model", "model rows", model)
    section("triton", "Triton rows", triton)
    section("ingest", "ingest rows", ingest)
    section("feed", "feed rows", feed)

    details["machine"] = machine_info()
    return rows, details


def run(args: argparse.Namespace) -> int:
    from lasan.benchmarks.machine import describe

    work = Path(args.work)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = skip - set(SECTIONS)
    if unknown:
        from lasan.errors import ConfigError

        raise ConfigError(f"--skip takes {', '.join(SECTIONS)}; unknown: {', '.join(sorted(unknown))}")
    started = time.monotonic()
    rows, details = run_benchmarks(
        work, quick=args.quick, checkpoint=args.checkpoint, skip=skip, threads=args.threads
    )
    details["total_s"] = time.monotonic() - started
    out = Path(args.results) if args.results else work / "bench"
    out.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    table = render_markdown(rows)
    caption = f"Measured on {describe(details['machine'])}; whole run {details['total_s']:.0f} s" + (
        " (--quick)" if args.quick else ""
    )
    payload = {"rows": rows_to_json(rows), **details}
    json_path = out / f"results-{stamp}.json"
    json_path.write_text(json.dumps(payload, indent=2, default=str))
    (out / "latest.md").write_text(f"{table}\n\n{caption}\n")
    (out / "latest.json").write_text(json.dumps(payload, indent=2, default=str))
    print(table)
    print()
    print(caption)
    example = details.get("triton", {}).get("perf_analyzer_example")
    if example:
        print(f"perf_analyzer (against the server this run started; its port is gone now): {example}")
    print(f"results: {json_path} and {out / 'latest.md'}")
    return 0
