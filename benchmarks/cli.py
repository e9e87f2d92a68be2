"""``lasan bench``: run the benchmarks, print the table, write it where the docs link to it."""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

from lasan.benchmarks import SECTIONS, run_benchmarks
from lasan.benchmarks.table import render_markdown, render_targets, rows_to_json

__all__ = ["configure", "run"]

# The published table is generated: README.md and docs/performance.md link to it, never copy it.
_PUBLISHED_HEADER = """# Benchmark results (generated)

Written by `make bench` (`lasan bench --publish docs/benchmarks.md`); do not edit by hand.
What each row means and the analysis of the targets: [performance.md](performance.md).
"""


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter windows (a smoke run)")
    parser.add_argument("--work", default="work", help="work folder; results go to WORK/bench (default: work)")
    parser.add_argument("--checkpoint", help="checkpoint to serve (default: the paper architecture, random weights)")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated sections to skip: {','.join(SECTIONS)}"
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: the usable CPUs)")
    parser.add_argument("--results", help="results folder (default: WORK/bench)")
    parser.add_argument("--publish", metavar="FILE.md",
                        help="also write the table to FILE.md, the one generated copy the docs link to "
                             "(make bench: docs/benchmarks.md)")


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
    if args.publish:
        Path(args.publish).write_text(
            f"{_PUBLISHED_HEADER}\n## Targets\n\n{render_targets(rows)}\n\n## Every row\n\n{table}\n\n{caption}\n"
        )
    print(table)
    print()
    print(caption)
    example = details.get("triton", {}).get("perf_analyzer_example")
    if example:
        print(f"perf_analyzer (against the server this run started; its port is gone now): {example}")
    print(f"results: {json_path} and {out / 'latest.md'}")
    return 0
