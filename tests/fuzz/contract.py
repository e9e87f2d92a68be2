"""The reader contract the fuzz harnesses check, and their settings.

``read_ecg`` returns an :class:`~lasan.record.ECGRecord` or raises a
:class:`~lasan.errors.LasanError` subclass, nothing else, within 2 s. A short deterministic
run is part of ``make test``; ``LASAN_FUZZ_EXAMPLES=N`` makes every harness try N inputs
(see docs/reliability.md for the long-run command and the totals measured).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, settings

from lasan.errors import LasanError
from lasan.record import ECGRecord

__all__ = ["FUZZ", "TOTALS", "assert_contract"]

_EXAMPLES = int(os.environ.get("LASAN_FUZZ_EXAMPLES", "0") or 0)
# Short run: deterministic (same inputs every time), a few dozen inputs per harness. Long run:
# random, N inputs, and the 2 s budget enforced per input by hypothesis (in the short run the
# generous deadline only catches hangs, so that a loaded CI machine does not fail on speed).
FUZZ = settings(
    max_examples=_EXAMPLES or 40,
    derandomize=not _EXAMPLES,
    deadline=timedelta(seconds=2 if _EXAMPLES else 20),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    print_blob=True,
)
TOTALS: dict[str, list[float]] = {}  # harness -> [executions, seconds], printed by conftest in long runs


def assert_contract(target: str, read: Callable[[], object]) -> None:
    """Call ``read``; anything but a record or a LasanError fails the harness, naming the exception."""
    start = time.perf_counter()
    try:
        result = read()
    except LasanError:
        pass
    except RecursionError as exc:  # hypothesis shows this one truncated; name it plainly
        raise AssertionError(f"{target}: RecursionError escaped the reader") from exc
    else:
        assert isinstance(result, ECGRecord), f"{target}: returned {type(result).__name__}, not an ECGRecord"
    finally:
        entry = TOTALS.setdefault(target, [0, 0.0])
        entry[0] += 1
        entry[1] += time.perf_counter() - start


def core_tests_path() -> None:
    """Make the vendor-format builders of tests/core importable (they write each format from its spec)."""
    core = str(Path(__file__).resolve().parents[1] / "core")
    if core not in sys.path:
        sys.path.insert(0, core)
