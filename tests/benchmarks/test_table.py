"""The results table and the parsers behind it (no timing is asserted anywhere here)."""

from __future__ import annotations

import pytest

from lasan.benchmarks.feed import percentile
from lasan.benchmarks.table import Row, not_run, render_markdown
from lasan.benchmarks.triton import parse_perf_csv, perf_analyzer_command

# Written by perf_analyzer 2.51 (-f) against this project's encoder model.
PERF_CSV = (
    "Concurrency,Inferences/Second,Client Send,Network+Server Send/Recv,Server Queue,Server Compute Input,"
    "Server Compute Infer,Server Compute Output,Client Recv,p50 latency,p90 latency,p95 latency,p99 latency\n"
    "1,9.98742,16,566,2294,53,95983,791,5,99336,129254,134194,140714\n"
)


def test_every_row_has_all_columns_and_misses_are_marked():
    rows = [
        Row("model", "FLOP rate / peak", 120.0, "GFLOP/s", baseline="peak 200", ratio=0.6, target=">= 0.6", met=True),
        Row("feed", "ACK p99", 35.0, "ms", target="<= 20 ms", met=False, note="p50 9 ms"),
        not_run("triton", "ensemble at concurrency 8", "perf_analyzer failed", target=">= 0.9"),
    ]
    lines = render_markdown(rows).splitlines()
    assert lines[0] == "| section | metric | value | baseline | ratio | target | met? |"
    assert len(lines) == 2 + len(rows)
    assert all(line.count(" | ") == 6 for line in lines[2:])
    assert lines[2].endswith("| 0.6 | >= 0.6 | yes |")
    assert "35.0 ms (p50 9 ms)" in lines[3] and lines[3].endswith("**MISSED** |")
    assert "not run: perf_analyzer failed" in lines[4] and lines[4].endswith("not measured |")


def test_pipes_in_notes_do_not_break_the_table():
    line = render_markdown([Row("ingest", "a|b", 1.0, note="x|y")]).splitlines()[2]
    assert line.count(" | ") == 6


def test_perf_analyzer_csv_is_read_in_milliseconds(tmp_path):
    path = tmp_path / "perf.csv"
    path.write_text(PERF_CSV)
    (result,) = parse_perf_csv(path, "encoder")
    assert result.concurrency == 1
    assert result.throughput == pytest.approx(9.98742)
    assert (result.p50_ms, result.p95_ms, result.p99_ms) == pytest.approx((99.336, 134.194, 140.714))
    assert result.server_queue_ms == pytest.approx(2.294)
    assert result.server_compute_ms == pytest.approx(0.053 + 95.983 + 0.791)


def test_perf_analyzer_command_targets_grpc_with_real_input(tmp_path):
    cmd = perf_analyzer_command("lasan", "127.0.0.1:8001", tmp_path / "in.json", 8, tmp_path / "o.csv", 4000)
    text = " ".join(cmd[1:])
    assert "-m lasan" in text and "-i grpc" in text and "--concurrency-range 8:8" in text
    assert f"--input-data {tmp_path / 'in.json'}" in text and f"-f {tmp_path / 'o.csv'}" in text


def test_percentile_interpolates():
    assert percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert percentile([10.0, 20.0], 99) == pytest.approx(19.9)
    assert percentile([], 99) != percentile([], 99)  # NaN


ENSEMBLE_LOG = """\
  Composing models:
  encoder, version: 1
      Inference count: 60
      Execution count: 17
      Successful request count: 60
      Avg request latency: 1162264 usec (overhead 10 usec + queue 13463 usec + compute input 108 usec + compute infer 1145710 usec + compute output 2972 usec)

  fusion, version: 1
      Inference count: 60
      Execution count: 20
      Successful request count: 60
      Avg request latency: 10902 usec (overhead 8 usec + queue 809 usec + compute input 72 usec + compute infer 9693 usec + compute output 319 usec)

Inferences/Second vs. Client Average Batch Latency
"""


def test_composing_model_statistics_are_read_from_the_ensemble_report():
    from lasan.benchmarks.triton import parse_composing

    stats = parse_composing("Request concurrency: 8\n" + ENSEMBLE_LOG)
    assert set(stats) == {"encoder", "fusion"}
    assert stats["encoder"]["avg_request_ms"] == pytest.approx(1162.264)
    assert stats["encoder"]["queue_ms"] == pytest.approx(13.463)
    assert stats["fusion"]["compute_infer_ms"] == pytest.approx(9.693)
    assert stats["fusion"]["mean_batch"] == pytest.approx(3.0)


def test_targets_table_keeps_only_rows_with_a_target_and_says_missed():
    from lasan.benchmarks.table import Row, render_targets

    text = render_targets([
        Row("feed", "ACK p99", 25.0, "ms", target="<= 20 ms", met=False),
        Row("model", "no target here", 1.0),
        Row("runtimes", "best", 30.0, "ECG/s", baseline="torchscript fp32 10 ECG/s", ratio=3.0, target=">= 2 x", met=True),
    ])
    lines = text.splitlines()
    assert len(lines) == 4 and "no target here" not in text
    assert lines[2] == "| feed | ACK p99: <= 20 ms | 25.0 ms | **MISSED** |"
    assert lines[3] == "| runtimes | best: >= 2 x | 30.0 ECG/s (3 x torchscript fp32 10 ECG/s) | yes |"
