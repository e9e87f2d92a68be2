"""``lasan score FILE...``: score ECG files through Triton.

Exit codes: 0 every file scored; 1 at least one file could not be read or was refused by
the model (the others are still scored and printed); 3 Triton unreachable, model not
ready, or timed out (nothing or not everything could be scored: try again later);
2 bad command line (argparse).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import TextIO

from lasan.client.api import DEFAULT_URL, AsyncTritonScorer
from lasan.client.score import ModelInfo, Score
from lasan.errors import LasanError, TritonUnavailableError
from lasan.formats import FORMATS_HELP
from lasan.record import ECGRecord
from lasan.tensor_names import ENSEMBLE_MODEL

__all__ = ["configure", "run", "EXIT_OK", "EXIT_FILE_FAILED", "EXIT_TRITON_UNAVAILABLE"]

EXIT_OK = 0
EXIT_FILE_FAILED = 1
EXIT_TRITON_UNAVAILABLE = 3


class _FileResult:
    """One input file's outcome: a record and score, or the error that stopped it (filled in as work completes)."""

    __slots__ = ("path", "record", "score", "error")

    def __init__(self, path: str) -> None:
        self.path = path
        self.record: ECGRecord | None = None
        self.score: Score | None = None
        self.error: LasanError | None = None


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="ECG files: " + FORMATS_HELP)
    parser.add_argument("--url", default=DEFAULT_URL, help=f"Triton gRPC address (default {DEFAULT_URL})")
    parser.add_argument("--model", default=ENSEMBLE_MODEL, help=f"Triton model name (default {ENSEMBLE_MODEL})")
    parser.add_argument("--json", action="store_true", help="one JSON object per file on stdout (JSON lines)")
    parser.add_argument(
        "--report",
        metavar="OUT.png|OUT.pdf",
        help="draw each scored ECG: a PDF gets one page per file; a PNG one file per input (OUT-1.png, ...)",
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per Triton call (default 30)")
    parser.add_argument("--retries", type=int, default=3, help="retries on transient Triton errors (default 3)")
    parser.add_argument("--concurrency", type=int, default=8, help="ECGs in flight at once (default 8)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")


def _read(path: str) -> ECGRecord:
    from lasan.formats import read_ecg  # the readers import pydicom / hl7apy: only when needed

    return read_ecg(Path(path))


async def _score_all(args: argparse.Namespace, results: list[_FileResult]) -> ModelInfo:
    from tqdm import tqdm

    async with AsyncTritonScorer(args.url, args.model, timeout_s=args.timeout, retries=args.retries) as scorer:
        gate = asyncio.Semaphore(max(1, args.concurrency))
        show = None if not args.no_progress and len(results) > 1 else True  # None: only on a terminal
        with tqdm(total=len(results), unit="ECG", file=sys.stderr, disable=show, leave=False) as bar:

            async def one(item: _FileResult) -> None:
                async with gate:
                    try:
                        # Parsing is CPU work in Python: a thread keeps requests flowing meanwhile.
                        item.record = await asyncio.to_thread(_read, item.path)
                        item.score = await scorer.score(item.record)
                    except LasanError as exc:
                        item.error = exc
                    except OSError as exc:  # missing / unreadable file
                        item.error = LasanError(f"cannot read the file: {exc.strerror or exc}")
                    except Exception as exc:  # a reader bug on one file must not stop the others
                        item.error = LasanError(f"unexpected error ({type(exc).__name__}: {exc}); please report it")
                bar.update(1)

            await asyncio.gather(*(one(r) for r in results))
        return scorer.model_info


def _table(results: list[_FileResult], info: ModelInfo, out: TextIO) -> None:
    scored = [r for r in results if r.score is not None]
    if not scored:
        return
    classes = list(info.classes)
    header = ["file", "predicted", *[f"P({c})" for c in classes], "screening+", "confirmation+", "top leads"]
    rows = []
    for r in scored:
        s = r.score
        assert s is not None
        rows.append(
            [
                r.path,
                s.predicted_class,
                *[f"{s.probabilities.get(c, float('nan')):.3f}" for c in classes],
                ",".join(c for c, v in s.screening.items() if v) or "-",
                ",".join(c for c, v in s.confirmation.items() if v) or "-",
                " ".join(f"{lead}({w:.2f})" for lead, w in s.top_leads(3)),
            ]
        )
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)]
    numeric = {i for i, h in enumerate(header) if h.startswith("P(")}
    for line in [header, *rows]:
        cells = [
            str(x).rjust(w) if i in numeric else str(x).ljust(w)
            for i, (x, w) in enumerate(zip(line, widths, strict=True))
        ]
        print("  ".join(cells).rstrip(), file=out)
    print(f"model {info.name} version {info.version}; research use only, not a medical device", file=out)


def run(args: argparse.Namespace) -> int:
    """Score ``args.files``; see the module docstring for exit codes."""
    results = [_FileResult(p) for p in args.files]
    try:
        info = asyncio.run(_score_all(args, results))
    except TritonUnavailableError as exc:
        print(f"lasan score: error: {exc}", file=sys.stderr)
        return EXIT_TRITON_UNAVAILABLE
    if args.json:
        for r in results:
            line = (
                {"file": r.path, **r.score.to_dict()}
                if r.score
                else {"file": r.path, "error": str(r.error), "error_type": type(r.error).__name__}
            )
            print(json.dumps(line), flush=True)
    else:
        _table(results, info, sys.stdout)
    failed = [r for r in results if r.error is not None]
    for r in failed:
        print(f"lasan score: {r.path}: {type(r.error).__name__}: {r.error}", file=sys.stderr)
    if args.report:
        from lasan.client.report import write_ecg_reports  # matplotlib only when asked

        items = [
            (r.record, r.score, Path(r.path).name) for r in results if r.score is not None and r.record is not None
        ]
        if items:
            for written in write_ecg_reports(items, args.report):
                print(f"lasan score: report written to {written}", file=sys.stderr)
    if any(isinstance(r.error, TritonUnavailableError) for r in failed):
        return EXIT_TRITON_UNAVAILABLE
    return EXIT_FILE_FAILED if failed else EXIT_OK
