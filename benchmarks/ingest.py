"""Ingest benchmark: time to turn a 12-lead 10 s 500 Hz ECG message or file into a record.

The baseline is hl7apy's full parse (``hl7apy.parser.parse_message``) of the very same
HL7 NA message, measured in the same run: that is what a listener built on a general
HL7 library would pay before it even converts a sample. Run with
``python -m lasan.benchmarks.ingest``; not a test (timings vary by machine).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["median_seconds", "run_ingest_benchmark", "format_rows", "main"]


def median_seconds(fn: Callable[[], object], repeats: int, *, warm_up: bool = True) -> tuple[float, float]:
    """Median wall-clock and CPU seconds of ``fn``: on a shared machine CPU time is steadier."""
    if warm_up:
        fn()  # imports, caches
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def run_ingest_benchmark(*, repeats: int = 20, baseline_repeats: int = 1) -> list[dict[str, Any]]:
    """Time each reader on the same synthetic ECG; one row per measurement.

    Rows have ``name``, ``seconds`` (median wall clock), ``cpu_seconds`` (median CPU
    time), ``bytes`` (input size) and ``ratio`` (hl7apy's wall time divided by this
    row's; 1.0 for the baseline itself).
    """
    from hl7apy.parser import parse_message

    from lasan.formats import read_ecg, write_ecg
    from lasan.formats.dicom import read_dicom
    from lasan.formats.sample import sample_ecg
    from lasan.formats.wfdb_io import read_wfdb
    from lasan.hl7.oru import build_oru, parse_oru

    record = sample_ecg(fs=500.0, duration_s=10.0)
    na = build_oru(record, style="na", control_id="BENCH-NA")
    ed = build_oru(record, style="ed", control_id="BENCH-ED")
    na_text = na.decode("utf-8")
    with tempfile.TemporaryDirectory() as tmp:
        dicom_path = write_ecg(record, Path(tmp) / "ecg.dcm")
        wfdb_path = write_ecg(record, Path(tmp) / "ecg", "wfdb")
        dicom_size = dicom_path.stat().st_size
        wfdb_size = wfdb_path.stat().st_size + wfdb_path.with_suffix(".dat").stat().st_size
        # hl7apy loads its grammar on first use: warm it up on a message without waveforms,
        # so that the baseline times parsing only (and the multi-second parse runs once).
        parse_message(na_text.split("\rOBX", 1)[0] + "\r")
        baseline = median_seconds(lambda: parse_message(na_text), baseline_repeats, warm_up=False)
        rows = [
            ("hl7apy parse_message (HL7 NA, baseline)", baseline, len(na)),
            ("lasan parse_oru (HL7 NA)", median_seconds(lambda: parse_oru(na), repeats), len(na)),
            ("lasan parse_oru (HL7 ED, base64 DICOM)", median_seconds(lambda: parse_oru(ed), repeats), len(ed)),
            ("lasan read_dicom (DICOM file)", median_seconds(lambda: read_dicom(dicom_path), repeats), dicom_size),
            ("lasan read_wfdb (WFDB record)", median_seconds(lambda: read_wfdb(wfdb_path), repeats), wfdb_size),
            ("lasan read_ecg (HL7 NA, with detection)", median_seconds(lambda: read_ecg(na), repeats), len(na)),
        ]
    return [
        {"name": name, "seconds": wall, "cpu_seconds": cpu, "bytes": size, "ratio": baseline[0] / wall}
        for name, (wall, cpu), size in rows
    ]


def format_rows(rows: list[dict[str, Any]]) -> str:
    """A fixed-width table: time in ms, input size, speed-up against hl7apy."""
    width = max(len(row["name"]) for row in rows)
    lines = [
        "ingest: 12-lead, 10 s, 500 Hz ECG (synthetic), median of repeated reads",
        f"{'reader'.ljust(width)}  {'wall':>11}  {'cpu':>11}  {'input':>9}  {'x hl7apy':>9}",
    ]
    for row in rows:
        lines.append(
            f"{row['name'].ljust(width)}  {row['seconds'] * 1e3:8.2f} ms  {row['cpu_seconds'] * 1e3:8.2f} ms  "
            f"{row['bytes'] / 1024:6.0f} KB  "
            f"{row['ratio']:8.1f}x"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lasan.benchmarks.ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20, help="timed reads per LASAN reader (median reported)")
    parser.add_argument("--baseline-repeats", type=int, default=1, help="hl7apy parses (each takes seconds)")
    args = parser.parse_args(argv)
    print(format_rows(run_ingest_benchmark(repeats=args.repeats, baseline_repeats=args.baseline_repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
