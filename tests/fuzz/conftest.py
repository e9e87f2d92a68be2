from __future__ import annotations

import os

from contract import TOTALS


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Per-target executions and time, for docs/reliability.md (long runs set LASAN_FUZZ_EXAMPLES)."""
    if not TOTALS:
        return
    mode = f"LASAN_FUZZ_EXAMPLES={os.environ['LASAN_FUZZ_EXAMPLES']}" if os.environ.get("LASAN_FUZZ_EXAMPLES") else "short"
    terminalreporter.write_line(f"fuzz totals ({mode}):")
    for target, (count, seconds) in sorted(TOTALS.items()):
        terminalreporter.write_line(f"  {target:<14} {int(count):>8} executions {seconds:8.1f} s")
