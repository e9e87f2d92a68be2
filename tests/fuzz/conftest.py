from __future__ import annotations

import json
import os

from contract import TOTALS


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    """Per-target executions and time; LASAN_FUZZ_TOTALS=FILE.json also writes them for scripts/fuzz_totals.py."""
    if not TOTALS:
        return
    mode = f"LASAN_FUZZ_EXAMPLES={os.environ['LASAN_FUZZ_EXAMPLES']}" if os.environ.get("LASAN_FUZZ_EXAMPLES") else "short"
    terminalreporter.write_line(f"fuzz totals ({mode}):")
    for target, (count, seconds) in sorted(TOTALS.items()):
        terminalreporter.write_line(f"  {target:<18} {int(count):>8} executions {seconds:8.1f} s")
    out = os.environ.get("LASAN_FUZZ_TOTALS")
    if out:
        with open(out, "w", encoding="utf-8") as f:
            json.dump({t: {"executions": int(c), "seconds": s} for t, (c, s) in TOTALS.items()}, f, indent=1)
